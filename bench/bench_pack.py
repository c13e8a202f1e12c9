"""Time packing and compressing a layer, pushing it and pulling it, beside tar in the same run.

Usage (as root, from the repository): python bench/bench_pack.py [--size 1GiB] [--levels 1,2,6]
    [--only pack,push,pull] [--keep]

A tree of SIZE bytes is generated (seed 17: half text-like files cut from a corpus of code-like
lines, half random bytes; sizes from 1 KiB to 4 MiB in directories of 64). Every row is one
process timed from the outside: wall seconds, CPU seconds (user + system, its children
included), peak RSS. MB/s is the tree's bytes over wall seconds.

- pack: `tar -czf` (the peer the targets are set against) and `tar -I 'zstd -3 -T0'`; buildgraph's
  `write_layer` (the code every build, import and export uses) with gzip, zstd and none.
- push: the tree imported uncompressed into a store (not timed), then `buildgraph push` to a
  Debian docker-registry on 127.0.0.1 (storage on /dev/shm): compression happens there, as on
  every push of a built image. The registry's own CPU seconds are shown beside it.
- pull: `buildgraph pull` of that image into an empty store (download, verify, unpack), beside
  `tar -xzf` of the peer's archive.
Targets (issue 17): pack gzip >= 3x `tar -czf`, peak RSS < 150 MB; push <= 0.5x `tar -czf`.
The machine's other load shows in every row alike; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from registry_server import RegistryServer  # noqa: E402 - tests/ is not a package

SEED = 17
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)
FILES_PER_DIR = 64
PACK_TARGET = 3.0  # times the speed of `tar -czf`
RSS_TARGET_MB = 150
PUSH_TARGET = 0.5  # times the wall time of `tar -czf`
PARTS = ("pack", "push", "pull")
_WORDS_TEXT = """def class return import from self value name path data item result error None True
False for in if else elif while with as try except raise lambda yield async await print len
range list dict set tuple int str bytes open read write close config layer digest image"""
_WORDS = tuple(_WORDS_TEXT.split())


@dataclass
class Row:
    scenario: str
    wall: float
    cpu: float
    rss_mb: float
    out_bytes: int | None = None
    registry_cpu: float | None = None


def main() -> None:
    options = parse_options()
    bench = Path(tempfile.mkdtemp(prefix="bench-pack-"))
    # Byte-code cached as an installed wheel's is (see peers.work_dir): under
    # PYTHONDONTWRITEBYTECODE=1 every buildgraph process would recompile its modules.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(bench / "pycache")
    shm = Path(tempfile.mkdtemp(prefix="bench-pack-registry-", dir="/dev/shm"))
    rows: list[Row] = []
    try:
        tree = bench / "tree"
        note(f"generating {options.size} bytes under {tree}")
        generate(tree, options.size)
        size = tree_bytes(tree)
        if "pack" in options.only or "pull" in options.only:
            rows += pack_rows(bench, tree, options.levels)
        if "push" in options.only or "pull" in options.only:
            rows += registry_rows(bench, tree, shm, options.only)
        print_report(rows, size, options)
    finally:
        if options.keep:
            note(f"kept {bench}")
        else:
            shutil.rmtree(bench, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="tree bytes (1GiB)")
    parser.add_argument(
        "--levels", default="", help="also pack gzip at these zlib-ng levels, e.g. 1,2,6"
    )
    parser.add_argument("--only", default=",".join(PARTS), help="parts, e.g. pack,push")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--pack-child", nargs=4, help=argparse.SUPPRESS)
    options = parser.parse_args()
    options.only = [part for part in options.only.split(",") if part]
    unknown = set(options.only) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown part {', '.join(sorted(unknown))}")
    options.levels = [int(level) for level in options.levels.split(",") if level]
    return options


def parse_size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    lowered = text.strip().lower()
    for unit, factor in units.items():
        if lowered.endswith(unit):
            return int(float(lowered.removesuffix(unit)) * factor)
    return int(lowered)


# -- the tree ----------------------------------------------------------------------------------
def generate(root: Path, size: int) -> None:
    """Half text-like files, half random ones, alternating, until `size` bytes are written."""
    rnd = random.Random(SEED)
    corpus = text_corpus(rnd, 8 << 20)
    written = index = 0
    while written < size:
        length = min(int(2 ** rnd.uniform(10, 22)), size - written)
        folder = root / f"d{index // FILES_PER_DIR:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        if index % 2 == 0:
            start = rnd.randrange(len(corpus) - length) if length < len(corpus) else 0
            data = corpus[start : start + length]
            name = f"f{index:06d}.py"
        else:
            data = rnd.randbytes(length)
            name = f"f{index:06d}.bin"
        (folder / name).write_bytes(data)
        written += len(data)
        index += 1


def text_corpus(rnd: random.Random, size: int) -> bytes:
    """Code-like lines: indentation, identifiers, punctuation; gzip -6 takes it to about 30%."""
    names = [f"{rnd.choice(_WORDS)}_{rnd.randrange(4000)}" for _ in range(3000)]
    lines = []
    total = 0
    while total < size:
        words = [
            rnd.choice(_WORDS if rnd.random() < 0.6 else names) for _ in range(rnd.randint(2, 9))
        ]
        line = (
            " " * 4 * rnd.randint(0, 3) + " ".join(words) + rnd.choice(("", ":", "()", ",")) + "\n"
        )
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def tree_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


# -- timing ------------------------------------------------------------------------------------
def timed(
    scenario: str,
    argv: list[str],
    *,
    out: Path | None = None,
    registry_pid: int | None = None,
    cwd: Path | None = None,
) -> Row:
    """Run ARGV, raise on failure; wall and CPU of it and its children (wait4), peak RSS of the
    largest of them (GNU time's %M)."""
    before = process_cpu(registry_pid) if registry_pid else 0.0
    # Peak RSS through GNU time: a child forked from this (large) Python process would report
    # this process's RSS as its own peak, whatever it execs.
    rss_file = Path(tempfile.mkstemp(prefix="bench-pack-rss-")[1])
    argv = [TIME, "-f", "%M", "-o", str(rss_file), *argv]
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    errors = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if child.returncode != 0:
        raise SystemExit(f"{scenario}: `{' '.join(argv)}` exited {child.returncode}: {errors}")
    registry = process_cpu(registry_pid) - before if registry_pid else None
    size = out.stat().st_size if out and out.is_file() else None
    rss_mb = int(rss_file.read_text().split()[-1]) / 1024
    rss_file.unlink()
    row = Row(scenario, wall, usage.ru_utime + usage.ru_stime, rss_mb, size)
    row.registry_cpu = registry
    note(f"{scenario}: {wall:.2f} s")
    return row


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop_output(path: Path) -> None:
    if path.exists():
        path.unlink()


def buildgraph() -> list[str]:
    script = Path(sys.executable).parent / "buildgraph"
    return [str(script)] if script.exists() else [sys.executable, "-m", "buildgraph"]


# -- pack --------------------------------------------------------------------------------------
def pack_rows(work: Path, tree: Path, levels: list[int]) -> list[Row]:
    rows = []
    archive = work / "peer.tar.gz"
    rows.append(timed("tar -czf", ["tar", "-czf", str(archive), "-C", str(tree), "."], out=archive))
    if shutil.which("zstd"):
        zst = work / "peer.tar.zst"
        argv = ["tar", "-I", "zstd -3 -T0", "-cf", str(zst), "-C", str(tree), "."]
        rows.append(timed("tar -I 'zstd -3 -T0' -cf", argv, out=zst))
        drop_output(zst)
    blob = work / "layer.blob"
    cases = [("gzip", None), ("zstd", None), ("none", None)]
    cases += [("gzip", level) for level in levels]
    for compression, level in cases:
        label = f"buildgraph pack {compression}" + (f" level {level}" if level is not None else "")
        argv = [sys.executable, __file__, "--pack-child", str(tree), str(blob), compression]
        argv.append(str(level) if level is not None else "-")
        rows.append(timed(label, argv, out=blob))
        drop_output(blob)
    return rows


def pack_child(tree: str, blob: str, compression: str, level: str) -> None:
    """What `image import DIR` and every built layer do: write_layer into a file."""
    from buildgraph.image.layer import write_layer

    with open(blob, "wb") as out:
        write_layer(
            Path(tree),
            out,
            compression=compression,
            level=None if level == "-" else int(level),
            whiteouts="none",
        )


# -- push and pull -----------------------------------------------------------------------------
def registry_rows(work: Path, tree: Path, storage: Path, parts: list[str]) -> list[Row]:
    rows = []
    store = work / "store"
    name = "bench/pack:latest"
    run([*buildgraph(), "image", "import", "--cache-dir", str(store), "--compression", "none",
         str(tree), "-t", name])  # fmt: skip
    with RegistryServer(storage) as registry:
        assert registry.process is not None
        pid = registry.process.pid
        ref = f"{registry.host}/bench/pack:gzip"
        insecure = ["--insecure-registry", registry.host]
        push = [*buildgraph(), "push", "--cache-dir", str(store), *insecure, name, ref]
        rows.append(timed("buildgraph push (gzip)", push, registry_pid=pid))
        if "pull" in parts:
            fresh = work / "store-pulled"
            pull = [*buildgraph(), "pull", "--cache-dir", str(fresh), *insecure, ref]
            rows.append(timed("buildgraph pull (gzip) + unpack", pull, registry_pid=pid))
            shutil.rmtree(fresh, ignore_errors=True)
            archive = work / "peer.tar.gz"
            if archive.exists():
                dest = work / "untar"
                dest.mkdir()
                rows.append(timed("tar -xzf", ["tar", "-xzf", str(archive), "-C", str(dest)]))
                shutil.rmtree(dest, ignore_errors=True)
    return rows


def run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")


# -- report ------------------------------------------------------------------------------------
def print_report(rows: list[Row], size: int, options: argparse.Namespace) -> None:
    peer = next((row for row in rows if row.scenario == "tar -czf"), None)
    print(f"\n{' '.join(sys.argv)}")
    print(f"tree: {size / 1e6:.0f} MB (seed {SEED}); {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f} at the end")  # fmt: skip
    print()
    columns = ("scenario", "wall s", "MB/s", "CPU s", "peak RSS MB", "output MB", "registry CPU s")
    print(f"| {' | '.join(columns)} | speed vs tar -czf |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        out = f"{row.out_bytes / 1e6:.0f} ({row.out_bytes / size:.1%})" if row.out_bytes else "-"
        registry = f"{row.registry_cpu:.2f}" if row.registry_cpu is not None else "-"
        speed = f"{peer.wall / row.wall:.2f}x" if peer else "-"
        print(
            f"| {row.scenario} | {row.wall:.2f} | {size / row.wall / 1e6:.0f} | {row.cpu:.2f} "
            f"| {row.rss_mb:.0f} | {out} | {registry} | {speed} |"
        )
    if peer is None:
        return
    print()
    gzip_row = next((row for row in rows if row.scenario == "buildgraph pack gzip"), None)
    if gzip_row:
        speed = peer.wall / gzip_row.wall
        print(f"pack gzip: {speed:.2f}x the speed of tar -czf (target >= {PACK_TARGET}x), "
              f"peak RSS {gzip_row.rss_mb:.0f} MB (target < {RSS_TARGET_MB})")  # fmt: skip
    push_row = next((row for row in rows if row.scenario.startswith("buildgraph push")), None)
    if push_row:
        print(f"push: {push_row.wall / peer.wall:.2f}x the time of tar -czf "
              f"(target <= {PUSH_TARGET}x)")  # fmt: skip


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    if "--pack-child" in sys.argv:
        pack_child(*parse_options().pack_child)
    else:
        main()
