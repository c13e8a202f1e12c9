"""Command line: argparse, the subcommand table, errors to exit codes. No build logic here."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from buildgraph import __version__
from buildgraph.errors import BuildgraphError, InputError, Terminated, shorten, storage_error

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


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _store(args: argparse.Namespace):
    from buildgraph.cache.local import LocalStore

    return LocalStore(Path(args.cache_dir))


def _client(args: argparse.Namespace):
    from buildgraph.registry.auth import CredentialStore
    from buildgraph.registry.client import RegistryClient

    return RegistryClient(
        credentials=CredentialStore.from_environment(),
        insecure=tuple(args.insecure_registry or ()),
        ca_bundle=args.ca_bundle,
        total_timeout=args.registry_timeout,
    )


def _platform(args: argparse.Namespace):
    from buildgraph.image.oci import default_platform, parse_platform

    return parse_platform(args.platform) if args.platform else default_platform()


# -- subcommands ------------------------------------------------------------------------------
def cmd_image_import(args: argparse.Namespace) -> int:
    from buildgraph.commands.image import import_rootfs
    from buildgraph.registry.reference import parse_reference

    name = parse_reference(args.tag)
    image = import_rootfs(
        _store(args),
        Path(args.source),
        name,
        platform=_platform(args),
        compression=args.compression,
    )
    print(f"{image.name} {image.descriptor.digest}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    store = _store(args)
    images = store.images() if store.index_path.exists() else []
    if args.quiet:
        for image in images:
            print(image.name)
        return 0
    rows = [("NAME", "DIGEST", "SIZE")]
    for image in images:
        manifest = store.read_manifest(image.descriptor)
        size = manifest.config.size + sum(layer.size for layer in manifest.layers)
        rows.append((image.name, image.descriptor.digest[:19], _human(size)))
    width = max(len(row[0]) for row in rows)
    for name, digest, size in rows:
        print(f"{name:<{width}}  {digest:<19}  {size:>9}")
    return 0


def cmd_image_export(args: argparse.Namespace) -> int:
    from buildgraph.commands.image import export_image

    for spec in args.output:
        _say(f"exported {args.name} to {export_image(_store(args), args.name, spec)}")
    return 0


def cmd_image_rm(args: argparse.Namespace) -> int:
    from buildgraph.commands.image import find_image

    store = _store(args)
    for name in args.names:
        store.untag(find_image(store, name).name)
        print(f"untagged {name}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from buildgraph.commands.image import pull_image

    image = pull_image(
        _client(args), _store(args), args.ref, platform=_platform(args), progress=_progress(args)
    )
    print(f"{image.name} {image.descriptor.digest}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from buildgraph.commands.image import push_image

    ref, digest = push_image(
        _client(args),
        _store(args),
        args.name,
        args.ref,
        progress=_progress(args),
        manifest_format=args.format,
    )
    print(f"{ref} {digest}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from buildgraph.commands.build import BuildRequest, build, parse_secret
    from buildgraph.commands.image import build_timestamp

    context = Path(args.context)
    dockerfile = Path(args.file) if args.file else context / "Dockerfile"
    request = BuildRequest(
        context=context,
        dockerfile=dockerfile,
        target=args.target,
        build_args=_build_args(args.build_arg or ()),
        tags=tuple(args.tag or ()),
        outputs=tuple(args.output or ()),
        platform=_platform(args),
        no_cache=args.no_cache,
        pull=args.pull,
        push=args.push,
        jobs=args.jobs or (os.cpu_count() or 2),
        network=args.network,
        secrets=dict(parse_secret(item) for item in args.secret or ()),
        labels=_labels(args.label or ()),
        cache_from=args.cache_from or args.cache_repo,
        cache_to=args.cache_to or args.cache_repo,
        allow=frozenset(args.allow or ()),
        isolation=args.isolation,
    )
    _, epoch = build_timestamp()
    sink = _renderer(args)
    try:
        result = build(
            request, store=_store(args), client=lambda: _client(args), sink=sink, epoch=epoch
        )
    finally:  # a live display gives the terminal back (its cursor) whatever happened
        if hasattr(sink, "close"):
            sink.close()
    for warning in result.plan.warnings:
        _say(f"buildgraph: warning: {warning}")
    print(
        result.image.digest if not result.tags else f"{result.image.digest} {' '.join(result.tags)}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from buildgraph.worker.isolation import describe

    print(f"buildgraph {__version__}")
    print(describe())
    return 0


def cmd_executor(argv: Sequence[str]) -> int:
    """Kaniko's command line (`/kaniko/executor` in the executor image runs this)."""
    from buildgraph.commands.build import build
    from buildgraph.commands.executor import digest_lines, parse_executor_args
    from buildgraph.commands.image import build_timestamp
    from buildgraph.registry.auth import CredentialStore
    from buildgraph.registry.client import RegistryClient

    _, epoch = build_timestamp()
    job = parse_executor_args(argv, jobs=os.cpu_count() or 2, env=os.environ, epoch=epoch)
    for notice in job.notices:
        _say(f"buildgraph: notice: {notice}")
    args = argparse.Namespace(
        progress=job.progress, quiet=False, platform=job.platform, cache_dir=str(job.cache_dir)
    )
    isolation = os.environ.get("BUILDGRAPH_ISOLATION", "auto")
    request = replace(job.request, platform=_platform(args), isolation=isolation)

    def client() -> RegistryClient:
        return RegistryClient(
            credentials=CredentialStore.from_environment(), insecure=job.insecure_hosts
        )

    sink = _renderer(args)
    try:
        result = build(request, store=_store(args), client=client, sink=sink, epoch=job.epoch)
    finally:
        if hasattr(sink, "close"):
            sink.close()
    for warning in result.plan.warnings:
        _say(f"buildgraph: warning: {warning}")
    # Kaniko's files name what the registry serves (what a signature or a deploy refers to).
    digest = next(iter(result.pushed.values()), result.image.digest)
    if job.digest_file:
        job.digest_file.write_text(digest)
    if job.image_name_with_digest_file:
        job.image_name_with_digest_file.write_text(digest_lines(request.tags, digest))
    print(f"{digest} {' '.join(request.tags)}".rstrip())
    return 0


