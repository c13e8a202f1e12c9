"""Credentials from docker's config.json and helpers; Basic and token auth on real registries."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from registry_helpers import (
    PASSWORD,
    USER,
    Blob,
    StaticCredentials,
    push_blob,
    push_image,
    unique_repo,
)
from registry_server import RegistryServer
from token_issuer import TokenIssuer

from buildgraph.cache.local import LocalStore
from buildgraph.cache.transfer import push
from buildgraph.errors import AuthError, InputError, RegistryError
from buildgraph.registry.auth import Credentials, CredentialStore, parse_challenges
from buildgraph.registry.client import RegistryClient


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _store(tmp_path: Path, config: dict) -> CredentialStore:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return CredentialStore.from_environment({"DOCKER_CONFIG": str(tmp_path)})


# ---- config.json ---------------------------------------------------------------------------

CONFIG_CASES = [
    ({"auths": {"reg.example": {"auth": _b64("bob:pw:with:colons")}}}, "reg.example",
     Credentials("bob", "pw:with:colons")),
    ({"auths": {"reg.example": {"username": "bob", "password": "pw"}}}, "reg.example",
     Credentials("bob", "pw")),
    ({"auths": {"reg.example": {"identitytoken": "refresh-me"}}}, "reg.example",
     Credentials(identity_token="refresh-me")),
    ({"auths": {"https://index.docker.io/v1/": {"auth": _b64("hub:pw")}}}, "docker.io",
     Credentials("hub", "pw")),
    ({"auths": {"https://reg.example:5000/v2/": {"auth": _b64("bob:pw")}}}, "reg.example:5000",
     Credentials("bob", "pw")),
    ({"auths": {"http://localhost:5000": {"auth": _b64("bob:pw")}}}, "localhost:5000",
     Credentials("bob", "pw")),
    ({"auths": {"reg.example": {"auth": _b64("bob:pw")}}}, "other.example", None),
    ({"auths": {"reg.example:5000": {"auth": _b64("bob:pw")}}}, "reg.example", None),
    ({"auths": {"reg.example": {}}}, "reg.example", None),
    ({}, "reg.example", None),
]  # fmt: skip


@pytest.mark.parametrize(("config", "registry", "expected"), CONFIG_CASES)
def test_config_lookup(
    tmp_path: Path, config: dict, registry: str, expected: Credentials | None
) -> None:
    assert _store(tmp_path, config).lookup(registry) == expected


def test_missing_config_is_anonymous(tmp_path: Path) -> None:
    store = CredentialStore.from_environment({"HOME": str(tmp_path)})
    assert store.lookup("docker.io") is None


def test_home_config_is_used_without_docker_config(tmp_path: Path) -> None:
    (tmp_path / ".docker").mkdir()
    config = {"auths": {"reg.example": {"auth": _b64("bob:pw")}}}
    (tmp_path / ".docker" / "config.json").write_text(json.dumps(config))
    store = CredentialStore.from_environment({"HOME": str(tmp_path)})
    assert store.lookup("reg.example") == Credentials("bob", "pw")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_invalid_config_is_an_input_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(InputError, match=r"config\.json"):
        CredentialStore.from_environment({"DOCKER_CONFIG": str(tmp_path)})


def test_invalid_auth_entry_hides_its_content(tmp_path: Path) -> None:
    store = _store(tmp_path, {"auths": {"reg.example": {"auth": "!!not-base64-secret!!"}}})
    with pytest.raises(InputError) as caught:
        store.lookup("reg.example")
    assert "secret" not in str(caught.value)


def test_credentials_repr_hides_secrets() -> None:
    text = repr(Credentials("bob", "hunter2", "refresh-token-xyz"))
    assert "bob" in text
    assert "hunter2" not in text
    assert "refresh-token-xyz" not in text


# ---- credential helpers --------------------------------------------------------------------

HELPER = """#!/bin/sh
read server
echo "$server" >> "$0.log"
case "$server" in
  helped.example) echo '{"ServerURL":"helped.example","Username":"carol","Secret":"helper-pw"}' ;;
  https://index.docker.io/v1/) echo '{"Username":"<token>","Secret":"hub-identity-token"}' ;;
  broken.example) echo "keychain exploded" >&2; exit 3 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


