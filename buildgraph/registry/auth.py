"""Registry credentials (docker config.json, credential helpers) and the token handshake."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from buildgraph.errors import AuthError, InputError, Location, RegistryError

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key docker uses for Docker Hub
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
IDENTITY_TOKEN_USERNAME = "<token>"  # a helper's Username when Secret is an identity token
DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, when the token server gives no expires_in
_EXPIRY_MARGIN = 5.0  # refresh a token this long before it expires
_HELPER_TIMEOUT = 30.0
CLIENT_ID = "buildgraph"


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:  # never the secrets themselves
        secrets = [name for name in ("password", "identity_token") if getattr(self, name)]
        hidden = "".join(f", {name}='***'" for name in secrets)
        return f"Credentials(username={self.username!r}{hidden})"

    def basic_header(self) -> str | None:
        if not self.username or not self.password:
            return None
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()


class CredentialStore:
    """What `docker login` left in config.json: inline auths, credHelpers and credsStore."""

    def __init__(self, config: Mapping | None = None, *, source: str = "config.json") -> None:
        config = config or {}
        self._source = source
        self._auths = {_host_key(key): value for key, value in config.get("auths", {}).items()}
        self._helpers = {
            _host_key(key): name for key, name in config.get("credHelpers", {}).items()
        }
        self._default_helper: str | None = config.get("credsStore") or None

    def __repr__(self) -> str:
        return f"CredentialStore(source={self._source!r}, registries={sorted(self._auths)!r})"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> CredentialStore:
        environ = os.environ if environ is None else environ
        directory = environ.get("DOCKER_CONFIG")
        if directory:
            return cls.from_file(Path(directory) / "config.json")
        home = environ.get("HOME") or str(Path.home())
        return cls.from_file(Path(home) / ".docker" / "config.json")

    @classmethod
    def from_file(cls, path: Path) -> CredentialStore:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(source=str(path))  # no `docker login` yet: anonymous
        except OSError as err:
            raise InputError(f"cannot read docker config: {err.strerror}", Location(path)) from err
        try:
            config = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as err:
            raise InputError(f"invalid JSON: {err.msg}", Location(path, err.lineno)) from None
        if not isinstance(config, dict):
            raise InputError("docker config is not a JSON object", Location(path))
        return cls(config, source=str(path))

    def lookup(self, registry: str) -> Credentials | None:
        key = _host_key(registry)
        helper = self._helpers.get(key) or self._default_helper
        if helper:
            found = _run_helper(helper, _server_address(key), registry)
            if found is not None:
                return found
        entry = self._auths.get(key)
        return _parse_auth_entry(entry, registry, self._source) if entry else None


def _host_key(server: str) -> str:
    """Docker's ConvertToHostname: drop the scheme and the path; Hub aliases become docker.io."""
    host = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", server.strip()).split("/", 1)[0]
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host


def _server_address(key: str) -> str:
    return DOCKER_HUB_SERVER if key == "docker.io" else key


def _parse_auth_entry(entry: Mapping, registry: str, source: str) -> Credentials | None:
    if entry.get("identitytoken"):
        return Credentials(
            username=entry.get("username", ""), identity_token=entry["identitytoken"]
        )
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InputError(f"invalid auth entry for {registry} in {source}") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise InputError(f"invalid auth entry for {registry} in {source}: no ':'")
        return Credentials(username=username, password=password.strip("\x00"))
    if entry.get("username") and entry.get("password"):
        return Credentials(username=entry["username"], password=entry["password"])
    return None


