"""An https issuer's discovery document that names a plain-http jwks_uri on this machine: any local
user who holds that port while the IdP is down could serve signing keys. Such a jwks_uri is refused
unless the issuer allows plain http; an http issuer on loopback keeps its http jwks_uri."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from slurm_jwt_bridge.issuer_documents import Document, IssuerDocuments
from slurm_jwt_bridge.settings import IssuerSettings


class Squatter:
    """A plain-http listener on loopback that serves a JWKS of its own and counts requests."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        jwk = json.loads(RSAAlgorithm.to_jwk(key))
        body = json.dumps({"keys": [{**jwk, "kid": "squat", "alg": "RS256", "use": "sig"}]})
        self.hits = 0
        squatter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                squatter.hits += 1
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def squatter() -> Iterator[Squatter]:
    s = Squatter()
    yield s
    s.server.shutdown()
    s.server.server_close()


def documents(issuer: str, jwks_uri: str, **kw: object) -> IssuerDocuments:
    settings = IssuerSettings(name="idp", kind="oidc", issuer=issuer, audiences=("bridge",), **kw)
    docs = IssuerDocuments(settings)
    # The discovery document as the IdP (or whoever answered for it) sent it.
    docs.discovered = Document(issuer, {"issuer": issuer, "jwks_uri": jwks_uri}, 0.0)
    return docs


def test_https_issuer_never_takes_keys_from_a_plain_http_jwks_uri(squatter: Squatter) -> None:
    docs = documents("https://idp.example.org/realms/hpc", squatter.url)
    with pytest.raises(Exception, match="plain http jwks_uri"):
        docs.keys()
    assert squatter.hits == 0


def test_https_issuer_with_allow_insecure_http_may(squatter: Squatter) -> None:
    docs = documents("https://idp.example.org/realms/hpc", squatter.url, allow_insecure_http=True)
    assert [k.kid for k in docs.keys().keys] == ["squat"]


def test_loopback_http_issuer_keeps_its_http_jwks_uri(squatter: Squatter) -> None:
    docs = documents("http://127.0.0.1:9/realms/hpc", squatter.url)
    assert [k.kid for k in docs.keys().keys] == ["squat"]
