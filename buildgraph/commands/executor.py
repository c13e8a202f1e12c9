"""`buildgraph executor`: Kaniko's command line, so that a Kaniko job migrates by swapping its
image and binary. Kaniko's flags are read here and turned into one `BuildRequest`
(commands/request.py, pure); the build itself is `buildgraph build`'s."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildgraph.commands.request import BuildRequest
from buildgraph.errors import InputError
from buildgraph.registry.reference import parse_reference

DEFAULT_CACHE_DIR = "/cache"  # Kaniko's --cache-dir default
# Kaniko flags that change nothing here, each with the reason a user may want to know.
NO_EFFECT = {
    "--cleanup": "buildgraph never changes the container it runs in",
    "--single-snapshot": "layers stay one per step: the step cache reuses them",
    "--snapshot-mode": "buildgraph records each step's changes itself",
    "--use-new-run": "RUN always runs in buildgraph's own sandbox",
    "--skip-unused-stages": "only the stages the target needs are ever built",
    "--cache-copy-layers": "every step is cached",
    "--cache-run-layers": "every step is cached",
    "--compressed-caching": "the local store keeps layers uncompressed",
    "--force": "buildgraph runs in any container",
    "--verbosity": "use --progress plain|json",
    "--log-format": "use --progress plain|json",
    "--log-timestamp": "progress lines carry their time",
    "--push-retry": "pushes retry within --registry-timeout",
    "--cache-ttl": "use `buildgraph cache prune --older-than`",
    "--ignore-var-run": "buildgraph never snapshots the container it runs in",
}
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True, slots=True)
class ExecutorJob:
    """A Kaniko invocation, translated."""

    request: BuildRequest
    cache_dir: Path
    insecure_hosts: tuple[str, ...]  # registries reached without TLS verification
    digest_file: Path | None
    image_name_with_digest_file: Path | None
    epoch: int | None  # --reproducible: every time in the image is the epoch (Kaniko: none)
    platform: str | None  # --custom-platform
    progress: str
    notices: tuple[str, ...]  # accepted flags that change nothing, said once each


class _KanikoParser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise InputError(f"executor: {message}")


def _boolean(text: str) -> bool:
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}") from None


def _parser() -> _KanikoParser:
    parser = _KanikoParser(prog="buildgraph executor", add_help=False, allow_abbrev=False)
    add = parser.add_argument
    flag = {"nargs": "?", "const": True, "default": False, "type": _boolean}
    add("-c", "--context", default=".", help="dir:///path or a path (Kaniko's default: cwd)")
    add("-f", "--dockerfile", default="Dockerfile")
    add("-d", "--destination", action="append", default=[])
    add("--build-arg", action="append", default=[])
    add("--target")
    add("--label", action="append", default=[])
    add("--cache", **flag)
    add("--cache-repo")
    add("--cache-dir", default=DEFAULT_CACHE_DIR)
    add("--no-push", **flag)
    add("--tar-path")
    add("--digest-file")
    add("--image-name-with-digest-file")
    add("--insecure", **flag)
    add("--skip-tls-verify", **flag)
    add("--insecure-registry", action="append", default=[])
    add("--skip-tls-verify-registry", action="append", default=[])
    add("--reproducible", **flag)
    add("--custom-platform")
    add("--progress", choices=("auto", "tty", "plain", "json"), default="plain")
    for name in NO_EFFECT:
        add(name, nargs="?", const="", default=None)
    return parser


def parse_executor_args(
    argv: Sequence[str], *, jobs: int, env: Mapping[str, str], epoch: int | None
) -> ExecutorJob:
    """Kaniko's argv -> the build to run. Unknown flags are an error naming the flag. `env`
    gives `--build-arg KEY` its value (as docker does); `epoch` is SOURCE_DATE_EPOCH's."""
    parser = _parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        flag = unknown[0].split("=", 1)[0]
        what = "Kaniko flag" if flag.startswith("-") else "argument"
        raise InputError(f"executor: unknown {what} {flag!r} (see README, 'Migrating from Kaniko')")
    context = _context(args.context)
    dockerfile = _dockerfile(args.dockerfile, context)
    destinations = tuple(args.destination)
    if not destinations and not args.no_push:
        raise InputError("executor: give --destination, or --no-push to build without pushing")
    for destination in destinations:
        parse_reference(destination)  # a bad reference fails before anything is built
    cache_repo = None
    if args.cache:
        cache_repo = args.cache_repo or (
            f"{parse_reference(destinations[0]).name}/cache" if destinations else None
        )
        if cache_repo is None:
            raise InputError("executor: --cache needs --cache-repo or a --destination")
    insecure = [*args.insecure_registry, *args.skip_tls_verify_registry]
    if args.insecure or args.skip_tls_verify:
        insecure += [parse_reference(ref).registry for ref in destinations]
        if cache_repo:
            insecure.append(parse_reference(cache_repo).registry)
    request = BuildRequest(
        context=context,
        dockerfile=dockerfile,
        target=args.target,
        build_args=_build_args(args.build_arg, env),
        labels=dict(_pair(item, "--label") for item in args.label),
        tags=destinations,
        outputs=(f"type=docker,dest={args.tar_path}",) if args.tar_path else (),
        push=bool(destinations) and not args.no_push,
        jobs=jobs,
        cache_from=cache_repo,
        cache_to=cache_repo,
    )
    notices = tuple(
        f"{name} has no effect here: {why}"
        for name, why in NO_EFFECT.items()
        if getattr(args, name.lstrip("-").replace("-", "_")) is not None
    )
    return ExecutorJob(
        request=request,
        cache_dir=Path(args.cache_dir),
        insecure_hosts=tuple(dict.fromkeys(insecure)),
        digest_file=Path(args.digest_file) if args.digest_file else None,
        image_name_with_digest_file=(
            Path(args.image_name_with_digest_file) if args.image_name_with_digest_file else None
        ),
        epoch=0 if args.reproducible else epoch,
        platform=args.custom_platform,
        progress=args.progress,
        notices=notices,
    )


def digest_lines(destinations: Sequence[str], digest: str) -> str:
    """--image-name-with-digest-file: one `REPOSITORY@DIGEST` per destination, as Kaniko."""
    return "".join(f"{parse_reference(ref).name}@{digest}\n" for ref in destinations)


def _context(text: str) -> Path:
    scheme, found, rest = text.partition("://")
    if not found:
        return Path(text)
    if scheme == "dir":
        return Path(rest)
    raise InputError(
        f"executor: --context {text!r}: only a directory (a path or dir://) is supported, "
        f"not {scheme}://"
    )


def _dockerfile(text: str, context: Path) -> Path:
    """Kaniko: the path as given if it exists, else relative to the context."""
    given = Path(text)
    if given.is_absolute() or given.is_file():
        return given
    return context / given


def _build_args(items: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """`KEY=VALUE`, or `KEY` alone taking the environment's value (skipped when unset)."""
    values = {}
    for item in items:
        key, found, value = item.partition("=")
        if not key:
            raise InputError(f"executor: --build-arg {item!r}: expected KEY=VALUE")
        if found or key in env:
            values[key] = value if found else env[key]
    return values


def _pair(text: str, flag: str) -> tuple[str, str]:
    key, found, value = text.partition("=")
    if not key:
        raise InputError(f"executor: {flag} {text!r}: expected KEY=VALUE")
    return key, value if found else ""
