"""Issue 12's acceptance (slow): the executor image, built by buildgraph on the host, runs in a
plain `docker run` (a private dockerd; no --privileged, no --cap-add, no --security-opt; only
`--network host` and volumes) and builds there what CI jobs build: the seed Dockerfile and the
real-world ones (apt-get install, a venv with pip install, npm install, a static gcc build in a
scratch image, useradd then USER) through Kaniko's command line, and a multi-target Buildfile
through `buildgraph run`. Everything is pushed to a registry that needs a login (htpasswd over
TLS; the login written to /kaniko/.docker/config.json as the seed's GitLab job writes it), then
pulled and run by the host's docker. Base images come from that registry too.

npm is a stub (a shell script, as in test_real_world.py): Debian's npm package pulls in hundreds
of packages, too slow for CI, and what is under test here is the executor, not npm."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from debian import debootstrap_bookworm
from dockerd import DOCKER, Dockerd, private_dockerd
from registry_server import RegistryServer
from test_real_world import NODE_FILES, NODE_OUTPUT
from tls_registry import htpasswd_registry, make_tls_ca

from buildgraph.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = "ci-builder", "Unpr1v-Pa55word-9876"
EXECUTOR = "buildgraph/executor:latest"  # the Buildfile's `executor` target
BASE = "{registry}/library/debian:bookworm"

GITLAB = yaml.safe_load((REPO / "examples/gitlab-ci/.gitlab-ci.yml").read_text())
KUBERNETES = list(
    yaml.safe_load_all((REPO / "examples/kubernetes/buildgraph-job.yaml").read_text())
)
# Every job logs in as the GitLab example's jobs do: config.json written from CI variables.
LOGIN = "\n".join(GITLAB["default"]["before_script"])
CA_IN_CONTAINER = "/etc/ssl/certs/ci-registry-ca.pem"  # the runner's CA for the CI registry

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from a static binary"); return 0; }\n'
# Each project: (files, the command `docker run` gives (none: the image's own), expected stdout).
PROJECTS: dict[str, tuple[dict[str, str], tuple[str, ...], str]] = {
    "python-venv": (
        {
            "Dockerfile": "FROM {base}\n"
            "RUN apt-get update"
            " && apt-get install -y --no-install-recommends python3 python3-venv\n"
            "COPY hello-1.0-py3-none-any.whl /tmp/\n"
            "RUN python3 -m venv /venv"
            " && /venv/bin/pip install --no-index /tmp/hello-1.0-py3-none-any.whl"
            " && rm /tmp/hello-1.0-py3-none-any.whl\n"
            'CMD ["/venv/bin/hello"]\n',
        },
        (),
        "hello from /venv\n",
    ),
    "npm": (
        {
            "Dockerfile": "FROM {base}\n"
            "COPY fake-npm /usr/local/bin/npm\n"
            "WORKDIR /usr/src/app\n"
            "COPY package*.json ./\n"
            "RUN npm install\n"
            "COPY . .\n"
            'CMD ["sh", "-c", "ls node_modules | tr \'\\\\n\' \' \' && cat server.js"]\n',
            **NODE_FILES,
        },
        (),
        NODE_OUTPUT,
    ),
    "gcc-static": (
        {
            "Dockerfile": "FROM {base} AS build\n"
            "RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev\n"
            "COPY hello.c /src/\n"
            "RUN mkdir /out && gcc -static -O2 -o /out/hello /src/hello.c\n"
            "FROM scratch\n"
            "COPY --from=build /out/hello /hello\n"
            'ENTRYPOINT ["/hello"]\n',
            "hello.c": HELLO_C,
        },
        (),
        "hello from a static binary\n",
    ),
    "useradd": (
        {
            "Dockerfile": "FROM {base}\n"
            "RUN useradd --create-home --uid 1234 app\n"
            "USER app\n"
            "WORKDIR /home/app\n"
            'RUN echo "written by $(id -un)" > note\n'
            'CMD ["sh", "-c", "id -un; id -u; cat note; stat -c %U note"]\n',
        },
        (),
        "app\n1234\nwritten by app\napp\n",
    ),
}

BUILDFILE = """version: 1
vars: {REGISTRY: "localhost:5000"}
targets:
  base:
    context: base
    tags: ["${REGISTRY}/base:1"]
  api:
    context: api
    args: {REGISTRY: "${REGISTRY}"}
    tags: ["${REGISTRY}/api:1"]
  web:
    context: web
    args: {REGISTRY: "${REGISTRY}"}
    tags: ["${REGISTRY}/web:1"]
