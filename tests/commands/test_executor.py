"""`buildgraph executor`: Kaniko's command line, translated (pure) and end to end against a
registry that needs a login over TLS, as the seed's GitLab job uses Kaniko."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from commands.test_cache_auth import PASSWORD, USER, auth_registry, docker_config, tls_ca  # noqa: F401

from buildgraph.cli import main
from buildgraph.commands.executor import parse_executor_args
from buildgraph.errors import InputError


def parse(*argv: str, env: dict[str, str] | None = None):
    return parse_executor_args(argv, jobs=2, env=env or {}, epoch=None)


def test_the_seed_jobs_command_line(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    job = parse(
        "--context",
        str(tmp_path),
        "--dockerfile",
        str(tmp_path / "Dockerfile"),
        "--destination",
        "registry.example.com/acme/app:v1",
        "--destination=registry.example.com/acme/app:latest",
    )
    request = job.request
    assert request.context == tmp_path and request.dockerfile == tmp_path / "Dockerfile"
    assert request.tags == (
        "registry.example.com/acme/app:v1",
        "registry.example.com/acme/app:latest",
    )
    assert request.push and request.outputs == () and request.cache_from is None
    assert job.cache_dir == Path("/cache") and job.insecure_hosts == () and job.epoch is None


def test_flags_map_onto_the_build(tmp_path: Path) -> None:
    job = parse(
        f"--context=dir://{tmp_path}",
        "-f",
        "sub/Dockerfile",  # not a file here: relative to the context, as Kaniko resolves it
        "-d",
        "127.0.0.1:5000/app:1",
        "--build-arg",
        "A=1",
        "--build-arg=FROM_ENV",
        "--build-arg=UNSET",
        "--target",
        "runtime",
        "--label",
        "org.opencontainers.image.source=here",
        "--cache=true",
        "--cache-dir",
        str(tmp_path / "c"),
        "--tar-path",
        str(tmp_path / "image.tar"),
        "--skip-tls-verify",
        "--insecure-registry",
        "mirror:5000",
        "--reproducible",
        "--no-push=false",
        "--single-snapshot",
        env={"FROM_ENV": "2"},
    )
    request = job.request
    assert request.context == tmp_path and request.dockerfile == tmp_path / "sub/Dockerfile"
    assert request.build_args == {"A": "1", "FROM_ENV": "2"}
    assert request.target == "runtime"
    assert request.labels == {"org.opencontainers.image.source": "here"}
    assert request.cache_from == request.cache_to == "127.0.0.1:5000/app/cache"  # Kaniko's default
    assert request.outputs == (f"type=docker,dest={tmp_path / 'image.tar'}",)
    assert request.push
    assert job.cache_dir == tmp_path / "c"
    assert job.insecure_hosts == ("mirror:5000", "127.0.0.1:5000")
    assert job.epoch == 0
    assert job.notices == (
        "--single-snapshot has no effect here: layers stay one per step: "
        "the step cache reuses them",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--destination=r/a:1", "--bogus-flag=1"), "unknown Kaniko flag '--bogus-flag'"),
        (("--destination=r/a:1", "--registry-mirror", "m"), "'--registry-mirror'"),
        (("--context", "."), "give --destination, or --no-push"),
        (("--context=tar://ctx.tar.gz", "--no-push"), "only a directory"),
        (("--context=git://example/x", "--no-push"), "not git://"),
        (("--destination", "UPPER/Case:1"), "UPPER/Case"),
        (("--no-push", "--cache"), "--cache needs --cache-repo"),
        (("--no-push", "--cache=maybe"), "expected true or false"),
        (("--no-push", "--build-arg", "=x"), "expected KEY=VALUE"),
        (("--no-push=true", "stray"), "unknown argument 'stray'"),
    ],
)
def test_bad_command_lines_are_one_line_errors(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as caught:
        parse(*argv)
    assert "\n" not in str(caught.value)


def test_unknown_flag_exits_2_naming_it(capsys) -> None:
    assert main(["executor", "--destination=r/a:1", "--snapshotMode=full"]) == 2
    assert "'--snapshotMode'" in capsys.readouterr().err


def test_executor_builds_and_pushes_with_a_login_over_tls(
    auth_registry,  # noqa: F811 - the fixture imported above
    busybox_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kaniko's flags as a migrating job writes them: config.json login, two destinations,
    digest files, a tarball, a label, the registry cache."""
    docker_config(tmp_path, monkeypatch, auth_registry.host, PASSWORD)
    cache = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(busybox_cache), str(cache)], check=True)
    context = tmp_path / "project"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nCOPY app.txt /\nCMD cat /app.txt\n")
    (context / "app.txt").write_text("hello\n")
    repository = f"{auth_registry.host}/acme/app"
    argv = [
        "executor",
        "--context",
        f"dir://{context}",
        "--dockerfile",
        str(context / "Dockerfile"),
        "--destination",
        f"{repository}:v1",
        "--destination",
        f"{repository}:latest",
        "--cache=true",
        "--cache-dir",
        str(cache),
        "--skip-tls-verify",
        "--label",
        "stage=test",
        "--digest-file",
        str(tmp_path / "digest"),
        "--image-name-with-digest-file",
        str(tmp_path / "names"),
        "--tar-path",
        str(tmp_path / "image.tar"),
    ]
    assert main(argv) == 0
    digest = (tmp_path / "digest").read_text()
    assert digest.startswith("sha256:")
    assert (tmp_path / "names").read_text() == f"{repository}@{digest}\n" * 2
    creds = f"--creds={USER}:{PASSWORD}"
    for tag in ("v1", "latest"):
        inspected = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", creds, f"docker://{repository}:{tag}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        info = json.loads(inspected)
        assert info["Digest"] == digest
        assert info["Labels"] == {"stage": "test"}
    with tarfile.open(tmp_path / "image.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"]
    # The registry cache was written: a fresh machine reads the steps instead of running them.
    fresh = tmp_path / "fresh"
    subprocess.run(["cp", "-a", str(busybox_cache), str(fresh)], check=True)
    argv[argv.index(str(cache))] = str(fresh)
    assert main(argv) == 0
    assert (tmp_path / "digest").read_text() == digest
