"""Command line: argparse, the subcommand table, errors to exit codes. No build logic here."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from buildgraph import __version__
from buildgraph.errors import BuildgraphError, InputError, Terminated, shorten, storage_error
from buildgraph.handlers import (
    _say,
    cmd_build,
    cmd_cache,
    cmd_executor,
    cmd_image_export,
    cmd_image_import,
    cmd_image_rm,
    cmd_images,
    cmd_info,
    cmd_pull,
    cmd_push,
)
from buildgraph.project_handlers import cmd_affected, cmd_plan, cmd_run

EXIT_INTERRUPTED = 130
MAX_ERROR = 1000  # characters of an error line


class _Parser(argparse.ArgumentParser):
    """argparse that raises InputError (exit 2, one line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # "buildgraph run: …" names the subcommand; the top level's name is in the prefix already
        where = "" if self.prog == "buildgraph" else f"{self.prog}: "
        raise InputError(f"{where}{message}")


def _jobs(text: str) -> int:
    """-j N: a whole number of at least 1 (0 would run nothing and wait forever)."""
    try:
        jobs = int(text) if len(text) <= 10 else 0
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of at least 1, not {shorten(text)!r}"
        )
    return jobs


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("BUILDGRAPH_CACHE_DIR", "cache"),
        help="local cache and image store, an OCI layout (default ./cache)",
    )
    parser.add_argument("--platform", help="os/arch[/variant] (default: the host's)")
    parser.add_argument(
        "--insecure-registry", action="append", metavar="HOST", help="use plain HTTP for HOST"
    )
    parser.add_argument("--ca-bundle", metavar="FILE", help="CA certificates for registry TLS")
    parser.add_argument(
        "--registry-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up on a registry after retrying this long (default 120)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results")


def _isolation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--isolation",
        choices=("auto", "namespaces", "chroot"),
        default=os.environ.get("BUILDGRAPH_ISOLATION", "auto"),
        help="how RUN is isolated: namespaces+overlayfs, or chroot where mount and unshare "
        "are refused (an unprivileged container); auto probes (default, or "
        "$BUILDGRAPH_ISOLATION); see `buildgraph info`",
    )


def _compression(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compression",
        choices=("gzip", "zstd"),
        default="gzip",
        help="layers pushed to a registry: gzip (default; every client) or zstd (OCI "
        "tar+zstd: Docker >= 23, containerd >= 1.5, podman)",
    )


def _trace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="write a Chrome trace-event file (Perfetto, chrome://tracing): one span per step "
        "with its phases",
    )