def _project(args: argparse.Namespace):
    from buildgraph.frontend.buildfile import load_project

    return load_project(Path(args.file), env=os.environ, overrides=tuple(args.set or ()))


def _project_store(args: argparse.Namespace, project):
    from buildgraph.cache.local import LocalStore

    return LocalStore(Path(args.cache_dir) if args.cache_dir else project.cache.dir)


def _offline_client():
    raise InputError("--offline: this needs a registry (an image missing from the local store)")


def cmd_run(args: argparse.Namespace) -> int:
    from buildgraph.commands import tasks as task_phase
    from buildgraph.commands.image import build_timestamp
    from buildgraph.commands.run import raise_for_failures, run_project
    from buildgraph.ui.summary import summary_table

    project = _project(args)
    tasks = task_phase.wanted_tasks(project, args.targets)  # tasks (issue 15)
    project, names = task_phase.with_task_images(project, args.targets, tasks)  # tasks
    if not args.insecure_registry:
        args.insecure_registry = list(project.insecure_registries)
    if args.command == "warm":
        _warm(args, project)
        if tasks:  # tasks (issue 15): their results from the remote cache too
            from buildgraph.commands.tasks_plan import warm_project_tasks

            store, client = _project_store(args, project), lambda: _client(args)
            _say(warm_project_tasks(project, names, tasks, store=store, client=client,
                                    cache_from=args.cache_from))  # fmt: skip
        if not args.build:
            return 0
    offline = getattr(args, "offline", False)
    if offline:
        args.cache_from = args.cache_to = ""  # no remote cache either
    _, epoch = build_timestamp()
    sink = _renderer(args)
    try:
        result = run_project(
            project,
            names,
            store=_project_store(args, project),
            client=_offline_client if offline else lambda: _client(args),
            sink=sink,
            jobs=args.jobs or (os.cpu_count() or 2),
            epoch=epoch,
            no_cache=args.no_cache,
            keep_going=args.keep_going,
            push_all=args.push,
            always_pull=args.pull,
            network=args.network,
            cache_from=args.cache_from,
            cache_to=args.cache_to,
            cache_required=args.cache_required,
            export_cached=args.command == "warm",  # the nightly job leaves the cache complete
            allow=frozenset(args.allow or ()),
            isolation=args.isolation,
            warn=lambda text: _say(f"buildgraph: warning: {text}"),
        )
        outcomes = task_phase.tasks_after_build(  # tasks (issue 15): the phase after the images
            project,
            tasks if args.command == "run" else {},
            result,
            store=_project_store(args, project),
            client=_offline_client if offline else lambda: _client(args),
            sink=sink,
            jobs=args.jobs or (os.cpu_count() or 2),
            isolation=args.isolation,
            no_cache=args.no_cache,
            cache_from=args.cache_from,
            cache_to=args.cache_to,
            warn=lambda text: _say(f"buildgraph: warning: {text}"),
        )
    finally:
        if hasattr(sink, "close"):
            sink.close()
    for warning in result.warnings:
        _say(f"buildgraph: warning: {warning}")
    table = summary_table(result) + (f"\n{task_phase.task_summary(outcomes)}" if outcomes else "")
    if args.progress == "json":  # stdout is for the events; the table goes to stderr
        _say(table)
    else:
        print(table)
    raise_for_failures(result)
    task_phase.raise_for_task_failures(outcomes)  # tasks (issue 15)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from buildgraph.commands import tasks as task_phase
    from buildgraph.commands.plan import plan_project, render_graph, render_plan
    from buildgraph.commands.tasks_plan import graph_with_tasks, plan_tasks, render_task_plan

    project = _project(args)
    tasks = task_phase.wanted_tasks(project, args.targets)  # tasks (issue 15)
    project, names = task_phase.with_task_images(project, args.targets, tasks)  # tasks
    if not args.insecure_registry:
        args.insecure_registry = list(project.insecure_registries)
    targets, graph = plan_project(
        project,
        names,
        store=_project_store(args, project),
        client=lambda: _client(args),
        cache_from=args.cache_from,
        warn=lambda text: _say(f"buildgraph: warning: {text}"),
    )
    if args.command == "graph":
        image_keys = {target.name: target.steps[-1].key for target in targets if target.steps}
        rendered = render_graph(graph, targets, args.format)
        print(graph_with_tasks(rendered, args.format, tasks, image_keys))  # tasks (issue 15)
    else:
        print(render_plan(targets, graph))
        if tasks:  # tasks (issue 15): each with its action and why
            warn = lambda text: _say(f"buildgraph: warning: {text}")  # noqa: E731
            remote = task_phase.remote_tasks(
                project, lambda: _client(args), cache_from=args.cache_from, cache_to="", warn=warn
            )
            image_keys = {target.name: target.steps[-1].key for target in targets if target.steps}
            store = _project_store(args, project)
            planned = plan_tasks(tasks, image_keys, store=store, remote=remote)
            print(render_task_plan(planned))
    return 0


