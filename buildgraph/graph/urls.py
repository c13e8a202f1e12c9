"""ADD <url>: fetch once per run into the cache, so the step's key has the content digest."""

from __future__ import annotations

import hashlib
import os
import posixpath
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from buildgraph.errors import InputError, Location, RegistryError
from buildgraph.fs import atomic_file

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Download:
    directory: Path  # holds exactly one file, `name`: a context for the COPY step
    name: str
    digest: str  # sha256:... of the content


UrlFetcher = Callable[[str, str | None, Location | None], Download]


def url_fetcher(root: Path, *, timeout: float = 60.0) -> UrlFetcher:
    """Downloads into root/<sha256>/<name>; --checksum is verified before anything is kept."""
    seen: dict[tuple[str, str | None], Download] = {}

    def fetch(url: str, checksum: str | None, where: Location | None) -> Download:
        if (url, checksum) in seen:
            return seen[(url, checksum)]
        name = posixpath.basename(urllib.parse.urlparse(url).path) or "index.html"
        staging = root / ".incoming"
        staging.mkdir(parents=True, exist_ok=True)
        target = staging / name
        hasher = hashlib.sha256()
        import requests  # here, not at the top: most builds never fetch a URL

        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                if response.status_code >= 400:
                    raise RegistryError(f"ADD {url}: HTTP {response.status_code}", where)
                with atomic_file(target, 0o600) as out:
                    for chunk in response.iter_content(CHUNK):
                        hasher.update(chunk)
                        out.write(chunk)
        except requests.RequestException as err:
            raise RegistryError(f"ADD {url}: {type(err).__name__}", where) from err
        digest = "sha256:" + hasher.hexdigest()
        if checksum and checksum != digest:
            target.unlink(missing_ok=True)
            raise InputError(f"ADD {url}: checksum mismatch: want {checksum}, got {digest}", where)
        directory = root / digest.removeprefix("sha256:")
        directory.mkdir(parents=True, exist_ok=True)
        os.replace(target, directory / name)
        seen[(url, checksum)] = Download(directory, name, digest)
        return seen[(url, checksum)]

    return fetch