def _allow(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow",
        action="append",
        choices=("security.insecure",),
        metavar="ENTITLEMENT",
        help="security.insecure: let RUN --security=insecure run with every privilege",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="buildgraph", description="Build container images like make.")
    parser.add_argument("--version", action="version", version=f"buildgraph {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    image = commands.add_parser("image", help="manage images in the local store")
    image_commands = image.add_subparsers(dest="image_command", required=True)
    imp = image_commands.add_parser("import", help="import a root filesystem (like docker import)")
    imp.add_argument("source", help="ROOTFS.tar[.gz|.xz|.zst] or a directory")
    imp.add_argument("-t", "--tag", required=True, help="NAME[:TAG]")
    imp.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip")
    imp.set_defaults(handler=cmd_image_import)
    exp = image_commands.add_parser("export", help="write a stored image somewhere")
    exp.add_argument("name")
    exp.add_argument(
        "-o",
        "--output",
        action="append",
        required=True,
        help="type=oci,dest=DIR | type=docker,dest=FILE.tar | type=local,dest=DIR",
    )
    exp.set_defaults(handler=cmd_image_export)
    rm = image_commands.add_parser("rm", help="remove names from the local store")
    rm.add_argument("names", nargs="+")
    rm.set_defaults(handler=cmd_image_rm)
    ls = image_commands.add_parser("ls", help="list the local store (same as `images`)")
    ls.set_defaults(handler=cmd_images)

    images = commands.add_parser("images", help="list the local image store")
    images.set_defaults(handler=cmd_images)

    pull = commands.add_parser("pull", help="pull an image from a registry into the store")
    pull.add_argument("ref")
    pull.set_defaults(handler=cmd_pull)

    push = commands.add_parser("push", help="push a stored image to a registry")
    push.add_argument("name", help="image in the local store")
    push.add_argument("ref", nargs="?", help="destination (default: the image's own name)")
    push.add_argument(
        "--format", choices=("oci", "docker"), default="oci", help="manifest format to push"
    )
    _compression(push)
    push.set_defaults(handler=cmd_push)

    bld = commands.add_parser("build", help="build one Dockerfile (like docker build / kaniko)")
    bld.add_argument("context", nargs="?", default=".", help="build context directory")
    bld.add_argument("-f", "--file", help="Dockerfile (default CONTEXT/Dockerfile)")
    bld.add_argument("--target", help="the stage to build (default: the last)")
    bld.add_argument("--build-arg", action="append", metavar="KEY[=VALUE]")
    bld.add_argument("-t", "--tag", action="append", metavar="NAME[:TAG]")
    bld.add_argument("--label", action="append", metavar="KEY=VALUE", help="add to the config")
    bld.add_argument(
        "-o",
        "--output",
        action="append",
        metavar="SPEC",
        help="type=oci,dest=DIR | type=docker,dest=FILE | type=local,dest=DIR | type=registry",
    )
    bld.add_argument(
        "--secret", action="append", metavar="id=ID,src=FILE", help="for RUN --mount=type=secret"
    )
    bld.add_argument(
        "--network", choices=("host", "none"), default="host", help="network for RUN steps"
    )
    bld.add_argument("--cache-repo", metavar="REF", help="remote cache repository (read+write)")
    bld.add_argument("--cache-from", metavar="REF", help="read the remote cache here")
    bld.add_argument("--cache-to", metavar="REF", help="export the remote cache here")
    bld.add_argument("--no-cache", action="store_true", help="rebuild every step")
    bld.add_argument("--pull", action="store_true", help="always pull FROM images")
    bld.add_argument("--push", action="store_true", help="push every -t tag")
    bld.add_argument("-j", "--jobs", type=_jobs, help="steps run at once (default: CPU count)")
    bld.add_argument(
        "--progress", choices=("auto", "tty", "plain", "json"), default="auto", help="output style"
    )
    _allow(bld)
    _isolation(bld)
    _compression(bld)
    _trace(bld)
    bld.set_defaults(handler=cmd_build)

    infop = commands.add_parser("info", help="what this machine allows: the isolation for RUN")
    infop.set_defaults(handler=cmd_info)

    commands.add_parser(  # parsed by commands/executor.py; listed here for --help
        "executor", help="build with Kaniko's flags (--context, --dockerfile, --destination ...)"
    )

    runp = commands.add_parser("run", help="build targets of Buildfile.yaml as one graph")
    runp.add_argument("targets", nargs="*", metavar="TARGET|GROUP")
    runp.add_argument("-f", "--file", default="Buildfile.yaml", help="default ./Buildfile.yaml")
    runp.add_argument("-j", "--jobs", type=_jobs, help="steps run at once (default: CPU count)")
    runp.add_argument("--no-cache", action="store_true", help="rebuild every step")
    runp.add_argument("--pull", action="store_true", help="always pull FROM images")
    runp.add_argument("--push", action="store_true", help="push every target's tags")
    runp.add_argument(
        "--keep-going", action="store_true", help="build all that does not need a failed step"
    )
    runp.add_argument(
        "--progress", choices=("auto", "tty", "plain", "json"), default="auto", help="output style"
    )
    runp.add_argument("--set", action="append", metavar="TARGET.KEY=VALUE", help="override")
    runp.add_argument("--network", choices=("host", "none"), default="host")
    runp.add_argument("--cache-from", metavar="REF", help="read the remote cache here")
    runp.add_argument("--cache-to", metavar="REF", help="export the remote cache here")
    runp.add_argument(
        "--cache-required", action="store_true", help="fail when the remote cache fails"
    )
    runp.add_argument(
        "--offline", action="store_true", help="use only the local store and cache (no network)"
    )
    runp.add_argument(
        "--executor", metavar="KIND", help="local (default) or dask: the workers of --scheduler"
    )
    runp.add_argument("--scheduler", metavar="ADDRESS", help="--executor dask: tcp://HOST:8786")
    _allow(runp)
    _isolation(runp)
    _compression(runp)
    _trace(runp)
    runp.set_defaults(build=True)

    warmp = commands.add_parser(
        "warm", help="fill the local cache from the remote one (--build: build and export the rest)"
    )
    warmp.add_argument("targets", nargs="*", metavar="TARGET|GROUP")
    warmp.add_argument("-f", "--file", default="Buildfile.yaml", help="default ./Buildfile.yaml")
    warmp.add_argument("--set", action="append", metavar="TARGET.KEY=VALUE", help="override")
    warmp.add_argument(
        "--build", action="store_true", help="also build what is missing and export it"
    )
    warmp.add_argument("--cache-from", metavar="REF", help="read the remote cache here")
    warmp.add_argument("--cache-to", metavar="REF", help="--build: export steps here")
    warmp.add_argument(
        "--cache-required",
        action="store_true",
        help="--build: fail when the export fails, instead of a warning",
    )
    _allow(warmp)
    _isolation(warmp)
    warmp.add_argument("-j", "--jobs", type=_jobs, help="steps run at once (default: CPU count)")
    warmp.add_argument(
        "--progress", choices=("auto", "tty", "plain", "json"), default="auto", help="output style"
    )
    warmp.set_defaults(
        handler=cmd_run,
        no_cache=False,
        keep_going=True,
        push=False,
        pull=False,
        network="host",
    )
    runp.set_defaults(handler=cmd_run)

    planp = commands.add_parser("plan", help="each step with its key, state and why")
    graphp = commands.add_parser("graph", help="the step graph as text, dot or json")
    graphp.add_argument("--format", choices=("text", "dot", "json"), default="text")
    for sub in (planp, graphp):
        sub.add_argument("targets", nargs="*", metavar="TARGET|GROUP")
        sub.add_argument("-f", "--file", default="Buildfile.yaml", help="default ./Buildfile.yaml")
        sub.add_argument("--set", action="append", metavar="TARGET.KEY=VALUE", help="override")
        sub.add_argument("--cache-from", metavar="REF", help="also look in this remote cache")
        sub.set_defaults(handler=cmd_plan)
    planp.add_argument("--push", action="store_true", help="plan as `run --push` would")

    affp = commands.add_parser(
        "affected", help="targets whose inputs changed since a git ref, and what builds on them"
    )
    affp.add_argument("targets", nargs="*", metavar="TARGET|GROUP", help="only within these")
    affp.add_argument("--since", required=True, metavar="GIT_REF", help="e.g. origin/main")
    affp.add_argument("--format", choices=("text", "json"), default="text")
    affp.add_argument("-f", "--file", default="Buildfile.yaml", help="default ./Buildfile.yaml")
    affp.add_argument("--set", action="append", metavar="TARGET.KEY=VALUE", help="override")
    affp.set_defaults(handler=cmd_affected)

    cachep = commands.add_parser("cache", help="the local cache: ls, du, prune")
    cache_commands = cachep.add_subparsers(dest="cache_command", required=True)
    cache_ls = cache_commands.add_parser("ls", help="step entries, oldest use first")
    cache_du = cache_commands.add_parser("du", help="disk use")
    cache_prune = cache_commands.add_parser("prune", help="forget old steps, delete what is unused")
    cache_prune.add_argument("--keep-storage", metavar="SIZE", help="e.g. 10GB: drop oldest first")
    cache_prune.add_argument("--older-than", metavar="DURATION", help="e.g. 7d, 36h")
    for sub in (cache_ls, cache_du, cache_prune):
        sub.set_defaults(handler=cmd_cache)

    for sub in (imp, exp, rm, ls, images, pull, push, bld, runp, planp, graphp, warmp):
        _common(sub)
    for sub in (cache_ls, cache_du, cache_prune):
        _common(sub)
    for sub in (runp, planp, graphp, warmp):
        sub.set_defaults(cache_dir=None)  # the Buildfile's cache.dir unless --cache-dir
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = _handle_sigterm()
    try:
        if argv[:1] == ["executor"]:  # Kaniko's flags, read by its own parser
            return cmd_executor(argv[1:])
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except BuildgraphError as err:
        _say(f"buildgraph: error: {shorten(str(err), MAX_ERROR)}")  # a value may be megabytes
        return err.exit_code
    except Terminated:
        _say("buildgraph: terminated")
        return Terminated.exit_code
    except KeyboardInterrupt:
        _say("buildgraph: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except OSError as err:  # a full disk under the cache dir or an output (a step's: scheduler)
        refused = storage_error(err)
        if refused is None:
            raise
        _say(f"buildgraph: error: {refused}")
        return refused.exit_code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _handle_sigterm():
    """Turn SIGTERM into `Terminated` in the main thread (the only one Python runs handlers
    in); returns the handler it replaced. A second SIGTERM is ignored: cleanup is short, and
    raising again inside a `finally` could cut it short. SIGKILL remains for the impatient."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)


def console() -> None:
    """The `buildgraph` command: `main`, then exit at once. Every file, lock, thread and child
    is closed by then; what interpreter shutdown would add is tearing down every object one by
    one, which took 0.1 s after a cold build."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)