@pytest.fixture
def helper_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-test"
    helper.write_text(HELPER)
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return helper


def test_cred_helper_for_one_registry(tmp_path: Path, helper_on_path: Path) -> None:
    store = _store(tmp_path, {"credHelpers": {"helped.example": "test"}})
    assert store.lookup("helped.example") == Credentials("carol", "helper-pw")
    assert store.lookup("other.example") is None  # no helper, no auths entry
    assert helper_on_path.with_suffix(".log").read_text() == "helped.example\n"


def test_creds_store_serves_every_registry(tmp_path: Path, helper_on_path: Path) -> None:
    config = {"credsStore": "test", "auths": {"fallback.example": {"auth": _b64("dan:pw")}}}
    store = _store(tmp_path, config)
    assert store.lookup("docker.io") == Credentials(identity_token="hub-identity-token")
    assert store.lookup("helped.example") == Credentials("carol", "helper-pw")
    assert store.lookup("fallback.example") == Credentials("dan", "pw")  # helper: not found
    assert store.lookup("nowhere.example") is None


def test_failing_helper_is_an_auth_error(tmp_path: Path, helper_on_path: Path) -> None:
    store = _store(tmp_path, {"credHelpers": {"broken.example": "test"}})
    with pytest.raises(AuthError, match=r"docker-credential-test failed for broken\.example"):
        store.lookup("broken.example")


def test_missing_helper_is_a_miss(tmp_path: Path) -> None:
    store = _store(tmp_path, {"credHelpers": {"reg.example": "does-not-exist-anywhere"}})
    assert store.lookup("reg.example") is None


# ---- challenges ----------------------------------------------------------------------------

CHALLENGES = [
    ('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"',
     [("bearer", {"realm": "https://auth.example/token", "service": "reg",
                  "scope": "repository:a/b:pull"})]),
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
    ('Bearer realm="https://a/t", error="insufficient_scope", Basic realm="x"',
     [("bearer", {"realm": "https://a/t", "error": "insufficient_scope"}),
      ("basic", {"realm": "x"})]),
    ('bearer realm=https://a/t,service=reg', [("bearer", {"realm": "https://a/t",
                                                          "service": "reg"})]),
    ('Bearer realm="quote \\" inside"', [("bearer", {"realm": 'quote " inside'})]),
    ("", []),
]  # fmt: skip


@pytest.mark.parametrize(("header", "expected"), CHALLENGES)
def test_parse_challenges(header: str, expected: list) -> None:
    parsed = [(c.scheme, dict(c.params)) for c in parse_challenges(header)]
    assert parsed == expected


# ---- Basic auth (htpasswd) -----------------------------------------------------------------


def test_basic_auth_push_and_pull(htpasswd_registry: RegistryServer) -> None:
    host = htpasswd_registry.host
    with RegistryClient(credentials=StaticCredentials(host, Credentials(USER, PASSWORD))) as c:
        c.ping(host)
        repo = unique_repo(htpasswd_registry)
        digest = push_image(c, repo, "v1", Blob(b"basic auth layer"))
        assert c.get_manifest(repo.with_tag("v1")).digest == digest
        assert c.list_tags(repo) == ["v1"]