"""
SERVICE = """ARG REGISTRY
FROM ${{REGISTRY}}/base:1
RUN echo {name} > /service.txt
CMD ["sh", "-c", "cat /base.txt /service.txt"]
"""


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA bundle, certificate chain, key) for a server on 127.0.0.1."""
    return make_tls_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, tls_ca: tuple[Path, Path, Path]
) -> Iterator[RegistryServer]:
    """The CI registry: htpasswd (Basic) auth over TLS on 127.0.0.1."""
    root = tmp_path_factory.mktemp("ci-registry")
    with htpasswd_registry(root, USER, PASSWORD, tls_ca, "buildgraph-ci") as server:
        yield server


@pytest.fixture(scope="module")
def host_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host's store: debian:bookworm (minbase), imported as the Quick start does."""
    work = tmp_path_factory.mktemp("host")
    rootfs = debootstrap_bookworm(work / "rootfs")
    cache = work / "cache"
    argv = ["image", "import", str(rootfs), "-t", "debian:bookworm", "--cache-dir", str(cache)]
    assert main(argv) == 0
    shutil.rmtree(rootfs)
    return cache


@pytest.fixture(scope="module")
def executor_archive(tmp_path_factory: pytest.TempPathFactory, host_store: Path) -> Path:
    """The executor image as scripts/build-executor-image.sh builds it (wheels from the host,
    then the Buildfile's `executor` target), on a copy of the repository, as a docker archive."""
    work = tmp_path_factory.mktemp("executor")
    repo = work / "repo"
    repo.mkdir()
    for name in ("Buildfile.yaml", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, repo / name)
    for name in ("buildgraph", "executor", "workspace"):
        ignore = shutil.ignore_patterns("__pycache__", "wheels")
        shutil.copytree(REPO / name, repo / name, ignore=ignore)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            f"{repo}[dask]",  # as scripts/build-executor-image.sh: the image runs Dask workers
            "-w",
            str(repo / "executor/wheels"),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
        timeout=600,
    )
    argv = ["run", "executor", "-f", str(repo / "Buildfile.yaml"), "--cache-dir", str(host_store)]
    assert main([*argv, "--progress", "plain"]) == 0
    archive = work / "executor.tar"
    assert main(["image", "export", EXECUTOR, "-o", f"type=docker,dest={archive}",
                 "--cache-dir", str(host_store)]) == 0  # fmt: skip
    return archive


@pytest.fixture(scope="module")
def base_image(
    registry: RegistryServer, tls_ca: tuple[Path, Path, Path], host_store: Path, host_login: Path
) -> str:
    """debian:bookworm pushed to the CI registry: the base every Dockerfile here names."""
    ref = BASE.format(registry=registry.host)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_CONFIG", str(host_login))
        argv = ["push", "debian:bookworm", ref, "--cache-dir", str(host_store)]
        assert main([*argv, "--ca-bundle", str(tls_ca[0])]) == 0
    return ref


@pytest.fixture(scope="module")
def host_login(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer) -> Path:
    """A DOCKER_CONFIG directory with the CI registry's login (as `docker login` leaves it)."""
    directory = tmp_path_factory.mktemp("docker-config")
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    return directory


@pytest.fixture(scope="module")
def docker(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, executor_archive: Path
) -> Iterator[Dockerd]:
    """A private dockerd that trusts the CI registry without its CA, logged in, with the
    executor image loaded."""
    work = tmp_path_factory.mktemp("dockerd")
    with private_dockerd(work, insecure_registries=[registry.host]) as daemon:
        daemon.docker("load", "-i", str(executor_archive))
        daemon.docker("login", registry.host, "-u", USER, "--password-stdin", stdin=PASSWORD)
        yield daemon


def hello_wheel(directory: Path) -> Path:
    """A pure-Python wheel `hello` whose console script prints the venv it runs from."""
    files = {
        "hello/__init__.py": "import sys\n\n\ndef main():\n    print('hello from', sys.prefix)\n",
        "hello-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: hello\nVersion: 1.0\n",
        "hello-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: buildgraph-tests\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
        "hello-1.0.dist-info/entry_points.txt": "[console_scripts]\nhello = hello:main\n",
    }
    records = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        records.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    records.append("hello-1.0.dist-info/RECORD,,")
    files["hello-1.0.dist-info/RECORD"] = "\n".join(records) + "\n"
    path = directory / "hello-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def write_project(root: Path, files: dict[str, str], base: str) -> Path:
    root.mkdir(parents=True)
    for relative, content in files.items():
        path = root / relative
        path.write_text(content.format(base=base) if relative == "Dockerfile" else content)
        if relative.startswith("fake-"):
            path.chmod(0o755)
    return root


