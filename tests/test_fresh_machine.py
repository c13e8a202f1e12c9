"""A fresh Debian 12 machine: setup.sh installs every program the tests call, and the scripts
take the Debian mirror from the machine's apt sources, never from a host written in the code."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_seed import REPO, debian_mirror

# A program a test starts: subprocess.run(["pgrep", …]), Popen(["skopeo", …]), shutil.which("x").
CALLED = re.compile(
    r"(?:subprocess\.(?:run|Popen|check_call|check_output|call)|which)\(\s*\[?\s*\"([\w.+-]+)\""
)


def programs_tests_call() -> set[str]:
    return {
        name
        for path in (REPO / "tests").rglob("*.py")
        if path != Path(__file__)
        for name in CALLED.findall(path.read_text())
    }


def setup_packages() -> set[str]:
    text = (REPO / "scripts/setup.sh").read_text()
    body = re.search(r"APT_PACKAGES=\((.*?)\n\)", text, re.S)
    assert body, "setup.sh has no APT_PACKAGES=( … )"
    return {word for line in body.group(1).splitlines() for word in line.split("#")[0].split()}


def owning_package(program: str) -> str:
    found = shutil.which(program)
    assert found, f"{program} is not installed: setup.sh must install it"
    path = Path(found).resolve()
    # usrmerge: dpkg may list /bin/x for what PATH finds as /usr/bin/x
    # The name PATH finds first: /usr/bin/gcc belongs to gcc, its target gcc-12 to gcc-12.
    for candidate in (Path(found), path, Path(str(path).removeprefix("/usr"))):
        done = subprocess.run(["dpkg", "-S", str(candidate)], capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.split(":")[0].split(",")[0].strip()
    raise AssertionError(f"no Debian package owns {path}")


def in_minbase(package: str) -> bool:
    """What debootstrap --variant=minbase (and the debian:12 image) has: Priority required."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Priority}", package], capture_output=True, text=True
    )
    return done.stdout.strip() == "required"


def test_the_scan_finds_the_programs_tests_call() -> None:
    assert {"pgrep", "skopeo", "umoci", "htpasswd", "mount"} <= programs_tests_call()


def test_setup_installs_every_program_a_test_calls() -> None:
    packages = setup_packages()
    missing = {
        program: package
        for program in sorted(programs_tests_call())
        if (package := owning_package(program)) not in packages and not in_minbase(package)
    }
    assert missing == {}, f"add to APT_PACKAGES in scripts/setup.sh: {missing}"


def test_debian_mirror_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://other.example/apt nodistro main\n"
        "deb http://mirror.example/debian-security bookworm-security main\n"
        "deb http://mirror.example/debian/ bookworm main contrib\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_debian_mirror_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\n# a comment line\nURIs: http://m.example/debian/ http://n.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror(tmp_path) == "http://m.example/debian"


def test_no_debian_mirror_is_an_error_not_a_guess(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    done = subprocess.run(
        [str(REPO / "scripts/debian-mirror.sh")],
        env={"APT_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "no apt source for bookworm" in done.stderr


@pytest.mark.parametrize("script", ["scripts/quickstart.sh", "scripts/setup.sh"])
def test_scripts_name_no_package_host(script: str) -> None:
    text = (REPO / script).read_text()
    assert not re.search(r"https?://(?!127\.0\.0\.1|localhost|\[::1\])", text), script
