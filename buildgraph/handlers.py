"""What each subcommand does with its parsed arguments: make the real objects (store, registry
client, renderer), call commands/, print the result. cli.py parses and picks exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from buildgraph import __version__
from buildgraph.errors import InputError


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
        compression=args.compression,
    )
    print(f"{ref} {digest}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from buildgraph.commands.build import build, parse_secret
    from buildgraph.commands.image import build_timestamp
    from buildgraph.commands.request import BuildRequest

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
        compression=args.compression,
    )
    _, epoch = build_timestamp()
    sink, phases = _traced(args, _renderer(args))
    try:
        result = build(
            request,
            store=_store(args),
            client=lambda: _client(args),
            sink=sink,
            epoch=epoch,
            phases=phases,
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


def _traced(args: argparse.Namespace, renderer):
    """The renderer, teed into a trace recorder with --trace FILE; and the worker's phase sink."""
    if not getattr(args, "trace", None):
        return renderer, None
    from buildgraph.ui.trace import TeeSink, open_trace

    recorder = open_trace(Path(args.trace), f"buildgraph {args.command}")
    return TeeSink(renderer, recorder), recorder.phase


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
