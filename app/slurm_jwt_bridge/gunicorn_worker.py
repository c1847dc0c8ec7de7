"""gunicorn's gthread worker with a bound on how long a client may keep a thread waiting.

gunicorn reads a request's headers, and the application its body, in a worker thread with a
blocking socket: a client that announces ``Content-Length: 1000`` and sends nothing (or stops in
the middle of its headers) holds that thread for as long as it keeps the connection open. A few
such clients hold every thread, before any authentication, and even ``/healthz`` hangs.

This worker sets ``SO_RCVTIMEO`` on every client socket: a read that waits longer than
``GUNICORN_CLIENT_TIMEOUT`` seconds (default 10) fails, the request is answered 408 (a body
that stopped) or the connection is closed (headers that stopped), and the thread is free again.
``SO_SNDTIMEO`` does the same for writes: a client that stops reading a large answer (a long
job list relayed from slurmrestd) loses its connection instead of keeping the thread. Like
nginx's ``client_header_timeout``/``client_body_timeout``/``send_timeout`` it bounds each wait
between two reads or writes, not the whole request: keep a buffering front proxy in front
(docs/deploy.md).
"""

from __future__ import annotations

import os
import socket
import struct

from gunicorn.workers.gthread import TConn, ThreadWorker

CLIENT_TIMEOUT_ENV = "GUNICORN_CLIENT_TIMEOUT"


def client_timeout() -> float:
    value = float(os.environ.get(CLIENT_TIMEOUT_ENV, "10"))
    if not value > 0:
        raise ValueError(f"{CLIENT_TIMEOUT_ENV} must be a positive number of seconds")
    return value


def bound_waits(sock: socket.socket, seconds: float) -> None:
    """Every blocking read and write on ``sock`` that waits longer than ``seconds`` fails.

    The options hold whatever blocking mode gunicorn puts the socket in later: a blocking
    recv() or send() that waited this long fails with EAGAIN instead of waiting on."""
    value = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class BoundedReadWorker(ThreadWorker):
    """gthread, every client read and write bounded by ``GUNICORN_CLIENT_TIMEOUT`` seconds."""

    def init_process(self) -> None:
        self._client_timeout = client_timeout()
        super().init_process()

    def enqueue_req(self, conn: TConn) -> None:
        bound_waits(conn.sock, self._client_timeout)
        super().enqueue_req(conn)
