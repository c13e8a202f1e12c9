"""`buildgraph build` end to end on a real busybox image, overlayfs and namespaces."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from buildgraph.cli import main


@pytest.fixture
def cache(busybox_cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cache"
    subprocess.run(["cp", "-a", str(busybox_cache), str(target)], check=True)
    return target


def write_context(root: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def build(cache: Path, context: Path, *extra: str) -> int:
    return main(["build", str(context), "--cache-dir", str(cache), "--progress", "plain", *extra])


def digest_of(cache: Path, name: str) -> str:
    for entry in json.loads((cache / "index.json").read_text())["manifests"]:
        if entry["annotations"]["org.opencontainers.image.ref.name"] == name:
            return entry["digest"]
    raise AssertionError(name)


def unpack(cache: Path, name: str, dest: Path) -> Path:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{cache}:{name}", str(dest)],
        check=True,
        capture_output=True,
    )
    return dest / "rootfs"


def our_mounts(*roots: Path) -> list[str]:
    text = Path("/proc/mounts").read_text()
    return [line for line in text.splitlines() if any(str(root) in line for root in roots)]


SERVICE = """FROM busybox AS build
ENV GREETING=hello
WORKDIR /src
COPY app.txt ./
RUN echo "$GREETING $(cat app.txt)" > /built.txt && rm /bin/ls