@dataclass(frozen=True)
class Runner:
    """A CI runner: the private dockerd, the CI registry and its CA, the runner's /cache."""

    docker: Dockerd
    registry: RegistryServer
    ca: Path
    cache: Path

    def job(
        self,
        workspace: Path,
        *,
        script: str = "",
        command: tuple[str, ...] = (),
        volumes: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        workdir: str = "",
        docker_options: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        """One job in the executor image, a plain `docker run`: the host's network, the
        workspace, the runner's cache and CA as volumes, the CI variables. With `script`:
        GitLab's `entrypoint: [""]` and `sh -c SCRIPT`; else the image's entry point with
        `command` as its arguments, or `command[0]` as the entry point (Kubernetes' `command`).
        `docker_options` only take away (--cap-drop), never add."""
        argv = ["run", "--rm", "--network", "host", *docker_options]
        mounts = (f"{workspace}:/workspace", f"{self.cache}:/cache", f"{self.ca}:{CA_IN_CONTAINER}")
        for volume in (*mounts, *volumes):
            argv += ["-v", volume]
        variables = {
            "CI_REGISTRY": self.registry.host,
            "CI_REGISTRY_USER": USER,
            "CI_REGISTRY_PASSWORD": PASSWORD,
            "CI_PROJECT_DIR": "/workspace",
            "REQUESTS_CA_BUNDLE": CA_IN_CONTAINER,
            **(env or {}),
        }
        for name in variables:
            argv += ["-e", name]  # the values come from the client's environment, not argv
        if workdir:
            argv += ["-w", workdir]
        if script:
            argv += ["--entrypoint", "", EXECUTOR, "sh", "-euc", script]
        elif command[0].startswith("-"):
            argv += [EXECUTOR, *command]
        else:
            argv += ["--entrypoint", command[0], EXECUTOR, *command[1:]]
        done = subprocess.run(
            [DOCKER, *argv],  # Debian's client (docker.io), whatever else PATH has
            env={**self.docker.env(), **variables},
            capture_output=True,
            text=True,
            timeout=1500,
        )
        assert PASSWORD not in done.stdout + done.stderr
        return done


@pytest.fixture(scope="module")
def runner(
    docker: Dockerd,
    registry: RegistryServer,
    tls_ca: tuple[Path, Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Runner:
    """The runner's /cache volume is shared by every job of this module (as GitLab's is)."""
    return Runner(docker, registry, tls_ca[0], tmp_path_factory.mktemp("runner-cache"))


def pull_and_run(docker: Dockerd, ref: str, *command: str) -> str:
    docker.docker("pull", ref)
    ran = docker.docker("run", "--rm", "--network", "host", ref, *command)
    return ran.stdout


def test_the_executor_image_is_kanikos(docker: Dockerd) -> None:
    """Kaniko's entry point and paths, a shell for CI scripts, and buildgraph on the PATH."""
    config = json.loads(docker.docker("image", "inspect", EXECUTOR).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/kaniko/executor"]
    assert config["WorkingDir"] == "/workspace"
    assert "DOCKER_CONFIG=/kaniko/.docker" in config["Env"]
    shell = ["run", "--rm", "--network", "host", "--entrypoint", "", EXECUTOR, "sh", "-c"]
    ran = docker.docker(
        *shell, "buildgraph --version && command -v executor && command -v git && id -u"
    )
    assert ran.stdout == "buildgraph 0.1.0\n/kaniko/executor\n/usr/bin/git\n0\n"
    bad = docker.docker("run", "--rm", EXECUTOR, "--no-such-flag", check=False)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert "unknown Kaniko flag '--no-such-flag'" in bad.stderr


def test_seed_job_builds_and_pushes_unprivileged(
    runner: Runner, base_image: str, tmp_path: Path
) -> None:
    """The seed: workspace/Dockerfile (FROM debian:bookworm + apt-get install wget curl), its
    base on the CI registry, built by the GitLab example's Kaniko-style job as written there
    (its before_script, then its script), pushed under the tag and `latest`."""
    workspace = tmp_path / "project"
    workspace.mkdir()
    seed = (REPO / "workspace/Dockerfile").read_text()
    assert "FROM debian:bookworm\n" in seed
    (workspace / "Dockerfile").write_text(
        seed.replace("FROM debian:bookworm", f"FROM {base_image}")
    )
    job = GITLAB["release-dockerfile"]
    assert "tags" not in job and "tags" not in GITLAB["default"]  # any runner, none privileged
    script = "\n".join([*GITLAB["default"]["before_script"], *job["script"]])
    image = f"{runner.registry.host}/seed"
    env = {"CI_REGISTRY_IMAGE": image, "CI_COMMIT_TAG": "v1"}
    done = runner.job(workspace, script=script, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "isolation: chroot (namespaces are not available (" in done.stdout + done.stderr
    for tag in ("v1", "latest"):
        versions = pull_and_run(runner.docker, f"{image}:{tag}", "sh", "-c", "wget -V; curl -V")
        assert versions.startswith("GNU Wget 1.21") and "\ncurl 7.88" in versions
    digests = runner.docker.docker(
        "image", "inspect", "-f", "{{.Id}}", f"{image}:v1", f"{image}:latest"
    )
    assert len(set(digests.stdout.split())) == 1


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_real_world_dockerfile_builds_unprivileged(
    name: str, runner: Runner, base_image: str, host_login: Path, tmp_path: Path
) -> None:
    files, command, expected = PROJECTS[name]
    workspace = write_project(tmp_path / "project", files, base_image)
    if name == "python-venv":
        hello_wheel(workspace)
    destination = f"{runner.registry.host}/realworld/{name}:1"
    if name == "useradd":
        # A Kubernetes Job's way: the login is a mounted Secret, the image's entry point runs
        # with Kaniko's arguments; TLS verified against the CA as in the other jobs.
        args = ("--context", "dir:///workspace", "--destination", destination)
        volumes = (f"{host_login}:/kaniko/.docker:ro",)
        done = runner.job(workspace, command=args, volumes=volumes)
    else:
        script = (
            f"{LOGIN}\n/kaniko/executor --context $PWD --dockerfile Dockerfile"
            f" --destination {destination} --skip-tls-verify --digest-file /workspace/digest"
        )
        done = runner.job(workspace, script=script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "isolation: chroot (" in done.stdout + done.stderr
    assert pull_and_run(runner.docker, destination, *command) == expected


def write_monorepo(workspace: Path, base_image: str) -> Path:
    """A Buildfile of a base target and two services built FROM its tag."""
    files = {
        "Buildfile.yaml": BUILDFILE,
        "base/Dockerfile": f"FROM {base_image}\nRUN echo base > /base.txt\n",
        "api/Dockerfile": SERVICE.format(name="api"),
        "web/Dockerfile": SERVICE.format(name="web"),
    }
    for relative, text in files.items():
        (workspace / relative).parent.mkdir(parents=True, exist_ok=True)
        (workspace / relative).write_text(text)
    return workspace


def git(directory: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(directory), *args], check=True, capture_output=True, text=True
    )
    return done.stdout


def test_kubernetes_job_runs_a_multi_target_buildfile_unprivileged(
    runner: Runner, base_image: str, host_login: Path, tmp_path: Path
) -> None:
    """The Kubernetes example's container as written there (image entry point replaced by
    its `command`, its args, env, working dir and mounts; no securityContext), run by docker:
    `buildgraph run --push` with a registry cache on a Buildfile of a base target and two
    services built FROM its tag. Its registry is the CI registry."""
    job = KUBERNETES[1]["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert "securityContext" not in container and "securityContext" not in job

    def here(text: str) -> str:
        return text.replace("registry.example.com/acme", f"{runner.registry.host}/acme")

    workspace = write_monorepo(tmp_path / "monorepo", base_image)
    paths = {"workspace": workspace, "cache": tmp_path / "pvc", "registry-auth": host_login}
    volumes = tuple(f"{paths[m['name']]}:{m['mountPath']}" for m in container["volumeMounts"])
    env = {item["name"]: here(item["value"]) for item in container["env"]}
    command = (*container["command"], *(here(arg) for arg in container["args"]))
    done = runner.job(
        workspace, command=command, volumes=volumes, env=env, workdir=container["workingDir"]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "isolation: chroot (" in done.stdout + done.stderr
    for name in ("api", "web"):
        ran = pull_and_run(runner.docker, f"{runner.registry.host}/acme/{name}:1")
        assert ran == f"base\n{name}\n"


def test_gitlab_merge_request_job_builds_what_changed_unprivileged(
    runner: Runner, base_image: str, tmp_path: Path
) -> None:
    """The GitLab example's build-affected job as written there (the pipeline's variables, the
    default before_script, the job's script) on a merge request that changes api: git and
    `buildgraph affected` in the executor image name api alone, and only it (with the base it
    is built on, which may come from the registry cache) is built, its new steps exported."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    checkout = write_monorepo(tmp_path / "checkout", base_image)
    git(checkout, "init", "-q", "-b", "main")
    git(checkout, "add", ".")
    identity = ("-c", "user.name=ci", "-c", "user.email=ci@example.invalid")
    git(checkout, *identity, "commit", "-q", "-m", "main")
    git(checkout, "remote", "add", "origin", "/origin.git")  # the path inside the container
    git(checkout, "push", "-q", str(origin), "main")
    git(checkout, "checkout", "-q", "-b", "feature")
    (checkout / "api/Dockerfile").write_text(SERVICE.format(name="api-v2"))
    git(checkout, *identity, "commit", "-q", "-am", "api: v2")

    variables = [f'export {name}="{value}"' for name, value in GITLAB["variables"].items()]
    job = GITLAB["build-affected"]
    script = "\n".join([*variables, *GITLAB["default"]["before_script"], *job["script"]])
    env = {
        "CI_REGISTRY_IMAGE": f"{runner.registry.host}/acme",
        "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
    }
    done = runner.job(checkout, script=script, env=env, volumes=(f"{origin}:/origin.git:ro",))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "affected: api\n" in done.stdout
    summary = [line.split() for line in done.stdout.splitlines()]
    built = {row[0]: int(row[1]) for row in summary if row and row[0] in ("base", "api", "web")}
    assert set(built) == {"base", "api"}, done.stdout  # web is not built, base only for api
    assert built["api"] >= 1  # at least the changed RUN
    assert re.search(r"^remote cache: .*, [1-9][0-9]* steps exported$", done.stdout, re.M)
    assert "isolation: chroot (" in done.stderr


def test_a_build_that_deletes_etc_leaves_the_executors_etc(
    runner: Runner, base_image: str, tmp_path: Path
) -> None:
    """Kaniko builds in its own root; buildgraph must not: a marker in the executor's /etc
    survives a build whose image deletes /etc, and the image has /etc deleted."""
    workspace = tmp_path / "rm-etc"
    workspace.mkdir()
    (workspace / "Dockerfile").write_text(f"FROM {base_image}\nRUN rm -rf /etc && test ! -e /etc\n")
    script = (
        f"{LOGIN}\necho kept > /etc/buildgraph-marker\n"
        "/kaniko/executor --context /workspace --no-push --tar-path /workspace/image.tar\n"
        "cat /etc/buildgraph-marker && test -s /etc/passwd && test -s /kaniko/.docker/config.json"
    )
    done = runner.job(workspace, script=script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "kept"
    assert top_layer_names(workspace / "image.tar") == {".wh.etc"}


def top_layer_names(archive: Path) -> set[str]:
    with tarfile.open(archive) as image:
        manifest = json.load(image.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer = image.extractfile(manifest[0]["Layers"][-1])
        assert layer is not None
        with tarfile.open(fileobj=io.BytesIO(layer.read())) as top:
            return set(top.getnames())


def test_without_sys_chroot_the_executor_says_what_is_missing(
    runner: Runner, base_image: str, host_login: Path, tmp_path: Path
) -> None:
    """Docker's default set less CAP_SYS_CHROOT leaves no isolation: one line naming it, exit 2,
    at the first RUN, which does not run."""
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo never > /ran\n")
    args = ("--context", "/workspace", "--no-push", "--tar-path", "/workspace/image.tar")
    done = runner.job(
        workspace,
        command=args,
        docker_options=("--cap-drop", "SYS_CHROOT"),
        volumes=(f"{host_login}:/kaniko/.docker:ro",),
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("buildgraph: error")]
    assert line.startswith("buildgraph: error: Dockerfile:2: no isolation for RUN works here: ")
    assert line.endswith("(it needs CAP_SYS_CHROOT, in Docker's default set)")
    assert not (workspace / "image.tar").exists()
