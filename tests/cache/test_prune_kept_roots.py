"""`cache prune` removes the chroot isolation's kept templates (a speed-up only)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from buildgraph.cli import main


def test_prune_removes_kept_templates(busybox_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(busybox_cache), str(cache)], check=True)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox AS one\nRUN echo 1 > /one\n"
        "FROM busybox AS two\nRUN echo 2 > /two\n"
        "FROM busybox\nCOPY --from=one /one /one\nCOPY --from=two /two /two\n"
    )
    argv = ["build", str(context), "--cache-dir", str(cache), "--isolation", "chroot"]
    assert main([*argv, "-t", "kept:1", "--progress", "plain"]) == 0
    kept = cache / "snapshots" / ".roots"
    assert [path.name for path in kept.iterdir()] != []  # busybox: three stages start there
    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 0
    assert not kept.exists()
    assert main([*argv, "-t", "kept:1", "--progress", "plain", "--no-cache"]) == 0