FROM busybox
COPY --from=build /built.txt /srv/built.txt
USER app
CMD ["cat", "/srv/built.txt"]
"""


def test_build_then_rebuild_hits_the_cache(cache: Path, tmp_path: Path, capsys) -> None:
    context = write_context(tmp_path / "ctx", SERVICE, {"app.txt": "world"})
    assert build(cache, context, "-t", "svc:1") == 0
    first = digest_of(cache, "svc:1")
    capsys.readouterr()
    assert build(cache, context, "-t", "svc:1") == 0
    log = capsys.readouterr().err
    assert "STARTED" not in log and "CACHED" in log
    assert digest_of(cache, "svc:1") == first
    root = unpack(cache, "svc:1", tmp_path / "bundle")
    assert (root / "srv/built.txt").read_text() == "hello world\n"
    assert (root / "bin/ls").is_symlink()  # the final stage did not delete it
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", f"oci:{cache}:svc:1"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert config["config"]["User"] == "app"
    assert config["config"]["Cmd"] == ["cat", "/srv/built.txt"]
    assert our_mounts(cache, tmp_path) == []


def test_a_fully_cached_build_needs_neither_graph_nor_scheduler(
    cache: Path, tmp_path: Path, capsys
) -> None:
    context = write_context(tmp_path / "ctx", SERVICE, {"app.txt": "world"})
    assert build(cache, context, "-t", "svc:1") == 0
    first = digest_of(cache, "svc:1")
    capsys.readouterr()
    argv = [sys.executable, "-X", "importtime", "-m", "buildgraph", "build", str(context)]
    again = [*argv, "--cache-dir", str(cache), "--progress", "plain", "-t", "svc:2"]
    done = subprocess.run(again, capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "networkx" not in imported and "buildgraph.solver.scheduler" not in imported
    assert "CACHED" in done.stderr and "STARTED" not in done.stderr
    assert digest_of(cache, "svc:2") == first


def test_a_changed_file_rebuilds_only_what_reads_it(cache: Path, tmp_path: Path, capsys) -> None:
    context = write_context(tmp_path / "ctx", SERVICE, {"app.txt": "world"})
    assert build(cache, context, "-t", "svc:1") == 0
    (context / "app.txt").write_text("there")
    capsys.readouterr()
    assert build(cache, context, "-t", "svc:1") == 0
    started = [line for line in capsys.readouterr().err.splitlines() if "STARTED" in line]
    assert [line.split("] ", 1)[1] for line in started] == [
        "COPY app.txt ./",
        'RUN echo "$GREETING $(cat app.txt)" > /built.txt && rm /bin/ls',
        "COPY --from=build /built.txt /srv/built.txt",
        "USER app",  # metadata steps after a changed step get new keys too (no work)
        'CMD ["cat", "/srv/built.txt"]',
    ]
    root = unpack(cache, "svc:1", tmp_path / "bundle")
    assert (root / "srv/built.txt").read_text() == "hello there\n"


def test_same_input_gives_the_same_digest_with_source_date_epoch(
    busybox_cache: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    context = write_context(tmp_path / "ctx", SERVICE, {"app.txt": "world"})
    digests = []
    for name, jobs in (("one", "1"), ("two", "4")):
        cache = tmp_path / name
        subprocess.run(["cp", "-a", str(busybox_cache), str(cache)], check=True)
        assert build(cache, context, "-t", "svc:1", "-j", jobs) == 0
        digests.append(digest_of(cache, "svc:1"))
    assert digests[0] == digests[1]


def test_a_failed_run_exits_1_naming_the_line_and_caches_nothing(
    cache: Path, tmp_path: Path, capsys
) -> None:
    context = write_context(
        tmp_path / "ctx", "FROM busybox\nRUN echo before\nRUN echo oops && exit 3\n"
    )
    steps_before = set((cache / "steps").rglob("*.json")) if (cache / "steps").exists() else set()
    assert build(cache, context) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"buildgraph: error: {context / 'Dockerfile'}:3: ")
    assert "exited with code 3" in err and "oops" in err
    new = set((cache / "steps").rglob("*.json")) - steps_before
    assert len(new) == 2  # FROM and the first RUN; the failed step is not cached
    assert our_mounts(cache, tmp_path) == []


BAD_INPUT = [
    ("FROM busybox\nFROBNICATE x\n", {}, 2, 2),
    ("FROM busybox\nCOPY missing.txt /x\n", {}, 2, 2),
    ("FROM busybox\nCOPY ../outside /x\n", {}, 2, 2),
    ("FROM busybox\nRUN true\nCOPY link /x\n", {"link": "symlink:/etc/passwd"}, 3, 2),
    ("FROM ${NOPE}\n", {}, 1, 2),
    ("FROM busybox\nRUN true\nEXPOSE\n", {}, 3, 2),
    ("FROM busybox\nCOPY --from=0 /x /y\n", {}, 2, 2),
    # issue 16 (7): tracebacks before, each now one line naming its line, exit 2
    ("FROM busybox\nADD http://[::1 /x\n", {}, 2, 2),
    ("FROM busybox\nRUN echo a\0b\n", {}, 2, 2),
    ("FROM busybox\nCOPY --chmod=999 f /f\n", {"f": "x"}, 2, 2),
    ("FROM busybox\nENV A=" + "${X:-" * 5000 + "v" + "}" * 5000 + "\n", {}, 2, 2),
    ("FROM busybox\nEXPOSE " + "9" * 5000 + "\n", {}, 2, 2),
    ("FROM busybox\nHEALTHCHECK --interval=" + "9" * 5000 + "s CMD true\n", {}, 2, 2),
    ("FROM busybox\nHEALTHCHECK --retries=" + "9" * 5000 + " CMD true\n", {}, 2, 2),
    ("FROM busybox\nCOPY --chown=1:" + "9" * 5000 + " f /f\n", {"f": "x"}, 2, 2),
    ("FROM busybox\nRUN --mount=type=tmpfs,target=/t,size=" + "9" * 5000 + " true\n", {}, 2, 2),
    ("FROM busybox\nCOPY --from=" + "9" * 5000 + " f /f\n", {}, 2, 2),
    # issue 16 (8): accepted before, and silently wrong
    ("FROM busybox\nSTOPSIGNAL SIGNOPE\n", {}, 2, 2),
    ("FROM busybox\nRUN true\nSTOPSIGNAL 0\n", {}, 3, 2),
    ("FROM busybox\nADD --checksum=sha256:bad f /f\n", {"f": "x"}, 2, 2),
    ("FROM busybox\nADD --checksum=sha256:bad http://127.0.0.1:9/x /f\n", {}, 2, 2),
    ("FROM --platform=linux/arm64 busybox\nRUN true\n", {}, 1, 2),
    ("FROM busybox AS a\nFROM --platform=foo a\n", {}, 2, 2),
]


@pytest.mark.parametrize(("dockerfile", "files", "line", "code"), BAD_INPUT)
def test_bad_input_names_the_dockerfile_line(
    cache: Path, tmp_path: Path, capsys, dockerfile: str, files: dict, line: int, code: int
) -> None:
    context = tmp_path / "ctx"
    plain = {k: v for k, v in files.items() if not v.startswith("symlink:")}
    write_context(context, dockerfile, plain)
    for name, value in files.items():
        if value.startswith("symlink:"):
            (context / name).symlink_to(value.removeprefix("symlink:"))
    assert build(cache, context) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len([e for e in err if e.startswith("buildgraph: error:")]) == 1
    assert f"{context / 'Dockerfile'}:{line}: " in err[-1]
    assert "Traceback" not in err and len(err[-1]) < 400


@pytest.mark.parametrize("jobs", ["0", "-1", "x", "9" * 5000])
def test_jobs_must_be_at_least_one(cache: Path, tmp_path: Path, capsys, jobs: str) -> None:
    context = write_context(tmp_path / "ctx", "FROM busybox\n")
    assert main(["run", "-f", str(context / "Buildfile.yaml"), "-j", jobs]) == 2
    assert "-j/--jobs: expected a whole number of at least 1" in capsys.readouterr().err


def test_stopsignal_takes_names_and_numbers(cache: Path, tmp_path: Path) -> None:
    for name in ("SIGKILL", "kill", "9", "SIGRTMIN+3", "RTMAX-2"):
        context = write_context(tmp_path / name, f"FROM busybox\nSTOPSIGNAL {name}\n")
        assert build(cache, context) == 0, name


def test_a_base_image_of_another_platform_is_refused(cache: Path, tmp_path: Path, capsys) -> None:
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN true\n")
    assert build(cache, context, "--platform", "linux/arm64", "-t", "arm:1") == 2
    err = capsys.readouterr().err
    assert "the image is for linux/amd64, not linux/arm64" in err
    assert "arm:1" not in (cache / "index.json").read_text()  # no arm64 label on amd64 files
    assert build(cache, context, "--platform", "linux/amd64") == 0


def test_quiet_prints_the_digest_and_nothing_else(cache: Path, tmp_path: Path, capsys) -> None:
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo hello\n")
    assert main(["build", str(context), "--cache-dir", str(cache), "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.strip().startswith("sha256:") and len(out.splitlines()) == 1


def test_an_unknown_option_is_one_error_with_one_prefix(capsys) -> None:
    assert main(["push", "busybox", "--progress", "plain"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "buildgraph: error: unrecognized arguments: --progress plain"


def test_an_unsafe_tar_in_add_names_the_line(cache: Path, tmp_path: Path, capsys) -> None:
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN true\nADD evil.tar /x/\n")
    with tarfile.open(context / "evil.tar", "w") as tar:
        entry = tarfile.TarInfo("../../etc/evil")
        entry.size = 1
        tar.addfile(entry, io.BytesIO(b"x"))
    assert build(cache, context) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"buildgraph: error: {context / 'Dockerfile'}:3: tar entry")


def test_unknown_target_stage_is_bad_input(cache: Path, tmp_path: Path, capsys) -> None:
    context = write_context(tmp_path / "ctx", "FROM busybox AS one\n")
    assert build(cache, context, "--target", "two") == 2
    assert "target stage 'two' not found" in capsys.readouterr().err


def test_unreachable_base_image_exits_3_naming_the_line(
    cache: Path, tmp_path: Path, capsys
) -> None:
    context = write_context(tmp_path / "ctx", "# base\nFROM 127.0.0.1:1/nothing:1\n")
    code = main(["build", str(context), "--cache-dir", str(cache), "--registry-timeout", "1"])
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{context / 'Dockerfile'}:2: " in err and "unreachable" in err


def sleepers() -> list[str]:
    """Pids of `sleep 30` processes still alive (the RUN command of the kill tests)."""
    found = subprocess.run(["pgrep", "-x", "sleep"], capture_output=True, text=True).stdout
    alive = []
    for pid in found.split():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0030\x00":
                alive.append(pid)
        except OSError:
            continue  # it just exited
    return alive


def start_until_running(context: Path, cache: Path) -> subprocess.Popen:
    """A build in its own process, returned once its RUN printed "started"."""
    argv = [sys.executable, "-m", "buildgraph", "build", str(context), "--cache-dir", str(cache)]
    process = subprocess.Popen([*argv, "--progress", "plain"], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    for line in process.stderr:
        if "| started" in line or time.monotonic() > deadline:
            break
    return process


def test_sigkill_during_run_leaves_no_mount_and_the_next_build_works(
    cache: Path, tmp_path: Path
) -> None:
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo started && sleep 30\n")
    process = start_until_running(context, cache)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    deadline = time.monotonic() + 5  # the death signal reaches the sandbox asynchronously
    while (our_mounts(cache) or sleepers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert our_mounts(cache) == []
    assert sleepers() == []
    write_context(context, "FROM busybox\nRUN echo again\n")
    assert build(cache, context) == 0


def test_run_mounts_cache_secret_tmpfs_bind(cache: Path, tmp_path: Path) -> None:
    dockerfile = """FROM busybox
