"""A small HTTP server on 127.0.0.1 that answers every request with one settable response and
records what it received: the stand-in for slurmrestd behind the proxy, or for a JWKS URL."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]  # every header line, duplicates included
    body: bytes

    def header(self, name: str) -> str:
        """The last value of header ``name`` (names compared as sent)."""
        return dict(self.headers)[name]


class _QuietServer(ThreadingHTTPServer):
    """Keeps handler errors (a client that gave up before the answer) instead of printing them."""

    daemon_threads = True
    errors: list[BaseException]

    def handle_error(self, request: object, client_address: object) -> None:
        self.errors.append(sys.exc_info()[1] or RuntimeError("unknown handler error"))


class StubServer:
    """Answers with ``status``/``body`` (both changeable between requests) after ``delay`` s.
    With ``cut_after`` set, the answer declares the whole body's length but only that many
    bytes are sent before the connection is closed."""

    def __init__(
        self,
        body: bytes = b'{"jobs":[]}',
        status: int = 200,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.body, self.status, self.delay = body, status, 0.0
        self.cut_after: int | None = None
        self.seen: list[Received] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms per request

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                outer.seen.append(
                    Received(self.command, self.path, list(self.headers.items()), data)
                )
                if outer.delay:
                    time.sleep(outer.delay)
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                for name, value in extra_headers:
                    self.send_header(name, value)
                self.end_headers()
                if outer.cut_after is None:
                    self.wfile.write(outer.body)
                else:
                    self.wfile.write(outer.body[: outer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *a: object) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.errors: list[BaseException] = []
        self.server.errors = self.errors
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