@pytest.mark.parametrize("credentials", [None, Credentials(USER, "wrong-" + PASSWORD)])
def test_basic_auth_refused(
    htpasswd_registry: RegistryServer, credentials: Credentials | None
) -> None:
    host = htpasswd_registry.host
    store = StaticCredentials(host, credentials) if credentials else None
    repo = unique_repo(htpasswd_registry, "denied")
    with RegistryClient(credentials=store, retries=0) as c:
        c.ping(host)  # a 401 challenge still means "a registry is there"
        with pytest.raises(AuthError) as caught:
            c.get_manifest(repo.with_tag("v1"))
        assert str(caught.value) == f"authentication to {host} failed for {repo.repository} (pull)"
        with pytest.raises(AuthError, match=r"\(push\)"):
            c.upload_blob(repo, Blob(b"x").digest, 1, io.BytesIO(b"x"))
    _assert_no_secret(caught.value, PASSWORD)


def test_a_refused_push_of_an_image_says_push(
    htpasswd_registry: RegistryServer, busybox_cache: Path, tmp_path: Path
) -> None:
    host = htpasswd_registry.host
    shutil.copytree(busybox_cache, tmp_path / "cache", symlinks=True)
    store = LocalStore(tmp_path / "cache")
    image = store.resolve("busybox:latest")
    assert image is not None
    repo = unique_repo(htpasswd_registry, "pushed")
    wrong = StaticCredentials(host, Credentials(USER, "wrong-" + PASSWORD))
    with RegistryClient(credentials=wrong, retries=0) as c, pytest.raises(AuthError) as caught:
        push(c, store, image, repo.with_tag("v1"))  # its first request is a HEAD of a blob
    assert str(caught.value) == f"authentication to {host} failed for {repo.repository} (push)"


def test_basic_auth_over_tls_with_ca_bundle(
    tls_htpasswd_registry: RegistryServer, tls_ca: tuple[Path, tuple[Path, Path]]
) -> None:
    host = tls_htpasswd_registry.host
    store = StaticCredentials(host, Credentials(USER, PASSWORD))
    with RegistryClient(credentials=store, ca_bundle=str(tls_ca[0])) as c:
        repo = unique_repo(tls_htpasswd_registry)
        digest = push_image(c, repo, "tls", Blob(b"over tls"))
        assert c.head_manifest(repo.with_tag("tls")).digest == digest  # type: ignore[union-attr]


def test_tls_without_the_ca_is_refused_at_once(tls_htpasswd_registry: RegistryServer) -> None:
    repo = unique_repo(tls_htpasswd_registry)
    started = time.monotonic()
    with RegistryClient(retries=5, backoff=1.0) as c, pytest.raises(RegistryError) as caught:
        c.get_manifest(repo.with_tag("v1"))
    assert "certificate not trusted" in str(caught.value)
    assert time.monotonic() - started < 1.0  # no retries: another try will not help


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_insecure_registry_skips_verification(tls_htpasswd_registry: RegistryServer) -> None:
    host = tls_htpasswd_registry.host
    store = StaticCredentials(host, Credentials(USER, PASSWORD))
    with RegistryClient(credentials=store, insecure=[host]) as c:
        repo = unique_repo(tls_htpasswd_registry)
        push_image(c, repo, "insecure", Blob(b"unverified tls"))
        assert c.list_tags(repo) == ["insecure"]


# ---- token auth ----------------------------------------------------------------------------


def _token_client(registry: RegistryServer, credentials: Credentials | None) -> RegistryClient:
    store = StaticCredentials(registry.host, credentials) if credentials else None
    return RegistryClient(credentials=store, retries=0)


def test_token_auth_push_pull_and_cache(
    token_registry: RegistryServer, token_issuer: TokenIssuer
) -> None:
    repo = unique_repo(token_registry)
    with _token_client(token_registry, Credentials(USER, PASSWORD)) as c:
        digest = push_image(c, repo, "v1", Blob(b"token layer"))
        pushes = token_issuer.hits
        assert pushes == 1  # one token for repository:<repo>:pull,push, reused by every request
        for _ in range(3):
            assert c.get_manifest(repo.with_tag("v1")).digest == digest
        out = io.BytesIO()
        c.fetch_blob(repo, Blob(b"token layer").digest, out)
        assert c.list_tags(repo) == ["v1"]
        assert token_issuer.hits == pushes + 1  # and one for :pull
    assert token_issuer.requests[0]["user"] == USER
    assert token_issuer.requests[0]["scopes"] == [f"repository:{repo.repository}:pull,push"]