RUN --mount=type=cache,target=/var/cache/app \\
    echo run >> /var/cache/app/log && cp /var/cache/app/log /log
RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /secret-size
RUN --mount=type=tmpfs,target=/scratch echo x > /scratch/file && ls /scratch > /tmpfs-list
RUN --mount=type=bind,source=data,target=/data cat /data/input > /from-bind
"""
    context = write_context(tmp_path / "ctx", dockerfile, {"data/input": "bound\n"})
    secret = tmp_path / "token.txt"
    secret.write_text("s3cret\n")
    assert build(cache, context, "-t", "mounts:1", "--secret", f"id=token,src={secret}") == 0
    root = unpack(cache, "mounts:1", tmp_path / "bundle")
    assert (root / "log").read_text() == "run\n"
    assert (root / "secret-size").read_text().strip() == "7"
    assert (root / "tmpfs-list").read_text() == "file\n"
    assert (root / "from-bind").read_text() == "bound\n"
    for absent in ("var/cache/app/log", "run/secrets/token", "scratch/file", "data/input"):
        assert not (root / absent).exists(), absent
    # The secret is in no layer and no cache record.
    blobs = list((cache / "blobs/sha256").iterdir()) + list((cache / "steps").rglob("*.json"))
    for blob in blobs:
        data = blob.read_bytes()
        if blob.suffix == ".json" or data[:2] != b"\x1f\x8b":
            assert b"s3cret" not in data
        else:
            assert b"s3cret" not in gzip.decompress(data)
    # The cache mount persists: a rebuild of the first step (new key) sees the old content.
    changed = dockerfile.replace("echo run", "echo again")
    write_context(context, changed)
    assert build(cache, context, "-t", "mounts:2", "--secret", f"id=token,src={secret}") == 0
    root = unpack(cache, "mounts:2", tmp_path / "bundle2")
    assert (root / "log").read_text() == "run\nagain\n"


def test_a_required_secret_that_is_missing_fails_the_step(
    cache: Path, tmp_path: Path, capsys
) -> None:
    context = write_context(
        tmp_path / "ctx", "FROM busybox\nRUN --mount=type=secret,id=tok,required=true true\n"
    )
    assert build(cache, context) == 1
    assert "secret 'tok' is required" in capsys.readouterr().err


def test_network_none_has_only_loopback(cache: Path, tmp_path: Path) -> None:
    context = write_context(
        tmp_path / "ctx", "FROM busybox\nRUN --network=none ls /sys/class/net > /nets\n"
    )
    assert build(cache, context, "-t", "net:1") == 0
    root = unpack(cache, "net:1", tmp_path / "bundle")
    assert (root / "nets").read_text().split() == ["lo"]


@pytest.fixture
def file_server(tmp_path: Path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_add_url_keys_on_content_and_checks_checksum(
    cache: Path, tmp_path: Path, file_server, capsys
) -> None:
    www, url = file_server
    (www / "tool.sh").write_text("echo v1\n")
    context = write_context(tmp_path / "ctx", f"FROM busybox\nADD {url}/tool.sh /opt/\n")
    assert build(cache, context, "-t", "url:1") == 0
    root = unpack(cache, "url:1", tmp_path / "b1")
    assert (root / "opt/tool.sh").read_text() == "echo v1\n"
    assert (root / "opt/tool.sh").stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    (www / "tool.sh").write_text("echo v2\n")  # same URL, new content: the step reruns
    assert build(cache, context, "-t", "url:1") == 0
    assert "STARTED  [stage-0] ADD" in capsys.readouterr().err
    digest = "sha256:" + hashlib.sha256(b"echo v2\n").hexdigest()
    good = f"FROM busybox\nADD --checksum={digest} {url}/tool.sh /opt/\n"
    write_context(context, good)
    assert build(cache, context) == 0
    write_context(context, good.replace(digest, "sha256:" + "0" * 64))
    assert build(cache, context) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def test_relative_context_and_cache_dir(cache: Path, tmp_path: Path, monkeypatch) -> None:
    write_context(
        tmp_path / "ctx", "FROM busybox\nWORKDIR /w\nCOPY f ./\nRUN cat f > g\n", {"f": "x"}
    )
    monkeypatch.chdir(tmp_path)
    assert main(["build", "ctx", "--cache-dir", "cache", "-t", "rel:1", "--progress", "plain"]) == 0
    root = unpack(cache, "rel:1", tmp_path / "bundle")
    assert (root / "w/g").read_text() == "x"


@pytest.mark.parametrize(
    ("number", "code", "line"),
    [
        (signal.SIGINT, 130, "buildgraph: interrupted"),
        (signal.SIGTERM, 143, "buildgraph: terminated"),
    ],
)
def test_ctrl_c_or_sigterm_stops_at_once_leaving_no_mount_and_no_entry(
    cache: Path, tmp_path: Path, number: int, code: int, line: str
) -> None:
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo started && sleep 30\n")
    records_before = set((cache / "steps").rglob("*.json")) if (cache / "steps").exists() else set()
    process = start_until_running(context, cache)
    began = time.monotonic()
    process.send_signal(number)
    assert process.wait(15) == code
    assert time.monotonic() - began < 5  # it did not wait for the sleep
    assert process.stderr is not None
    assert process.stderr.read().strip().splitlines()[-1] == line  # one line, no traceback
    assert not list((cache / "snapshots" / ".work").iterdir())  # its step dir is gone
    assert our_mounts(cache) == []
    new = set((cache / "steps").rglob("*.json")) - records_before
    assert len(new) == 1  # only FROM; the interrupted RUN left no entry
    assert not list((cache / "ingest").iterdir())


def test_built_layers_are_stored_plain_and_pushed_gzipped(
    cache: Path, tmp_path: Path, registry, capsys
) -> None:
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo pushed > /p.txt\n")
    ref = f"{registry.host}/built/app:1"
    assert build(cache, context, "-t", ref, "--push") == 0
    local = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci:{cache}:{ref}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert local["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    remote = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert {layer["mediaType"] for layer in remote["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    copy = tmp_path / "copy"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{copy}:x"],
        check=True,
        capture_output=True,
    )
    root = unpack(copy, "x", tmp_path / "bundle")
    assert (root / "p.txt").read_text() == "pushed\n"