def _run_helper(name: str, server: str, registry: str) -> Credentials | None:
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run(
            [program, "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        return None  # docker, too, treats a missing helper as no credentials
    except (OSError, subprocess.TimeoutExpired) as err:
        raise AuthError(f"credential helper {program} failed for {registry}: {err}") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        if "credentials not found" in output.lower():
            return None
        reason = output.splitlines()[0][:200] if output and not output.startswith("{") else ""
        raise AuthError(
            f"credential helper {program} failed for {registry} "
            f"(exit {done.returncode}){': ' + reason if reason else ''}"
        )
    try:
        reply = json.loads(done.stdout)
        username, secret = reply.get("Username", ""), reply["Secret"]
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
        raise AuthError(f"credential helper {program} gave no JSON credentials") from None
    if username == IDENTITY_TOKEN_USERNAME:
        return Credentials(identity_token=secret)
    return Credentials(username=username, password=secret)


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lowercase: "bearer", "basic"
    params: tuple[tuple[str, str], ...]  # realm, service, scope, error...

    def get(self, name: str) -> str:
        return dict(self.params).get(name, "")


_CHALLENGE_TOKEN = re.compile(
    r'\s*(?:(?P<key>[\w.~+/-]+)\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s,]*))'
    r"|(?P<scheme>[\w.~+/-]+))\s*,?"
)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse WWW-Authenticate: `Bearer realm="...",service="..." , Basic realm="..."`."""
    challenges: list[tuple[str, list[tuple[str, str]]]] = []
    for match in _CHALLENGE_TOKEN.finditer(header):
        if match.group("scheme"):
            challenges.append((match.group("scheme").lower(), []))
        elif match.group("key") and challenges:
            quoted = match.group("quoted")
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group("bare")
            challenges[-1][1].append((match.group("key").lower(), value))
    return [Challenge(scheme, tuple(params)) for scheme, params in challenges]


def _preferred(challenges: Sequence[Challenge]) -> Challenge | None:
    """Bearer over Basic; other schemes we cannot answer."""
    usable = [c for c in challenges if c.scheme in ("bearer", "basic")]
    return next((c for c in usable if c.scheme == "bearer"), usable[0] if usable else None)


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"


def merge_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """One scope per resource, actions united: `repository:a:pull` + `repository:a:push`."""
    merged: dict[str, dict[str, None]] = {}
    for scope in scopes:
        resource, _, actions = scope.rpartition(":")
        if not resource:  # not type:name:actions; keep it whole
            resource, actions = scope, ""
        merged.setdefault(resource, {}).update(dict.fromkeys(filter(None, actions.split(","))))
    return tuple(
        f"{resource}:{','.join(actions)}" if actions else resource
        for resource, actions in merged.items()
    )


def describe_scopes(registry: str, scopes: Sequence[str]) -> str:
    """`authentication to REGISTRY failed for REPOSITORY (push|pull)` for these scopes."""
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and name:
            action = "push" if "push" in actions.split(",") else "pull"
            return f"authentication to {registry} failed for {name} ({action})"
    return f"authentication to {registry} failed"


class Authenticator:
    """Answers registry challenges: Basic from the store, Bearer tokens cached per scope."""

    def __init__(self, session: requests.Session, credentials: CredentialStore | None) -> None:
        self._session = session
        self._credentials = credentials
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        # (registry, scopes) -> (token, usable until by time.monotonic())
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = {}
        self._fetching: dict[tuple[str, tuple[str, ...]], threading.Lock] = {}
        self._found: dict[str, Credentials | None] = {}

    def authorization(self, registry: str, scopes: Sequence[str], timeout: float) -> str | None:
        """The Authorization header to send up front, once the registry's challenge is known."""
        with self._lock:
            challenge = self._challenges.get(registry)
        if challenge is None:
            return None
        return self._answer(registry, challenge, scopes, timeout, refused=None)

    def remember(self, registry: str, header: str) -> None:
        """Note a challenge seen without answering it (from a ping)."""
        challenge = _preferred(parse_challenges(header))
        if challenge is not None:
            with self._lock:
                self._challenges[registry] = challenge

    def respond(
        self,
        registry: str,
        header: str,
        scopes: Sequence[str],
        timeout: float,
        refused: str | None,
    ) -> str | None:
        """Answer a 401's challenge; None when there is nothing to offer.

        `refused` is the Authorization the 401 answered: that token is not offered again.
        """
        challenge = _preferred(parse_challenges(header))
        if challenge is None:
            return None
        with self._lock:
            self._challenges[registry] = challenge
        return self._answer(registry, challenge, scopes, timeout, refused=refused or "")

    def _answer(
        self,
        registry: str,
        challenge: Challenge,
        scopes: Sequence[str],
        timeout: float,
        *,
        refused: str | None,
    ) -> str | None:
        """Basic from the store, or a Bearer token: cached per (registry, our scopes).

        After a 401 (`refused` is not None) a new token is fetched for our scopes plus the
        ones the challenge names, unless another thread has already replaced the refused
        one. One fetch per key at a time: threads wait for it and share it.
        """
        credentials = self._lookup(registry)
        if challenge.scheme == "basic":
            return credentials.basic_header() if credentials else None
        key = (registry, merge_scopes(scopes))
        with self._lock:
            fetching = self._fetching.setdefault(key, threading.Lock())
        with fetching:
            with self._lock:
                cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic() and f"Bearer {cached[0]}" != refused:
                return f"Bearer {cached[0]}"
            extra = challenge.get("scope").split() if refused is not None else []
            wanted = merge_scopes([*key[1], *extra])
            token, lifetime = self._fetch_token(registry, challenge, wanted, credentials, timeout)
            usable_until = time.monotonic() + max(lifetime - _EXPIRY_MARGIN, 1.0)
            with self._lock:
                self._tokens[key] = (token, usable_until)
        return f"Bearer {token}"

    def _lookup(self, registry: str) -> Credentials | None:
        with self._lock:
            if registry in self._found:
                return self._found[registry]
        found = self._credentials.lookup(registry) if self._credentials else None
        with self._lock:
            self._found[registry] = found
        return found

    def _fetch_token(
        self,
        registry: str,
        challenge: Challenge,
        scopes: Sequence[str],
        credentials: Credentials | None,
        timeout: float,
    ) -> tuple[str, float]:
        realm = challenge.get("realm")
        if not realm.startswith(("http://", "https://")):
            raise RegistryError(f"registry {registry} sent a Bearer challenge without a realm")
        service = challenge.get("service")
        proxies = requests.utils.get_environ_proxies(realm)  # the session does not read them
        if credentials and credentials.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": CLIENT_ID,
                "scope": " ".join(scopes),
                **({"service": service} if service else {}),
            }
            response = self._session.post(realm, data=form, timeout=timeout, proxies=proxies)
        else:
            params = [("service", service)] if service else []
            params += [("scope", scope) for scope in scopes]
            headers = {}
            basic = credentials.basic_header() if credentials else None
            if basic:
                headers["Authorization"] = basic
            response = self._session.get(
                realm, params=params, headers=headers, timeout=timeout, proxies=proxies
            )
        with response:
            if response.status_code in (401, 403):
                raise AuthError(describe_scopes(registry, scopes))
            if response.status_code != 200:
                raise RegistryError(
                    f"token server of {registry} answered HTTP {response.status_code}"
                )
            try:
                reply = response.json()
                token = reply.get("token") or reply["access_token"]
                lifetime = float(reply.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise RegistryError(f"token server of {registry} sent no token") from None
        return token, max(lifetime, DEFAULT_TOKEN_LIFETIME)
