"""The chroot isolation reuses roots across the targets of one run: a stage's tree becomes the
template its siblings copy, a longer chain is laid out from a template, and a finished
service's root is put back to its template for the next (worker/rootfs.py, worker/revert.py).
None of that may leak one service's files into another: on a monorepo whose services each
change the shared base in their own ways, every image built with `--isolation chroot` has the
root filesystem the namespaces isolation gives."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_runs import run, write_repo
from conformance.compare import diff_trees, rootfs_tree

SERVICES = 5

BASE = """FROM busybox
RUN mkdir -p /opt/lib /opt/app \\
 && for i in 1 2 3; do echo "lib $i" > /opt/lib/lib$i.so; done \\
 && ln -s lib1.so /opt/lib/current.so
"""

# Each service changes the base in its build stage: new files, a deleted file, a file rewritten
# in place with its size and mtime kept (only its ctime tells), a mode, a retargeted link.
# Its runtime stage lists what it sees of the base: a root that leaked another service's
# changes would list them.
SERVICE = """FROM base AS build
WORKDIR /work/{name}
RUN echo {name} > artifact \\
 && rm /opt/lib/lib{drop}.so \\
 && sed -i 's/lib 3/LIB 3/' /opt/lib/lib3.so && touch -d @1000000000 /opt/lib/lib3.so \\
 && chmod 700 /opt/app \\
 && ln -sfn lib2.so /opt/lib/current.so \\
 && echo "{name}:x:1{index}:1{index}::/:/bin/sh" >> /etc/passwd

FROM base
COPY --from=build /work/{name}/artifact /opt/app/{name}
RUN (find /opt /etc/passwd | sort | xargs stat -c '%n %a %u %g %F'; ls -d /work 2>&1; \\
     readlink /opt/lib/current.so; cat /opt/lib/*.so /etc/passwd) > /opt/app/seen
"""


def repo(root: Path, busybox_cache: Path) -> Path:
    files = {"base/Dockerfile": BASE}
    lines = ["version: 1", "cache: {dir: cache}", "targets:", "  base:", "    context: base"]
    for index in range(SERVICES):
        name = f"svc{index}"
        dockerfile = SERVICE.format(name=name, index=index, drop=1 + index % 2)
        files[f"services/{name}/Dockerfile"] = dockerfile
        lines += [
            f"  {name}:",
            f"    context: services/{name}",
            '    contexts: {base: "target:base"}',
            f'    tags: ["{name}"]',
        ]
    files["Buildfile.yaml"] = "\n".join(lines) + "\n"
    return write_repo(root, files, busybox_cache)


def image_tree(cache: Path, tag: str, dest: Path) -> dict:
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{cache}:{tag}:latest", str(dest)],
        check=True,
        capture_output=True,
    )
    return rootfs_tree(dest)


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_every_service_sees_only_the_base(busybox_cache: Path, tmp_path: Path, jobs: str) -> None:
    trees = {}
    for isolation in ("namespaces", "chroot"):
        root = repo(tmp_path / isolation, busybox_cache)
        assert run(root, "--isolation", isolation, "-j", jobs) == 0
        trees[isolation] = {
            f"svc{i}": image_tree(root / "cache", f"svc{i}", tmp_path / f"{isolation}-{i}")
            for i in range(SERVICES)
        }
        seen = (tmp_path / f"{isolation}-0" / "opt" / "app" / "seen").read_text()
        assert "svc" not in seen.replace("svc0", "")  # svc0 sees its own artifact only
        assert "LIB 3" not in seen and "lib 3" in seen
    for name in trees["chroot"]:
        problems = diff_trees(trees["namespaces"][name], trees["chroot"][name], ("ns", "chroot"))
        assert problems == [], f"{name}:\n" + "\n".join(problems)


def test_the_next_build_copies_kept_templates_and_gives_the_same_images(
    busybox_cache: Path, tmp_path: Path
) -> None:
    """A one-file change after a cold build: the chroot isolation copies the templates the
    first build kept in the cache dir instead of unpacking, and still builds what namespaces do."""
    roots = {}
    for isolation in ("namespaces", "chroot"):
        root = repo(tmp_path / isolation, busybox_cache)
        assert run(root, "--isolation", isolation) == 0
        dockerfile = root / "services" / "svc2" / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text().replace("echo svc2 >", "echo svc2 v2 >"))
        assert run(root, "--isolation", isolation) == 0
        roots[isolation] = root
    assert list((roots["chroot"] / "cache" / "snapshots" / ".roots").iterdir()) != []
    for index in range(SERVICES):
        name = f"svc{index}"
        trees = [
            image_tree(roots[isolation] / "cache", name, tmp_path / f"{isolation}-{name}")
            for isolation in ("namespaces", "chroot")
        ]
        problems = diff_trees(*trees, ("ns", "chroot"))
        assert problems == [], f"{name}:\n" + "\n".join(problems)
    artifact = tmp_path / "chroot-svc2" / "opt" / "app" / "svc2"
    assert artifact.read_text() == "svc2 v2\n"
