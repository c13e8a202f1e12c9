"""The end-of-run summary: per target, steps built and cached, image digest, tags."""

from __future__ import annotations

from buildgraph.commands.run import RunResult


def summary_table(result: RunResult) -> str:
    rows = [("TARGET", "BUILT", "CACHED", "TIME", "DIGEST", "TAGS")]
    for target in result.targets:
        digest = target.image.digest[:19] if target.image else "FAILED"
        tags = " ".join(target.tags) if target.image else target.error[:80]
        time = f"{target.seconds:.2f}s" if target.image else "-"
        rows.append((target.name, str(target.built), str(target.cached), time, digest, tags))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True))
        + "  "
        + row[5]
        for row in rows
    ]
    lines.extend(f"{target.name}: {target.note}" for target in result.targets if target.note)
    built = sum(t.built for t in result.targets)
    steps = len(result.graph.steps)
    lines.append(
        f"{len(result.targets)} targets, {steps} distinct steps, "
        f"{len(result.outcome.records) - len(result.outcome.cached)} run, "
        f"{len(result.outcome.cached)} cached, {built} built across targets, "
        f"{result.seconds:.2f}s"
    )
    if result.downloaded or result.exported:
        lines.append(
            f"remote cache: {result.downloaded} bytes downloaded, {result.exported} steps exported"
        )
    return "\n".join(lines)
