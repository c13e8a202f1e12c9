"""Lower the instructions of one stage to steps: RUN, COPY/ADD, WORKDIR and the metadata ones."""

from __future__ import annotations

import posixpath
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from buildgraph.errors import InputError, Location, shorten
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.dockerfile import Stage
from buildgraph.frontend.flags import parse_chmod
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.frontend.scope import ResolvedInstruction
from buildgraph.graph.configure import DEFAULT_SHELL, configured, created_by, workdir
from buildgraph.graph.steps import ConfigStep, CopySource, CopyStep, RunMount, RunStep
from buildgraph.image.config import RuntimeConfig

if TYPE_CHECKING:  # the lowering hands itself to each stage's walker
    from buildgraph.graph.lower import Lowering

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
URL_PREFIXES = ("http://", "https://", "git@", "git://")
MAX_TITLE = 200  # characters of an instruction shown in progress and messages
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # what graph/urls.py checks a download against


class StageWalker:
    """Turns each resolved instruction of one stage into steps."""

    def __init__(
        self,
        state: Lowering,
        visiting: tuple[int, ...],
        stage: Stage,
        key: str,
        config: RuntimeConfig,
        author: str,
    ) -> None:
        self.state = state
        self.visiting = visiting
        self.stage = stage
        self.key = key
        self.config = config
        self.author = author
        self.cmd_set = False  # a new ENTRYPOINT clears only an inherited CMD

    def title(self, instruction: ins.Instruction) -> str:
        name = self.stage.name or f"stage-{self.stage.index}"
        text = instruction.original
        if len(text) > MAX_TITLE:  # a 1 MiB ENV line is not printed with every event
            text = text[: MAX_TITLE - 3] + "..."
        return f"[{name}] {text}"

    def lower(self, item: ResolvedInstruction) -> None:
        instruction = item.instruction
        match instruction:
            case ins.Run():
                self._run(instruction, item)
            case ins.Copy() | ins.Add():
                self._copy(instruction)
            case ins.Arg():
                pass  # ARG changes what later steps see (their keys), not the image
            case ins.Workdir():
                path = workdir(self.config.working_dir, instruction.path)
                self._config(instruction, replace(self.config, working_dir=path))
                self._mkdir(instruction, path)
            case _:
                config = configured(self.config, instruction, cmd_set=self.cmd_set)
                if isinstance(instruction, ins.Cmd):
                    self.cmd_set = True
                if isinstance(instruction, ins.Maintainer):
                    self.author = instruction.name  # the step of MAINTAINER has it already
                self._config(instruction, config)

    # -- filesystem steps -----------------------------------------------------------------------
    def _run(self, run: ins.Run, item: ResolvedInstruction) -> None:
        env = {**dict(self.state.scope.proxy), **item.visible()}
        env.setdefault("PATH", DEFAULT_PATH)
        step = RunStep(
            parent=self.key,
            argv=self._argv(run),
            env=tuple(sorted(env.items())),
            user=self.config.user,
            workdir=self.config.working_dir or "/",
            network=run.network,
            security=run.security,
            mounts=tuple(self._mount(mount, run.where) for mount in run.mounts),
            context=str(self.state.context),
            title=self.title(run),
            where=run.where,
        )
        self.key = self.state.add(step)

    def _mount(self, mount: ins.Mount, where: Location | None) -> RunMount:
        target = mount.target
        if target and not target.startswith("/"):
            target = posixpath.join(self.config.working_dir or "/", target)
        match mount.type:
            case "cache":
                if not target:
                    raise InputError("RUN --mount=type=cache needs a target", where)
                # from=: a new cache starts as a copy of that tree's `source` (BuildKit keys
                # the cache by id and source tree, so a changed stage gives a fresh copy).
                stage_key = self._mount_tree(mount.from_, where) if mount.from_ else ""
                return RunMount(
                    "cache",
                    target,
                    id=mount.id or target,
                    source=_inside(mount.source) if stage_key else "",
                    stage_key=stage_key,
                    mode=mount.mode,
                    uid=mount.uid,
                    gid=mount.gid,
                )
            case "tmpfs":
                if not target:
                    raise InputError("RUN --mount=type=tmpfs needs a target", where)
                return RunMount("tmpfs", target, size=mount.size)
            case "secret":
                secret_id = mount.id or posixpath.basename(target)
                if not secret_id:
                    raise InputError("RUN --mount=type=secret needs an id or a target", where)
                # BuildKit: env= puts the secret in that variable; without a target, there only.
                file_target = target or ("" if mount.env else f"/run/secrets/{secret_id}")
                return RunMount(
                    "secret",
                    file_target,
                    id=secret_id,
                    required=mount.required,
                    mode=mount.mode,
                    uid=mount.uid,
                    gid=mount.gid,
                    env=mount.env,
                )
            case "bind":
                if not target:
                    raise InputError("RUN --mount=type=bind needs a target", where)
                if mount.from_:  # a path in another stage's (or an image's) tree
                    return RunMount(
                        "bind",
                        target,
                        source=_inside(mount.source),
                        stage_key=self._mount_tree(mount.from_, where),
                        readonly=mount.readonly,
                    )
                found = self.state.facts.context(
                    self.state.context, (mount.source or ".",), self.state.ignore, True, where
                )
                if len(found.selected) != 1:
                    raise InputError(
                        f"RUN --mount=type=bind: source {mount.source!r} must name one path", where
                    )
                return RunMount(
                    "bind",
                    target,
                    source=found.selected[0],
                    digest=found.digest,
                    readonly=mount.readonly,
                )
        raise InputError(f"RUN --mount=type={mount.type} is not supported", where)

    def _argv(self, run: ins.Run) -> tuple[str, ...]:
        if not run.shell:
            return run.command
        shell = self.config.shell or DEFAULT_SHELL
        command = run.command[0]
        if run.heredocs:
            if (
                len(run.heredocs) == 1
                and command.strip().lstrip("<-").strip("'\"") == run.heredocs[0].name
            ):
                return (*shell, run.heredocs[0].content)  # the heredoc is the script
            # Otherwise the shell reads the heredocs itself, as BuildKit arranges it.
            bodies = "".join(f"{doc.content}{doc.name}\n" for doc in run.heredocs)
            return (*shell, f"{command}\n{bodies}")
        return (*shell, command)

    def _copy(self, copy: ins.Copy | ins.Add) -> None:
        add = isinstance(copy, ins.Add)
        if isinstance(copy, ins.Add) and copy.checksum:
            _check_checksum(copy, copy.checksum)
        if copy.chmod:  # checked here, once expanded, so that the error names the line
            try:
                parse_chmod(copy.chmod)
            except InputError as err:
                raise InputError(err.args[0], copy.where) from err
        for part in (copy.chown or "").split(":"):
            if part.isdigit() and (len(part) > 10 or int(part) >= 2**32 - 1):
                shown = shorten(part)
                raise InputError(f"invalid --chown id {shown!r}: at most 4294967294", copy.where)
        urls = [source for source in copy.sources if source.startswith(URL_PREFIXES)]
        if urls:
            if not add:
                raise InputError("COPY cannot take a URL; use ADD", copy.where)
            self._add_url(copy, urls)
            return
        dest = self._dest(copy.dest)
        from_ = copy.from_ if isinstance(copy, ins.Copy) else None
        if from_:
            source = self._stage_source(from_, copy.sources, copy.where)
        elif copy.sources:
            found = self.state.facts.context(
                self.state.context, copy.sources, self.state.ignore, not copy.chmod, copy.where
            )
            source = CopySource("", str(self.state.context), found.selected, found.digest)
        else:
            source = CopySource("", "", (), "")
        step = CopyStep(
            parent=self.key,
            source=source,
            patterns=copy.sources,
            dest=dest,
            inline=tuple((doc.name, doc.content) for doc in copy.heredocs),
            chown=copy.chown or "",
            chmod=copy.chmod or "",
            add=add,
            title=self.title(copy),
            where=copy.where,
        )
        self.key = self.state.add(step)

    def _add_url(self, add: ins.Add, urls: list[str]) -> None:
        if len(add.sources) != 1 or not urls[0].startswith(("http://", "https://")):
            raise InputError(
                "ADD takes one http(s) URL at a time (git sources are not supported yet)", add.where
            )
        try:
            urlsplit(urls[0]).port  # noqa: B018 (it raises for `http://[::1 /x` or a bad port)
        except ValueError as err:
            raise InputError(f"ADD: invalid URL {urls[0]!r}: {err}", add.where) from err
        download = self.state.facts.url(urls[0], add.checksum, add.where)
        dest = self._dest(add.dest)
        source = CopySource("", str(download.directory), (download.name,), download.digest)
        step = CopyStep(
            self.key,
            source,
            add.sources,
            dest,
            chown=add.chown or "",
            chmod=add.chmod or "",
            add=False,
            title=self.title(add),
            where=add.where,
        )
        self.key = self.state.add(step)

    def _dest(self, written: str) -> str:
        """BuildKit's pathRelativeToWorkingDir: a relative destination is under WORKDIR, and
        one that names a directory ("", ".", "x/", "x/.", "..") keeps saying so with a "/"."""
        names_dir = written in ("", ".", "..") or written.endswith(("/", "/.", "/.."))
        joined = posixpath.normpath(posixpath.join(self.config.working_dir or "/", written))
        if joined.startswith("//"):
            joined = "/" + joined.lstrip("/")
        return joined + "/" if names_dir and joined != "/" else joined

    def _stage_source(
        self, reference: str, patterns: tuple[str, ...], where: Location | None
    ) -> CopySource:
        tree = self._tree(reference, "COPY --from", where)
        if isinstance(tree, Path):
            return self._directory_source(tree, patterns, where)
        return CopySource(tree, "", (), "")

    def _mount_tree(self, reference: str, where: Location | None) -> str:
        tree = self._tree(reference, "RUN --mount from", where)
        if isinstance(tree, Path):
            raise InputError(
                f"RUN --mount from={reference}: a directory context cannot be mounted yet", where
            )
        return tree

    def _tree(self, reference: str, flag: str, where: Location | None) -> str | Path:
        """What `from` names (COPY --from, RUN --mount from=): an earlier stage, a Buildfile
        context or an image, as the key of the step that holds its tree; or the directory of
        a context that is one."""
        stage = self.state.dockerfile.stage(reference, before=self.stage.index)
        if stage is None and self.state.dockerfile.stage(reference) is not None:
            raise InputError(f"{flag}={reference}: a stage can only use an earlier stage", where)
        if stage is not None:
            return self.state.lower_stage(stage.index, self.visiting).key
        named = self.state.named_context(reference)
        if named is not None and named.stage is not None:
            return named.stage.key
        if named is not None and named.directory:
            return Path(named.directory)
        image = named.image if named is not None and named.image else reference
        return self.state.images.get(image) or self.state.source(image, where)[0]

    def _directory_source(
        self, directory: Path, patterns: tuple[str, ...], where: Location | None
    ) -> CopySource:
        """A named context that is a directory: like the build context, without .dockerignore."""
        found = self.state.facts.context(directory, patterns, IgnoreMatcher(()), True, where)
        return CopySource("", str(directory), found.selected, found.digest)

    def _mkdir(self, instruction: ins.Instruction, path: str) -> None:
        """WORKDIR makes its dirs owned by the current USER (BuildKit's Mkdir WithUser)."""
        step = CopyStep(
            self.key,
            CopySource("", "", (), ""),
            (),
            posixpath.normpath(path).rstrip("/") + "/",
            chown=self.config.user,
            unknown_owner_is_root=True,
            title=self.title(instruction),
            where=instruction.where,
        )
        self.key = self.state.add(step)

    # -- metadata steps ---------------------------------------------------------------------
    def _config(self, instruction: ins.Instruction, config: RuntimeConfig) -> None:
        self.config = config
        step = ConfigStep(
            self.key,
            created_by(instruction),
            config,
            self.author,
            self.title(instruction),
            instruction.where,
        )
        self.key = self.state.add(step)


def _inside(source: str) -> str:
    """A `--mount source=` inside a stage's tree, absolute and clean ("" is its root)."""
    return posixpath.normpath(posixpath.join("/", source)).replace("//", "/")


def _check_checksum(add: ins.Add, checksum: str) -> None:
    """BuildKit: --checksum only for an http(s) source, and it must be a digest."""
    if not all(source.startswith(("http://", "https://")) for source in add.sources):
        raise InputError("ADD --checksum can only be used with an http(s) source", add.where)
    if not _DIGEST.fullmatch(checksum):
        raise InputError(f"ADD --checksum: invalid digest {shorten(checksum)!r}", add.where)
