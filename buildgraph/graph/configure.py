"""Metadata instructions (ENV, LABEL, USER, CMD, ...): the runtime config each leaves. Pure."""

from __future__ import annotations

import posixpath
import signal
from dataclasses import replace

from buildgraph.errors import InputError, Location, shorten
from buildgraph.frontend import instructions as ins
from buildgraph.image.config import Healthcheck, RuntimeConfig

DEFAULT_SHELL = ("/bin/sh", "-c")


def configured(
    config: RuntimeConfig, instruction: ins.Instruction, *, cmd_set: bool
) -> RuntimeConfig:
    """The runtime config after a metadata instruction (ENV, LABEL, CMD, ...). `cmd_set`: a CMD
    came earlier in this stage (a new ENTRYPOINT then keeps it; it clears an inherited one)."""
    match instruction:
        case ins.Env():
            for key, value in instruction.pairs:
                config = config.with_env(key, value)
            return config
        case ins.Label():
            labels = dict(config.labels) | dict(instruction.pairs)
            return replace(config, labels=tuple(sorted(labels.items())))
        case ins.User():
            return replace(config, user=instruction.user)
        case ins.Expose():
            ports = {port for text in instruction.ports for port in _ports(text, instruction)}
            return replace(config, exposed_ports=tuple(sorted(set(config.exposed_ports) | ports)))
        case ins.Volume():
            volumes = set(config.volumes) | set(instruction.paths)
            return replace(config, volumes=tuple(sorted(volumes)))
        case ins.Cmd():
            return replace(config, cmd=_command(config, instruction))
        case ins.Entrypoint():
            cmd = config.cmd if cmd_set else None
            return replace(config, entrypoint=_command(config, instruction), cmd=cmd)
        case ins.Shell():
            return replace(config, shell=instruction.command)
        case ins.StopSignal():
            check_signal(instruction.signal, instruction.where)
            return replace(config, stop_signal=instruction.signal)
        case ins.Healthcheck():
            check = Healthcheck(
                instruction.test,
                instruction.interval,
                instruction.timeout,
                instruction.start_period,
                instruction.start_interval,
                instruction.retries,
            )
            return replace(config, healthcheck=check)
        case ins.Onbuild():
            return replace(config, on_build=(*config.on_build, instruction.expression))
        case ins.Maintainer():
            return config  # the author is not in the runtime config; the caller keeps it
    raise InputError(f"{type(instruction).__name__.upper()} cannot be used here", instruction.where)


def _command(config: RuntimeConfig, instruction: ins.Cmd | ins.Entrypoint) -> tuple[str, ...]:
    if instruction.shell:
        return (*(config.shell or DEFAULT_SHELL), instruction.command[0])
    return instruction.command


def workdir(current: str, written: str) -> str:
    """The config's WorkingDir after `WORKDIR written`, as BuildKit's NormalizeWorkdir: an
    absolute path is kept as written (a trailing "/" too), a relative one is joined and cleaned."""
    if written.startswith("/"):
        return written
    return posixpath.normpath(posixpath.join(current or "/", written))


def _ports(text: str, instruction: ins.Instruction) -> list[str]:
    """EXPOSE 80, 53/udp, 8000-8002/tcp -> one "port/proto" each, as Docker records them."""
    number, _, protocol = text.partition("/")
    protocol = (protocol or "tcp").lower()
    first, _, last = number.partition("-")
    shown = shorten(text)
    if (
        not first.isdigit()
        or (last and not last.isdigit())
        or protocol not in ("tcp", "udp", "sctp")
    ):
        raise InputError(f"invalid port {shown!r} in EXPOSE", instruction.where)
    if max(len(first), len(last)) > 10:  # no port; and int() refuses 4300 digits
        raise InputError(f"invalid port range {shown!r} in EXPOSE", instruction.where)
    high = int(last) if last else int(first)
    if high < int(first) or high > 65535:
        raise InputError(f"invalid port range {shown!r} in EXPOSE", instruction.where)
    return [f"{port}/{protocol}" for port in range(int(first), high + 1)]


# moby's signal.SignalMap on Linux: what STOPSIGNAL takes by name (with or without SIG)
SIGNAL_NAMES = frozenset(
    {name.removeprefix("SIG") for name in signal.Signals.__members__}
    | {"CLD", "IOT", "POLL", "STKFLT", "UNUSED"}
    | {f"RTMIN+{n}" for n in range(1, 16)}
    | {f"RTMAX-{n}" for n in range(1, 15)}
)


def check_signal(text: str, where: Location | None) -> None:
    """STOPSIGNAL takes a signal number or name, as moby's signal.ParseSignal does."""
    if text.isdecimal() and len(text) <= 10:
        if int(text) > 0:
            return
    elif text.upper().removeprefix("SIG") in SIGNAL_NAMES:
        return
    raise InputError(f"invalid signal: {shorten(text)!r}", where)


def created_by(instruction: ins.Instruction) -> str:
    return instruction.original.strip()
