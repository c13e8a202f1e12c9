"""Handlers of the subcommands that read a Buildfile: run, warm, plan, graph, affected."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from buildgraph.errors import InputError
from buildgraph.handlers import _client, _renderer, _say, _traced


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
    project, names = task_phase.with_task_images(project, args.targets, tasks)
    if not args.insecure_registry:
        args.insecure_registry = list(project.insecure_registries)
    if args.command == "warm":
        _warm(args, project)
        if tasks:
            _warm_tasks(args, project, names, tasks)
        if not args.build:
            return 0
    offline = getattr(args, "offline", False)
    if offline:
        args.cache_from = args.cache_to = ""  # no remote cache either
    _, epoch = build_timestamp()
    sink, phases = _traced(args, _renderer(args))
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
            compression=getattr(args, "compression", "gzip"),  # `warm` pushes no image
            phases=phases,
            cluster=_cluster(args, project),
        )
        # tasks (issue 15): the phase after the images they run in
        outcomes = _run_tasks(args, project, tasks if args.command == "run" else {}, result, sink)
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
    task_phase.raise_for_task_failures(outcomes)
    return 0


def _run_tasks(args: argparse.Namespace, project, tasks, result, sink):
    from buildgraph.commands import tasks as task_phase

    offline = getattr(args, "offline", False)
    return task_phase.tasks_after_build(
        project,
        tasks,
        result,
        store=_project_store(args, project),
        client=_offline_client if offline else lambda: _client(args),
        sink=sink,
        jobs=args.jobs or (os.cpu_count() or 2),
        isolation=args.isolation,
        no_cache=args.no_cache,
        keep_going=args.keep_going,
        cache_from=args.cache_from,
        cache_to=args.cache_to,
        warn=lambda text: _say(f"buildgraph: warning: {text}"),
    )


def _warm_tasks(args: argparse.Namespace, project, names, tasks) -> None:
    """tasks (issue 15): their results from the remote cache too."""
    from buildgraph.commands.tasks_plan import warm_project_tasks

    store, client = _project_store(args, project), lambda: _client(args)
    _say(
        warm_project_tasks(
            project, names, tasks, store=store, client=client, cache_from=args.cache_from
        )
    )


def _cluster(args: argparse.Namespace, project):
    """--executor/--scheduler over the Buildfile's `executor:`; None for the local executor."""
    from buildgraph.commands.cluster import ClusterOptions
    from buildgraph.frontend.buildfile import check_executor_kind

    kind = getattr(args, "executor", None) or project.executor.kind
    scheduler = getattr(args, "scheduler", None) or project.executor.scheduler
    if check_executor_kind(kind) == "local":
        return None
    if not scheduler:
        raise InputError(
            "--executor dask needs --scheduler tcp://HOST:8786 (or executor.scheduler)"
        )
    return ClusterOptions(
        scheduler,
        tuple(args.insecure_registry or ()),
        args.ca_bundle,
        args.registry_timeout,
    )


def cmd_plan(args: argparse.Namespace) -> int:
    from buildgraph.commands import tasks as task_phase
    from buildgraph.commands.plan import plan_project, render_graph, render_plan
    from buildgraph.commands.tasks_plan import graph_with_tasks

    project = _project(args)
    tasks = task_phase.wanted_tasks(project, args.targets)  # tasks (issue 15)
    project, names = task_phase.with_task_images(project, args.targets, tasks)
    if not args.insecure_registry:
        args.insecure_registry = list(project.insecure_registries)
    targets, graph = plan_project(
        project,
        names,
        store=_project_store(args, project),
        client=lambda: _client(args),
        cache_from=args.cache_from,
        push_all=getattr(args, "push", False),  # `graph` has no --push
        warn=lambda text: _say(f"buildgraph: warning: {text}"),
    )
    image_keys = {target.name: target.steps[-1].key for target in targets if target.steps}
    if args.command == "graph":
        rendered = render_graph(graph, targets, args.format)
        print(graph_with_tasks(rendered, args.format, tasks, image_keys))
    else:
        print(render_plan(targets, graph))
        if tasks:
            print(_task_plan(args, project, tasks, image_keys))
    return 0


def _task_plan(args: argparse.Namespace, project, tasks, image_keys) -> str:
    """tasks (issue 15): each with its action and why."""
    from buildgraph.commands import tasks as task_phase
    from buildgraph.commands.tasks_plan import plan_tasks, render_task_plan

    remote = task_phase.remote_tasks(
        project,
        lambda: _client(args),
        cache_from=args.cache_from,
        cache_to="",
        warn=lambda text: _say(f"buildgraph: warning: {text}"),
    )
    store = _project_store(args, project)
    return render_task_plan(plan_tasks(tasks, image_keys, store=store, remote=remote))


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
    names = (*names, *affected_tasks(project, args.since, names, args.targets))  # issue 15
    sys.stdout.write(render_affected(names, args.format))
    return 0
