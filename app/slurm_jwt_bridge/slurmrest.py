"""The HTTP client to slurmrestd: a request (method, raw target, headers, body) with a Slurm
token for a user becomes slurmrestd's response, its body left unread (streamed).

No Flask here: the proxy door (web/proxy.py) authenticates and relays, this module only sends.
urllib3 rather than a richer client: it is the thin layer over http.client, and the proxy's cost
per request is mostly its HTTP client.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as TransportTimeout

from .errors import BridgeError
from .settings import ProxySettings

__all__ = ["DROP_REQUEST", "DROP_RESPONSE", "SlurmRestClient", "TransportError", "unreachable"]

# RFC 9110 section 7.6.1 hop-by-hop headers, plus what the proxy sets itself.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
DROP_REQUEST = HOP_BY_HOP | {"host", "authorization", "cookie", "content-length", "forwarded"}
DROP_RESPONSE = HOP_BY_HOP | {"content-length", "set-cookie"}


def unreachable(exc: BaseException, what: str = "slurmrestd is unreachable") -> BridgeError:
    """The 502 for a failed exchange with slurmrestd (the transport error's type, no detail)."""
    return BridgeError("upstream_unavailable", f"{what} ({type(exc).__name__})", 502)


class _UnixConnection(HTTPConnection):
    """An HTTP connection over slurmrestd's Unix socket (``slurmrestd unix:/path``)."""

    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock


class _UnixPool(HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class SlurmRestClient:
    """A keep-alive pool to slurmrestd (``http://``, ``https://`` or ``unix:/path``) and the
    header rules of a forwarded request; one per process, thread-safe."""

    def __init__(
        self,
        upstream: str,
        *,
        auth_style: str = "x-slurm",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        pool_size: int = 32,
    ) -> None:
        self.auth_style = auth_style
        timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        common: dict[str, Any] = {
            "maxsize": pool_size,
            "block": False,
            "timeout": timeout,
            "retries": False,
        }
        self.pool: HTTPConnectionPool
        if upstream.startswith("unix:"):
            self.pool = _UnixPool("localhost", socket_path=upstream[5:], **common)
        else:
            url = urllib3.util.parse_url(upstream)
            if not url.host:
                raise ValueError(f"{upstream[:200]}: no host")
            if url.scheme == "https":
                self.pool = HTTPSConnectionPool(url.host, url.port or 443, **common)
            else:
                self.pool = HTTPConnectionPool(url.host, url.port or 80, **common)

    @classmethod
    def from_settings(cls, cfg: ProxySettings) -> SlurmRestClient:
        return cls(
            cfg.upstream,
            auth_style=cfg.auth_style,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            pool_size=cfg.pool_size,
        )

    def headers_for(
        self,
        incoming: Iterable[tuple[str, str]],
        *,
        user: str,
        token: str,
        remote_addr: str | None,
    ) -> dict[str, str]:
        """The client's headers as slurmrestd gets them: hop-by-hop headers, those the client's
        ``Connection`` names, its credentials and any ``X-SLURM-*`` dropped; the Slurm token
        for ``user`` added; the client's address appended to ``X-Forwarded-For``."""
        incoming = list(incoming)

        def first(name: str) -> str | None:
            return next((v for k, v in incoming if k.lower() == name), None)

        connection_named = {
            h.strip().lower() for h in (first("connection") or "").split(",") if h.strip()
        }
        out: dict[str, str] = {}
        for name, value in incoming:
            low = name.lower()
            if low in DROP_REQUEST or low in connection_named or low.startswith("x-slurm-"):
                continue
            out[name] = value
        if self.auth_style == "bearer":
            out["Authorization"] = f"Bearer {token}"
        else:
            out["X-SLURM-USER-NAME"] = user
            out["X-SLURM-USER-TOKEN"] = token
        forwarded = remote_addr or ""
        prior = first("x-forwarded-for")
        out["X-Forwarded-For"] = f"{prior}, {forwarded}" if prior else forwarded
        return out

    def send(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: Any = None,
    ) -> urllib3.BaseHTTPResponse:
        """``method target`` (raw, as the client sent it) to slurmrestd; the answer's body is
        left unread. A transport failure is a BridgeError: 502 ``upstream_unavailable``, or
        504 ``upstream_timeout`` when slurmrestd did not answer within ``read_timeout``."""
        try:
            return self.pool.urlopen(
                method,
                target,
                body=body,
                headers=headers,
                preload_content=False,
                decode_content=False,
                redirect=False,
                assert_same_host=False,
            )
        except (NewConnectionError, ProtocolError) as exc:  # NewConnectionError is a timeout too
            raise unreachable(exc) from None
        except TransportTimeout as exc:
            raise BridgeError(
                "upstream_timeout",
                f"slurmrestd did not answer in time ({type(exc).__name__})",
                504,
            ) from None
        except (TransportError, OSError) as exc:
            raise unreachable(exc) from None
