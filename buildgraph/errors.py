"""Location and the error hierarchy; each error class owns its exit code."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Location:
    path: Path | str
    line: int | None = None  # 1-based

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else str(self.path)


def shorten(text: str, limit: int = 40) -> str:
    """`text` cut for a one-line message: hostile input can be megabytes long."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BuildgraphError(Exception):
    exit_code = 1

    def __init__(self, message: str, where: Location | None = None) -> None:
        super().__init__(message)
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.args[0]}" if self.where else self.args[0]


class StepFailed(BuildgraphError):  # a RUN (or other step) failed
    exit_code = 1


class InputError(BuildgraphError):  # Buildfile, Dockerfile, image reference, usage, archive
    exit_code = 2


class UnsafeArchiveError(InputError):  # a tar entry that would escape its destination
    pass


class RegistryError(BuildgraphError):  # registry, network, authentication
    exit_code = 3


class AuthError(RegistryError):
    pass


class RegistryDown(RegistryError):  # failed once after all its retries: not asked again this run
    pass


class DigestMismatch(RegistryError):  # content does not match the digest it was asked by
    pass


class CacheError(BuildgraphError):  # corrupt local cache / image store entry
    exit_code = 4


class Terminated(KeyboardInterrupt):
    """SIGTERM (CI cancel, Kubernetes, systemd): unwinds exactly as Ctrl-C does, so every
    `except KeyboardInterrupt` that stops steps and cleans up handles it too."""

    exit_code = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM killed


class NotFound(InputError):  # an image or tag that does not exist
    pass


class StorageError(BuildgraphError):  # the disk is full, over quota or read-only
    exit_code = 5


# What the machine refuses to store, as opposed to a bug or bad input: one line and exit 5.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def storage_error(err: OSError) -> StorageError | None:
    """The one-line error for a write the disk refused (None for any other OSError)."""
    if err.errno not in STORAGE_ERRNOS:
        return None
    reason = os.strerror(err.errno).lower()
    place = f" writing {err.filename}" if err.filename else ""
    hint = (
        "; free some space (buildgraph cache prune) and run again"
        if err.errno != errno.EROFS
        else ""
    )
    error = StorageError(f"{reason}{place}{hint}")
    error.__cause__ = err
    return error