def _warm(args: argparse.Namespace, project) -> None:
    from buildgraph.commands.warm import warm_project
    from buildgraph.ui.warm import total_line

    renderer = _warm_renderer(args)
    try:
        result = warm_project(
            project,
            args.targets,
            store=_project_store(args, project),
            client=lambda: _client(args),
            cache_from=args.cache_from,
            jobs=args.jobs or 8,
            progress=renderer.emit if renderer else lambda _: None,
            warn=lambda text: _say(f"buildgraph: warning: {text}"),
        )
    finally:
        if renderer:
            renderer.close()
    if args.progress == "json":  # stdout is for the events
        _say(total_line(result))
    else:
        print(total_line(result))


def _warm_renderer(args: argparse.Namespace):
    from buildgraph.ui.warm import JsonWarmRenderer, PlainWarmRenderer, TtyWarmRenderer

    if args.progress == "json":
        return JsonWarmRenderer()
    if args.quiet:
        return None
    if args.progress == "tty" or (args.progress == "auto" and sys.stderr.isatty()):
        return TtyWarmRenderer()
    return PlainWarmRenderer()


def cmd_affected(args: argparse.Namespace) -> int:
    from buildgraph.commands.affected import affected_targets, render_affected
    from buildgraph.commands.affected_tasks import affected_tasks

    project = _project(args)
    names = affected_targets(project, args.since, args.targets)
    names = (*names, *affected_tasks(project, args.since, names, args.targets))  # tasks (issue 15)
    sys.stdout.write(render_affected(names, args.format))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from buildgraph.cache import prune as gc
    from buildgraph.cache.steps import StepIndex

    store = _store(args)
    if args.cache_command == "du":
        found = gc.usage(store)
        print(f"blobs      {found.blobs:>7}  {_human(found.blob_bytes):>9}")
        print(f"snapshots  {found.snapshots:>7}  {_human(found.snapshot_bytes):>9}")
        print(f"steps      {found.steps:>7}")
        print(
            f"scratch    {found.scratch:>7}  {_human(found.scratch_bytes):>9}"
            f"  ({found.orphaned} orphaned by killed builds: the next build or prune reclaims them)"
        )
    elif args.cache_command == "ls":
        index = StepIndex(store.root / "steps")
        for path in sorted(
            (store.root / "steps").glob("*/*.json"), key=lambda p: p.stat().st_mtime
        ):
            record = index.get(path.stem, touch=False)
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
            last = record.history[-1].created_by[:70] if record and record.history else ""
            print(
                f"{path.stem[:12]}  {used}  {len(record.layers) if record else 0:>3} layers  {last}"
            )
    else:
        result = gc.prune(
            store,
            older_than=gc.parse_duration(args.older_than) if args.older_than else None,
            keep_storage=gc.parse_size(args.keep_storage) if args.keep_storage else None,
        )
        print(
            f"removed {result.steps_removed} steps, {result.blobs_removed} blobs, "
            f"{result.snapshots_removed} snapshots, {result.orphans_removed} orphaned step dirs, "
            f"{result.tasks_removed} task results:"
            f" {_human(result.bytes_freed)} freed"
        )
    return 0


def _build_args(items: Sequence[str]) -> dict[str, str]:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise InputError(f"invalid --build-arg {item!r}: expected KEY=VALUE")
        if not sep:  # docker: `--build-arg KEY` takes the value from the environment
            if key not in os.environ:
                continue
            value = os.environ[key]
        values[key] = value
    return values


def _labels(items: Sequence[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise InputError(f"invalid --label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def _renderer(args: argparse.Namespace):
    from buildgraph.ui.jsonl import JsonRenderer
    from buildgraph.ui.plain import PlainRenderer

    if args.progress == "json":
        return JsonRenderer()
    if args.quiet and args.progress in ("auto", "plain"):  # -q: only results, and errors
        return PlainRenderer(show_output=False, show_steps=False)
    if args.progress == "tty" or (args.progress == "auto" and sys.stderr.isatty()):
        from buildgraph.ui.tty import TtyRenderer

        return TtyRenderer()
    return PlainRenderer(show_output=not args.quiet)


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    return (lambda _: None) if args.quiet else _say


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.1f}{unit}" if unit != "B" else f"{size}B"
        value /= 1000
    return f"{size}B"


# -- parser ----------------------------------------------------------------------------------
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
    _allow(runp)
    _isolation(runp)
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
