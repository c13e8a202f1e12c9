"""The cache repository refuses us, or its reference is malformed: one line, the right exit code,
nothing built; a registry that is merely down still costs only a warning."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runs import write_repo
from registry_server import RegistryServer
from tls_registry import htpasswd_registry, make_tls_ca

from buildgraph.cli import main

USER, PASSWORD, WRONG = "alice", "s3cret-Pa55word", "wr0ng-Pa55word-1234"
BUILDFILE = """version: 1
cache: {{dir: cache{remote}}}
targets:
  app:
    context: app
    tags: ["app:1"]
"""
DOCKERFILE = "FROM busybox\nRUN echo built > /built.txt\n"


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA bundle, certificate chain, key) for a server on 127.0.0.1."""
    return make_tls_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def auth_registry(
    tmp_path_factory: pytest.TempPathFactory, tls_ca: tuple[Path, Path, Path]
) -> Iterator[RegistryServer]:
    """htpasswd (Basic) auth over TLS."""
    root = tmp_path_factory.mktemp("auth-registry")
    with htpasswd_registry(root, USER, PASSWORD, tls_ca, "buildgraph-test") as server:
        yield server


def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, password: str):
    """What `docker login HOST` leaves, in a DOCKER_CONFIG of the test's own."""
    directory = tmp_path / "docker"
    directory.mkdir()
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))


def make_repo(root: Path, busybox_cache: Path, remote: str = "") -> Path:
    extra = f', remote: "{remote}"' if remote else ""
    files = {"Buildfile.yaml": BUILDFILE.format(remote=extra), "app/Dockerfile": DOCKERFILE}
    return write_repo(root, files, busybox_cache)  # the cache holds only the base image


def nothing_built(repo: Path) -> bool:
    return (
        not list((repo / "cache/steps").glob("*/*.json"))
        and "app:1" not in (repo / "cache/index.json").read_text()
    )


CASES = [
    # (command, options, Buildfile has cache.remote, what the line says failed)
    ("run", ("--cache-from", "{repo}"), False, "(pull)"),
    ("run", ("--cache-to", "{repo}"), False, "(push)"),
    ("run", (), True, "(pull)"),  # cache.remote: read and write; the lookups ask first
    ("run", ("--cache-to", ""), True, "(pull)"),  # cache.remote, read only
    ("warm", ("--cache-from", "{repo}"), False, "(pull)"),
    ("warm", ("--build",), True, "(pull)"),
    ("plan", ("--cache-from", "{repo}"), False, "(pull)"),
]


@pytest.mark.parametrize("credentials", ["wrong", "none"])
@pytest.mark.parametrize(("command", "options", "in_buildfile", "action"), CASES)
def test_refused_credentials_are_one_line_and_exit_3(
    auth_registry: RegistryServer,
    tls_ca: tuple[Path, Path, Path],
    busybox_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    credentials: str,
    command: str,
    options: tuple[str, ...],
    in_buildfile: bool,
    action: str,
) -> None:
    host = auth_registry.host
    if credentials == "wrong":
        docker_config(tmp_path, monkeypatch, host, WRONG)
    else:
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    cache_repo = f"{host}/cache/auth"
    repo = make_repo(tmp_path / "repo", busybox_cache, cache_repo if in_buildfile else "")
    argv = [command, "-f", str(repo / "Buildfile.yaml"), "--ca-bundle", str(tls_ca[0])]
    argv += [option.format(repo=cache_repo) for option in options]
    if command != "plan":
        argv += ["--progress", "plain"]
    capsys.readouterr()
    assert main(argv) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("buildgraph: error: remote cache ")
    assert f"authentication to {host} failed for cache/auth {action}" in captured.err
    assert WRONG not in captured.err and PASSWORD not in captured.err
    assert nothing_built(repo)


def test_the_right_credentials_read_and_write_the_cache(
    auth_registry: RegistryServer,
    tls_ca: tuple[Path, Path, Path],
    busybox_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    docker_config(tmp_path, monkeypatch, auth_registry.host, PASSWORD)
    cache_repo = f"{auth_registry.host}/cache/auth-ok"
    ca = ("--ca-bundle", str(tls_ca[0]))
    machine_a = make_repo(tmp_path / "a", busybox_cache, cache_repo)
    assert main(["run", "-f", str(machine_a / "Buildfile.yaml"), *ca, "--progress", "plain"]) == 0
    assert "2 steps exported" in capsys.readouterr().out
    machine_b = make_repo(tmp_path / "b", busybox_cache, cache_repo)
    assert main(["warm", "-f", str(machine_b / "Buildfile.yaml"), *ca]) == 0
    assert "warm: 2 entries fetched" in capsys.readouterr().out


BAD_REFERENCES = [
    ("run", "--cache-to", "HOST/UPPER/Case", "repository name must be lowercase"),
    ("run", "--cache-from", ":bad", "repository name is empty"),
    ("warm", "--cache-from", ":bad", "repository name is empty"),
    ("warm", "--cache-from", "127.0.0.1:5000/Cache", "repository name must be lowercase"),
    ("plan", "--cache-from", "a b", "invalid image reference 'a b'"),
]


@pytest.mark.parametrize(("command", "option", "value", "reason"), BAD_REFERENCES)
def test_a_malformed_cache_reference_exits_2_before_building(
    busybox_cache: Path, tmp_path: Path, capsys, command: str, option: str, value: str, reason: str
) -> None:
    repo = make_repo(tmp_path / "repo", busybox_cache)
    capsys.readouterr()
    assert main([command, "-f", str(repo / "Buildfile.yaml"), option, value]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("buildgraph: error: remote cache: invalid image reference")
    assert reason in captured.err
    assert nothing_built(repo)


def test_a_malformed_cache_remote_in_the_buildfile_exits_2(
    busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    repo = make_repo(tmp_path / "repo", busybox_cache, "HOST/UPPER/Case")
    capsys.readouterr()
    assert main(["run", "-f", str(repo / "Buildfile.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "repository name must be lowercase" in err
    assert nothing_built(repo)


def test_an_unreachable_export_registry_warns_once_and_builds(
    fresh_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    cache_repo = f"{fresh_registry.host}/cache/down"
    fresh_registry.stop()
    repo = make_repo(tmp_path / "repo", busybox_cache)
    argv = ["run", "-f", str(repo / "Buildfile.yaml"), "--registry-timeout", "1"]
    capsys.readouterr()
    assert main([*argv, "--cache-to", cache_repo, "--progress", "plain"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "remote cache export failed, going on without it" in err
    assert not nothing_built(repo)
    assert main([*argv, "--cache-to", cache_repo, "--cache-required", "--no-cache"]) == 3


def test_build_with_a_refused_cache_repo_exits_3(
    auth_registry: RegistryServer,
    tls_ca: tuple[Path, Path, Path],
    busybox_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    docker_config(tmp_path, monkeypatch, auth_registry.host, WRONG)
    repo = make_repo(tmp_path / "repo", busybox_cache)
    argv = ["build", str(repo / "app"), "--cache-dir", str(repo / "cache"), "-t", "app:1"]
    argv += ["--cache-repo", f"{auth_registry.host}/cache/auth", "--ca-bundle", str(tls_ca[0])]
    capsys.readouterr()
    assert main([*argv, "--progress", "plain"]) == 3
    err = capsys.readouterr().err
    assert err == (  # --cache-repo reads and writes: the lookups ask first
        f"buildgraph: error: remote cache lookup failed: authentication to "
        f"{auth_registry.host} failed for cache/auth (pull)\n"
    )
    assert nothing_built(repo)
