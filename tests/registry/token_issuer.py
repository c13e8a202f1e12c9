"""A real token server for distribution's `auth: token`: RS256 JWTs with an x5c certificate."""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

SERVICE = "buildgraph-test-registry"
ISSUER = "buildgraph-test-issuer"

# (user or None, repository, requested actions) -> granted actions
Grant = Callable[[str | None, str, list[str]], list[str]]


def grant_known_users(user: str | None, repository: str, actions: list[str]) -> list[str]:
    return actions if user else []


@dataclass
class TokenIssuer:
    """Serves GET /token (Basic auth) and POST /token (refresh_token grant) on 127.0.0.1."""

    root: Path
    users: dict[str, str] = field(default_factory=dict)  # username -> password
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> username
    grant: Grant = grant_known_users
    refuse: bool = False  # answer every request with 401
    expires_in: int = 300
    requests: list[dict] = field(default_factory=list)  # what each hit asked for

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate = _self_signed(self._key)
        self.bundle = self.root / "token-signer.pem"
        self.bundle.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self.requests)

    def registry_auth(self) -> dict:
        """The registry's `auth:` section that trusts this issuer."""
        return {
            "token": {
                "realm": self.url,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(self.bundle),
            }
        }

    def start(self) -> TokenIssuer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def issue(self, user: str | None, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = self.grant(user, name, actions.split(","))
            if kind == "repository" and granted:
                access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64url(json.dumps(header))}.{_b64url(json.dumps(claims))}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                user = issuer._basic_user(self.headers.get("Authorization", ""))
                self._answer("GET", user, query.get("scope", []), bad_login=user is False)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                token = form.get("refresh_token", [""])[0]
                user = issuer.refresh_tokens.get(token)
                scopes = " ".join(form.get("scope", [])).split()
                bad = form.get("grant_type") != ["refresh_token"] or user is None
                self._answer("POST", user, scopes, bad_login=bad)

            def _answer(
                self, method: str, user: object, scopes: list[str], bad_login: bool
            ) -> None:
                with issuer._lock:
                    issuer.requests.append({"method": method, "user": user, "scopes": scopes})
                if issuer.refuse or bad_login:
                    self._send(401, {"details": "incorrect username or password"})
                    return
                token = issuer.issue(user if isinstance(user, str) else None, scopes)
                self._send(200, {"token": token, "access_token": token,
                                 "expires_in": issuer.expires_in})  # fmt: skip

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _basic_user(self, header: str) -> str | bool | None:
        """The user of a Basic header: None when absent, False when the password is wrong."""
        if not header.startswith("Basic "):
            return None
        username, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return username if self.users.get(username) == password else False


def _b64url(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "buildgraph test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
