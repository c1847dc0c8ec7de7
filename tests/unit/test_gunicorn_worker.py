"""The gthread worker's bounds on a client's waits (gunicorn_worker.py)."""

from __future__ import annotations

import socket
import threading

from slurm_jwt_bridge.gunicorn_worker import bound_waits


def test_attack_a_client_that_stops_reading_cannot_keep_a_write_waiting() -> None:
    """A logged-in client asks for a large answer and never reads it: the write fails instead
    of holding the worker's thread."""
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    bound_waits(server, 0.5)
    outcome: list[BaseException | None] = []

    def answer() -> None:
        try:
            server.sendall(b"x" * 50_000_000)  # the client reads none of it
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    writer = threading.Thread(target=answer, daemon=True)
    writer.start()
    writer.join(60)  # a bound on this test, not a speed check: unbounded, it never returns
    try:
        assert not writer.is_alive(), "the write still waits on a client that reads nothing"
        assert isinstance(outcome[0], OSError), outcome
    finally:
        server.close()
        client.close()


def test_a_client_that_stops_sending_cannot_keep_a_read_waiting() -> None:
    server, client = socket.socketpair()
    bound_waits(server, 0.5)
    try:
        client.sendall(b"POST / HTTP/1.1\r\n")  # and then nothing
        assert server.recv(100)
        try:
            server.recv(100)
        except OSError as exc:
            assert isinstance(exc, BlockingIOError)
        else:
            raise AssertionError("the read returned although the client sent nothing more")
    finally:
        server.close()
        client.close()
