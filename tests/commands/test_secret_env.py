"""RUN --mount=type=secret,env=NAME (BuildKit): the secret in that variable, with no target
only there; never in a layer, a key or the cache dir. Both isolations."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildgraph.cli import main

DOCKERFILE = (
    "FROM busybox\n"
    'RUN --mount=type=secret,id=tok,env=TOKEN echo "${#TOKEN}" > /env-length '
    "&& (test -e /run/secrets/tok && echo file || echo nofile) > /file\n"
    'RUN --mount=type=secret,id=tok,env=TOKEN,target=/s/tok echo "$TOKEN" | wc -c > /both '
    "&& wc -c < /s/tok >> /both\n"
)


@pytest.mark.parametrize("isolation", ["namespaces", "chroot"])
def test_secret_as_an_environment_variable(
    busybox_cache: Path, tmp_path: Path, isolation: str
) -> None:
    cache = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(busybox_cache), str(cache)], check=True)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    secret = tmp_path / "token"
    secret.write_text("t0ken-value-42")
    argv = ["build", str(context), "--cache-dir", str(cache), "--isolation", isolation]
    argv += ["--secret", f"id=tok,src={secret}", "-o", f"type=local,dest={tmp_path / 'out'}"]
    assert main(argv) == 0
    out = tmp_path / "out"
    assert (out / "env-length").read_text().strip() == "14"
    assert (out / "file").read_text() == "nofile\n"
    assert (out / "both").read_text().split() == ["15", "14"]  # echo adds a newline
    found = subprocess.run(
        ["grep", "-rl", "t0ken-value-42", str(cache), str(out)], text=True, capture_output=True
    ).stdout
    assert found == ""