def test_token_auth_mount_asks_for_both_repositories(
    token_registry: RegistryServer, token_issuer: TokenIssuer
) -> None:
    source, target = unique_repo(token_registry), unique_repo(token_registry)
    blob = Blob(b"mounted with a token")
    with _token_client(token_registry, Credentials(USER, PASSWORD)) as c:
        push_blob(c, source, blob)
        assert c.mount_blob(target, blob.digest, source)
    assert f"repository:{source.repository}:pull" in token_issuer.requests[-1]["scopes"]


def test_token_auth_with_identity_token(
    token_registry: RegistryServer, token_issuer: TokenIssuer
) -> None:
    token_issuer.refresh_tokens["refresh-abc"] = USER
    repo = unique_repo(token_registry)
    with _token_client(token_registry, Credentials(identity_token="refresh-abc")) as c:
        push_blob(c, repo, Blob(b"identity token layer"))
    assert token_issuer.requests[0]["method"] == "POST"
    assert token_issuer.requests[0]["user"] == USER


def test_token_without_push_access(
    token_registry: RegistryServer, token_issuer: TokenIssuer
) -> None:
    token_issuer.grant = lambda user, repository, actions: ["pull"]
    repo = unique_repo(token_registry)
    client = _token_client(token_registry, Credentials(USER, PASSWORD))
    with client, pytest.raises(AuthError) as caught:
        push_blob(client, repo, Blob(b"no push for you"))
    assert str(caught.value) == (
        f"authentication to {token_registry.host} failed for {repo.repository} (push)"
    )


@pytest.mark.parametrize("refuse", [True, False])
def test_token_issuer_refuses(
    token_registry: RegistryServer, token_issuer: TokenIssuer, refuse: bool
) -> None:
    token_issuer.refuse = refuse  # False: the password is wrong instead
    secret = PASSWORD if refuse else "not-the-" + PASSWORD
    repo = unique_repo(token_registry)
    client = _token_client(token_registry, Credentials(USER, secret))
    with client, pytest.raises(AuthError) as caught:
        client.get_manifest(repo.with_tag("v1"))
    assert str(caught.value) == (
        f"authentication to {token_registry.host} failed for {repo.repository} (pull)"
    )
    _assert_no_secret(caught.value, secret)


def test_anonymous_token_without_access(
    token_registry: RegistryServer, token_issuer: TokenIssuer
) -> None:
    with _token_client(token_registry, None) as c, pytest.raises(AuthError):
        c.get_manifest(unique_repo(token_registry).with_tag("v1"))
    assert token_issuer.requests[0]["user"] is None


def _assert_no_secret(error: BaseException, secret: str) -> None:
    """Neither the message, the repr, nor any cause in the chain mentions the secret."""
    encoded = _b64(f"{USER}:{secret}")
    seen: BaseException | None = error
    while seen is not None:
        for text in (str(seen), repr(seen), repr(seen.args)):
            assert secret not in text
            assert encoded not in text
        seen = seen.__cause__ or seen.__context__


def test_one_client_shared_by_threads(
    token_registry: RegistryServer, token_issuer: TokenIssuer
) -> None:
    repo = unique_repo(token_registry)
    blobs = [Blob(f"threaded layer {n}".encode()) for n in range(16)]
    with _token_client(token_registry, Credentials(USER, PASSWORD)) as c:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda blob: push_blob(c, repo, blob), blobs))

        def fetch(blob: Blob) -> bytes:
            out = io.BytesIO()
            c.fetch_blob(repo, blob.digest, out)
            return out.getvalue()

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(fetch, blobs)) == [blob.data for blob in blobs]
    assert token_issuer.hits == 2  # one push token and one pull token, shared by the threads
