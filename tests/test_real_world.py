"""Dockerfiles as real projects write them, on a Debian bookworm base, built by buildgraph and
run by Docker (`docker load` + `docker run`): the patterns of issue 18 in their natural setting.
The toolchains are stubs (shell scripts standing in for go, npm and pip, which a minbase lacks
and which would need their package indexes); what is under test is how the Dockerfile's COPY,
WORKDIR and multi-stage steps lay out the files, and that the image runs."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path

import pytest
from debian import debootstrap_bookworm
from dockerd import Dockerd, private_dockerd

from buildgraph.cli import main

pytestmark = pytest.mark.slow

FAKE_GO = """#!/bin/sh
# A stand-in for `go`: `go mod download` records go.sum, `go build -o OUT .` writes a program.
set -e
case "$1" in
  mod) cp go.sum /root/modules-downloaded ;;
  build) module=$(sed -n 's/^module //p' go.mod) && mkdir -p "$(dirname "$3")"
         printf '#!/bin/sh\\necho "hello from %s, %s modules"\\n' "$module" \\
           "$(wc -l < /root/modules-downloaded)" > "$3"
         chmod 755 "$3" ;;
esac
"""
GO_DOCKERFILE = """FROM debian:bookworm AS build
COPY fake-go /usr/local/bin/go
WORKDIR /src
COPY go.mod go.sum .
RUN go mod download
COPY . .
RUN go build -o /out/server .

FROM debian:bookworm
COPY --from=build /out/server /usr/local/bin/
CMD ["server"]
"""
FAKE_NPM = """#!/bin/sh
# A stand-in for `npm install`: one dir per dependency named in package.json.
set -e
for dep in $(sed -n 's/^ *"\\([a-z-]*\\)": "^.*/\\1/p' package.json); do
  mkdir -p "node_modules/$dep" && echo "$dep" > "node_modules/$dep/index.js"
done
"""
NODE_FILES = {  # an app with two dependencies; the image lists them, then prints server.js
    "fake-npm": FAKE_NPM,
    "package.json": '{\n  "dependencies": {\n    "express": "^4.0.0",\n'
    '    "left-pad": "^1.0.0"\n  }\n}\n',
    "package-lock.json": "{}\n",
    "server.js": "console.log('listening')\n",
}
NODE_OUTPUT = "express left-pad console.log('listening')\n"
NODE_DOCKERFILE = """FROM debian:bookworm
COPY fake-npm /usr/local/bin/npm
WORKDIR /usr/src/app
COPY package*.json ./
COPY yarn.lock* .npmrc* ./
RUN npm install
COPY . .
CMD ["sh", "-c", "ls node_modules | tr '\\\\n' ' ' && cat server.js"]
"""
PYTHON_DOCKERFILE = """FROM debian:bookworm
WORKDIR /app
COPY requirements*.txt constraints*.txt ./
RUN mkdir -p /venv && cat requirements*.txt | sort > /venv/installed
COPY app.py .
CMD ["sh", "-c", "echo $(cat /venv/installed) && cat app.py"]
"""
LIBS = "/lib/x86_64-linux-gnu"
SLIM_DOCKERFILE = f"""FROM debian:bookworm AS full
RUN ls -l {LIBS}/libpcre2-8.so.0 /lib64/ld-linux-x86-64.so.2

FROM scratch
COPY --from=full /lib64/ld-linux-x86-64.so.2 /lib64/
COPY --from=full {LIBS}/libc.so.6 {LIBS}/libselinux.so.1 {LIBS}/libpcre2-8.so.0 {LIBS}/
COPY --from=full /bin/ls /bin/
ENTRYPOINT ["/bin/ls"]
CMD ["/lib64", "{LIBS}"]
"""
PROJECTS = {
    "go": (
        GO_DOCKERFILE,
        {
            "fake-go": FAKE_GO,
            "go.mod": "module example.com/server\n",
            "go.sum": "a v1 h1:x\nb v2 h1:y\n",
            "main.go": "package main\n",
        },
        "hello from example.com/server, 2 modules\n",
    ),
    "node": (
        NODE_DOCKERFILE,
        NODE_FILES,
        NODE_OUTPUT,
    ),
    "python": (
        PYTHON_DOCKERFILE,
        {"requirements.txt": "flask\n", "requirements-dev.txt": "pytest\n", "app.py": "print(1)\n"},
        "flask pytest\nprint(1)\n",
    ),
    "slim-libs": (
        SLIM_DOCKERFILE,
        {},
        f"{LIBS}:\nlibc.so.6\nlibpcre2-8.so.0\nlibselinux.so.1\n\n/lib64:\nld-linux-x86-64.so.2\n",
    ),
}


@pytest.fixture(scope="module")
def debian_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("debian")
    rootfs = debootstrap_bookworm(work / "rootfs")
    cache = work / "cache"
    argv = ["image", "import", str(rootfs), "-t", "debian:bookworm", "--cache-dir", str(cache)]
    assert main(argv) == 0
    return cache


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    with private_dockerd(tmp_path_factory.mktemp("dockerd")) as daemon:
        yield daemon


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the slim stage names x86_64 paths")
@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_real_world_dockerfile_builds_and_runs(
    name: str, debian_cache: Path, docker: Dockerd, tmp_path: Path
) -> None:
    dockerfile, files, expected = PROJECTS[name]
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    for relative, content in files.items():
        (context / relative).write_text(content)
        if relative.startswith("fake-"):
            (context / relative).chmod(0o755)
    archive = tmp_path / "image.tar"
    tag = f"realworld/{name}:test"
    argv = ["build", str(context), "--cache-dir", str(debian_cache), "--progress", "plain"]
    assert main([*argv, "-t", tag, "-o", f"type=docker,dest={archive}"]) == 0
    docker.docker("load", "-i", str(archive))
    ran = docker.docker("run", "--rm", "--network", "host", tag)
    assert ran.stdout == expected
