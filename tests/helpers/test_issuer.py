"""A local OIDC issuer for unit tests: discovery, JWKS, Keycloak introspection, token minting.

Why: Keycloak, Cognito and Entra ID cannot run here, but upstream verification must be tested
over real HTTP (timeouts, size caps, outages, key rotation). This server plays any number of
issuers on one free 127.0.0.1 port and mints tokens of each provider's documented shape.

    idp = TestIssuer(clock=clock).start()
    kc = idp.add_issuer("/realms/hpc", jwks_path="/realms/hpc/protocol/openid-connect/certs")
    token = kc.mint(kc.keycloak_claims(azp="portal", username="alice"))
    kc.mode = "down"          # "ok" | "down" (503) | "refused" (socket closed, no answer)
                              # | "slow" (sleeps slow_seconds) | "garbage" | "huge" | "huge_stream"
    kc.rotate(); kc.jwks_requests; idp.stop()   # stop() then start(): connection refused meanwhile

Standard library plus cryptography and PyJWT.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__test__ = False  # a helper, not a test module

MODES = ("ok", "down", "refused", "slow", "garbage", "huge", "huge_stream")
HUGE_BYTES = 2 * 1024 * 1024


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_b64(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token with any header and signature, e.g. alg "none", which PyJWT will not produce."""
    return f"{_json_b64(header)}.{_json_b64(claims)}.{b64url(signature)}"


