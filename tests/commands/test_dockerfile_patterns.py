"""Dockerfile patterns real projects write (issue 18), end to end: what must build, and what
must fail with one line naming Dockerfile:LINE. BuildKit is the reference; see
tests/conformance/README.md for where we pin another rule and why."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from buildgraph.cli import main
from buildgraph.worker.copy_plan import MULTI_SOURCE_ERROR


@pytest.fixture
def cache(busybox_cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(busybox_cache), str(target)], check=True)
    return target


def context_with(root: Path, dockerfile: str, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def build(cache: Path, context: Path, *extra: str) -> int:
    argv = ["build", str(context), "--cache-dir", str(cache), "--progress", "plain", *extra]
    return main(argv)


def escaping_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("out")
        link.type, link.linkname = tarfile.SYMTYPE, "../../.."
        tar.addfile(link)
        member = tarfile.TarInfo("out/escaped")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    return buffer.getvalue()


FILES: dict[str, str | bytes] = {
    "a.txt": "a\n",
    "b.txt": "b\n",
    "d/sub/f": "f\n",
    "x": "x\n",
    "evil.tar": escaping_tar(),
}
ERRORS = [
    # several sources need a dir: the dest neither ends in "/" nor exists as one
    ("FROM busybox\nCOPY a.txt b.txt /new\n", 2, 2, MULTI_SOURCE_ERROR),
    ("FROM busybox\nWORKDIR /w\nCOPY *.txt new\n", 3, 2, MULTI_SOURCE_ERROR),
    # a plain missing file is still an error (only wildcards may match nothing)
    ("FROM busybox\nCOPY a.txt missing.txt /w/\n", 2, 2, "'missing.txt' not found"),
    # BuildKit (fsutil copyDirectory/ensureEmptyFileTarget) refuses both replacements too
    (
        "FROM busybox\nRUN mkdir /t /elsewhere && ln -s /elsewhere /t/sub\nCOPY d /t/\n",
        3,
        1,
        "cannot copy to non-directory: /t/sub",
    ),
    ("FROM busybox\nRUN mkdir -p /t/x/y\nCOPY x /t/\n", 3, 1, "cannot replace to directory"),
    ("FROM busybox\nRUN touch /f\nWORKDIR /f/sub\n", 3, 1, "not a directory"),
    ("FROM busybox\nADD evil.tar /opt/\n", 2, 2, "escapes through a symlink"),
    ("FROM busybox\nCOPY --chmod=999 a.txt /a\n", 2, 2, "invalid chmod parameter"),
]


@pytest.mark.parametrize(("dockerfile", "line", "code", "message"), ERRORS)
def test_copy_errors_name_the_dockerfile_line(
    cache: Path, tmp_path: Path, capsys, dockerfile: str, line: int, code: int, message: str
) -> None:
    context = context_with(tmp_path / "ctx", dockerfile, FILES)
    assert build(cache, context) == code
    errors = [row for row in capsys.readouterr().err.splitlines() if "error:" in row]
    assert len(errors) == 1, errors
    assert f"{context / 'Dockerfile'}:{line}: " in errors[0]
    assert message in errors[0]


def test_duplicate_stage_names_warn_once_and_build(cache: Path, tmp_path: Path, capsys) -> None:
    """`FROM b` takes the last stage named b, as BuildKit does (buildah 1.28 is not steady
    here, so this is not a conformance case)."""
    dockerfile = (
        "FROM busybox AS b\nRUN echo 1 > /which\nFROM busybox AS b\nRUN echo 2 > /which\n"
        "FROM b\nRUN cat /which > /from-base\n"
    )
    context = context_with(tmp_path / "ctx", dockerfile, {})
    out = tmp_path / "out"
    assert build(cache, context, "-t", "dup:1", "-o", f"type=local,dest={out}") == 0
    err = capsys.readouterr().err
    assert err.count("DuplicateStageName") == 1
    assert f"{context / 'Dockerfile'}:3:" in err
    assert (out / "from-base").read_text() == "2\n"


def test_a_base_image_that_repeats_a_layer_mounts(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two steps with the same net change: the image repeats a layer, and images built FROM
    it stack that layer twice under every step. SOURCE_DATE_EPOCH clamps the mtimes, so the
    two layers are equal even when the steps run in different seconds."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    twice = "FROM busybox\nRUN touch /tmp/x && rm /tmp/x\nRUN touch /tmp/x && rm /tmp/x\n"
    assert build(cache, context_with(tmp_path / "one", twice, {}), "-t", "rep:1") == 0
    manifest = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{cache}:rep:1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    layers = [layer["digest"] for layer in json.loads(manifest)["layers"]]
    assert len(layers) == 3 and layers[1] == layers[2]
    on_top = "FROM rep:1\nRUN echo ok > /ok\nCOPY a.txt /\n"
    assert build(cache, context_with(tmp_path / "two", on_top, FILES), "-t", "rep:2") == 0