def forge_hmac(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token made by hand (PyJWT refuses a PEM public key as HMAC secret)."""
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def new_private_key(alg: str) -> Any:
    """A fresh private key for ``alg`` (RS*/PS*: RSA 2048, ES*: matching curve, EdDSA: Ed25519)."""
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curves = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
    if alg in curves:
        return ec.generate_private_key(curves[alg]())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"no key type for {alg}")


def public_jwk(private_key: Any) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(public, as_dict=True)
    return OKPAlgorithm.to_jwk(public, as_dict=True)


class SigningKey:
    """One key of an issuer: kid, alg and the private key that signs its tokens."""

    def __init__(self, alg: str, kid: str | None = None, private_key: Any = None) -> None:
        self.alg = alg
        self.kid = kid or secrets.token_hex(8)
        self.private_key = private_key or new_private_key(alg)

    def jwk(self, include_alg: bool) -> dict[str, Any]:
        jwk = public_jwk(self.private_key)
        jwk.update(kid=self.kid, use="sig")
        if include_alg:
            jwk["alg"] = self.alg
        else:
            jwk["x5t"] = self.kid  # Entra style: kid and x5t, no alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class IssuerHandle:
    """One issuer served by a TestIssuer; its controls and its token minting."""

    def __init__(
        self,
        server: TestIssuer,
        path: str,
        *,
        key_alg: str,
        jwk_alg_in_jwks: bool,
        issuer_path: str | None,
        jwks_path: str | None,
    ) -> None:
        self._server = server
        self.path = path.rstrip("/")
        self.issuer_path = issuer_path or self.path
        self.jwks_path = jwks_path or self.path + "/jwks"
        self.discovery_path = self.path + "/.well-known/openid-configuration"
        self.introspection_path = self.path + "/protocol/openid-connect/token/introspect"
        self.key_alg = key_alg
        self.jwk_alg_in_jwks = jwk_alg_in_jwks
        self.keys: list[SigningKey] = [SigningKey(key_alg)]
        self.extra_jwks: list[dict[str, Any]] = []
        self.mode = "ok"
        self.slow_seconds = 2.0
        # Opaque token -> introspection answer; credentials python-keycloak must send.
        self.introspection: dict[str, dict[str, Any]] = {}
        self.introspection_client: tuple[str, str] = ("bridge", "bridge-secret")
        self.discovery_issuer: str | None = None  # what discovery names; default: issuer
        self.extra_discovery: dict[str, Any] = {}  # more (or overriding) discovery fields
        self._lock = threading.Lock()
        self._counts = {"discovery": 0, "jwks": 0, "introspection": 0}

    # ---------------------------------------------------------- addresses

    @property
    def issuer(self) -> str:
        return self._server.base_url + self.issuer_path

    @property
    def discovery_url(self) -> str:
        return self._server.base_url + self.discovery_path

    @property
    def jwks_uri(self) -> str:
        return self._server.base_url + self.jwks_path

    # ---------------------------------------------------------- counters

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    @property
    def jwks_requests(self) -> int:
        return self._counts["jwks"]

    @property
    def discovery_requests(self) -> int:
        return self._counts["discovery"]

    @property
    def introspection_requests(self) -> int:
        return self._counts["introspection"]

    # ---------------------------------------------------------- keys

    @property
    def current(self) -> SigningKey:
        return self.keys[-1]

    @property
    def kid(self) -> str:
        return self.current.kid

    def public_pem(self) -> bytes:
        return self.current.public_pem()

    def rotate(self, *, keep_old: bool = True) -> str:
        """Sign with a new key from now on; the old one stays published unless keep_old=False."""
        key = SigningKey(self.key_alg)
        self.keys = [*self.keys, key] if keep_old else [key]
        return key.kid

    def jwks(self) -> dict[str, Any]:
        keys = [k.jwk(self.jwk_alg_in_jwks) for k in self.keys]
        return {"keys": keys + list(self.extra_jwks)}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery_issuer or self.issuer,
            "jwks_uri": self.jwks_uri,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "id_token_signing_alg_values_supported": [self.key_alg],
            **self.extra_discovery,
        }

    # ---------------------------------------------------------- minting

    def now(self) -> int:
        return int(self._server.clock())

    def mint(
        self,
        claims: dict[str, Any],
        *,
        header: dict[str, Any] | None = None,
        kid: str | None = None,
        alg: str | None = None,
        key: Any = None,
    ) -> str:
        """Sign ``claims``; iss, iat and exp (+300 s) are added unless given (None removes one)."""
        now = self.now()
        body = {"iss": self.issuer, "iat": now, "exp": now + 300, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        signer = self.current
        headers = {"kid": kid or signer.kid, **(header or {})}
        return jwt.encode(
            body, key or signer.private_key, algorithm=alg or signer.alg, headers=headers
        )

    def keycloak_claims(
        self,
        *,
        azp: str,
        username: str,
        sub: str | None = None,
        aud: str | list[str] | None = "account",
        realm_roles: tuple[str, ...] = (),
        client_roles: dict[str, list[str]] | None = None,
        typ: str = "Bearer",
        service: bool = False,
    ) -> dict[str, Any]:
        """A Keycloak access token body: realm issuer, azp, aud "account" or none, roles."""
        name = f"service-account-{azp}" if service else username
        claims: dict[str, Any] = {
            "jti": secrets.token_hex(8),
            "sub": sub or secrets.token_hex(16),
            "typ": typ,
            "azp": azp,
            "session_state": secrets.token_hex(8),
            "scope": "openid profile email",
            "preferred_username": name,
            "realm_access": {"roles": ["offline_access", "uma_authorization", *realm_roles]},
            "resource_access": {
                "account": {"roles": ["manage-account", "view-profile"]},
                **{c: {"roles": r} for c, r in (client_roles or {}).items()},
            },
        }
        if aud is not None:
            claims["aud"] = aud
        if service:
            claims["clientId"] = azp
        return claims

    def cognito_claims(
        self,
        token_use: str,
        *,
        client_id: str,
        username: str | None = None,
        groups: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """A Cognito access token (client_id, username) or ID token (aud, cognito:username)."""
        claims: dict[str, Any] = {
            "sub": secrets.token_hex(16) if username else client_id,
            "token_use": token_use,
            "auth_time": self.now(),
            "jti": secrets.token_hex(8),
            "origin_jti": secrets.token_hex(8),
        }
        if groups:
            claims["cognito:groups"] = list(groups)
        if token_use == "access":
            claims.update(client_id=client_id, scope="openid profile")
            if username:
                claims["username"] = username
        else:
            claims.update(aud=client_id, email_verified=True, at_hash=secrets.token_hex(8))
            if username:
                claims["cognito:username"] = username
        return claims

    def entra_claims(
        self,
        *,
        tid: str,
        aud: str,
        version: int = 2,
        client: str = "11111111-2222-3333-4444-555555555555",
        oid: str | None = None,
        username: str = "ada@contoso.example",
        roles: tuple[str, ...] = (),
        groups: tuple[str, ...] = (),
        app_only: bool = False,
    ) -> dict[str, Any]:
        """An Entra access token body; v2 iss from the configured template, v1 from sts."""
        if version == 2:
            iss = (self._server.base_url + self.issuer_path).replace("{tenantid}", tid)
        else:
            iss = f"https://sts.windows.net/{tid}/"
        oid = oid or secrets.token_hex(16)
        claims: dict[str, Any] = {
            "iss": iss,
            "aud": aud,
            "tid": tid,
            "oid": oid,
            "sub": oid if app_only else secrets.token_hex(16),
            "ver": "2.0" if version == 2 else "1.0",
            "uti": secrets.token_hex(8),
        }
        claims["azp" if version == 2 else "appid"] = client
        if app_only:
            claims["idtyp"] = "app"
        else:
            claims.update(scp="access_as_user", preferred_username=username, upn=username)
            claims["name"] = "Ada Lovelace"
        if roles:
            claims["roles"] = list(roles)
        if groups:
            claims["groups"] = list(groups)
        return claims

    def oidc_claims(
        self, *, sub: str = "alice", aud: str | list[str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {"sub": sub, **extra}
        if aud is not None:
            claims["aud"] = aud
        return claims


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, handle: IssuerHandle, what: str, doc: Callable[[], dict[str, Any]]) -> None:
        handle._count(what)
        mode = handle.mode
        if mode == "slow":
            time.sleep(handle.slow_seconds)
        if mode == "down":
            self._send(503, b'{"error":"temporarily unavailable"}')
        elif mode == "refused":
            self.close_connection = True
        elif mode == "garbage":
            self._send(200, b"<html><body>Bad gateway, try again</body></html>", "text/html")
        elif mode == "huge":
            self._send(200, b'{"keys":[],"pad":"' + b"x" * HUGE_BYTES + b'"}')
        elif mode == "huge_stream":
            # No Content-Length: the client has to count while it reads.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b'{"keys":[],"pad":"')
            for _ in range(HUGE_BYTES // 65536):
                self.wfile.write(b"x" * 65536)
            self.wfile.write(b'"}')
        else:
            self._send(200, json.dumps(doc()).encode())

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        for handle in self.server.owner.handles:
            if path == handle.discovery_path:
                return self._serve(handle, "discovery", handle.discovery)
            if path == handle.jwks_path:
                return self._serve(handle, "jwks", handle.jwks)
        self._send(404, b'{"error":"not found"}')

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        for handle in self.server.owner.handles:
            if path == handle.introspection_path:
                client = (form.get("client_id", [""])[0], form.get("client_secret", [""])[0])
                if client != handle.introspection_client:
                    handle._count("introspection")
                    return self._send(401, b'{"error":"unauthorized_client"}')
                token = form.get("token", [""])[0]
                answer = handle.introspection.get(token, {"active": False})
                return self._serve(handle, "introspection", lambda a=answer: a)
        self._send(404, b'{"error":"not found"}')


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: TestIssuer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out close their end; that is the point of some tests


class TestIssuer:
    """A threaded HTTP server on 127.0.0.1 playing one or more OIDC issuers."""

    __test__ = False

    def __init__(
        self, clock: Callable[[], float] = time.time, tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls``: serve https with that server context (see tests/helpers/tls.py)."""
        self.clock = clock
        self.tls = tls
        self.handles: list[IssuerHandle] = []
        self._port = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if not self._port:
            raise RuntimeError("TestIssuer not started")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}"

    def start(self) -> TestIssuer:
        """Listen (again on the same port after stop(), so issuer URLs stay valid)."""
        httpd = _Server(("127.0.0.1", self._port), _Handler)
        httpd.owner = self
        if self.tls is not None:
            httpd.socket = self.tls.wrap_socket(httpd.socket, server_side=True)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused until start() is called again."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TestIssuer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_issuer(
        self,
        path: str,
        *,
        key_alg: str = "RS256",
        jwk_alg_in_jwks: bool = True,
        issuer_path: str | None = None,
        jwks_path: str | None = None,
    ) -> IssuerHandle:
        """Serve an issuer: discovery at ``path``/.well-known/openid-configuration.

        ``issuer_path`` (default ``path``) is what discovery and tokens name as issuer; Entra's
        multi-tenant discovery lives at ``/organizations/v2.0`` but names ``/{tenantid}/v2.0``.
        """
        handle = IssuerHandle(
            self,
            path,
            key_alg=key_alg,
            jwk_alg_in_jwks=jwk_alg_in_jwks,
            issuer_path=issuer_path,
            jwks_path=jwks_path,
        )
        self.handles.append(handle)
        return handle
