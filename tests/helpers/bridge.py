"""Run the bridge for real (its own process, a free port) for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .ports import free_port

ROOT = Path(__file__).resolve().parents[2]


class BridgeServer:
    """A ``slurm-jwt-bridge serve`` process; stopped by pid."""

    def __init__(
        self,
        config_path: Path,
        port: int,
        log_path: Path,
        env: dict[str, str],
        extra: tuple[str, ...] = (),
    ) -> None:
        self.config_path = config_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        exe = Path(sys.executable).parent / "slurm-jwt-bridge"
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--config", str(config_path), "--port", str(port), *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            # Its own process group: stop() ends the workers too (by this group, never by name),
            # also when the main process exits before them.
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"bridge not ready after {timeout} s:\n{self.log_tail()}")

    def wait_granian_workers(self, workers: int, timeout: float = 60) -> None:
        """Until every granian worker has logged that it started: a stop that reaches a worker
        still starting is not seen by it, and granian kills it only after its 30 s timeout."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_text(errors="replace")
            since_start = text[text.rfind("Starting granian") :]
            if since_start.count("Started worker-") >= workers:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"granian workers not all started:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def audit_lines(self) -> list[dict]:
        import json

        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                # granian waits up to 30 s for open connections before it stops its workers.
                self.proc.wait(35)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()

    def __enter__(self) -> BridgeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_bridge(
    workdir: Path,
    config_toml: str,
    env: dict[str, str] | None = None,
    *,
    workers: int = 0,
    port: int | None = None,
    server: str = "gunicorn",
) -> BridgeServer:
    """Write ``config_toml`` (``{port}`` is replaced by the port) and start the bridge:
    the development server, or ``server`` (``serve --prod``) with ``workers`` workers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cfg = workdir / f"bridge-{port}.toml"
    cfg.write_text(config_toml.replace("{port}", str(port)))
    extra = ("--prod", "--server", server, "--workers", str(workers), "--host", "127.0.0.1")
    extra = extra if workers else ()
    bridge = BridgeServer(cfg, port, workdir / f"bridge-{port}.log", env or {}, extra)
    try:
        bridge.wait_ready()
        if workers and server == "granian":
            bridge.wait_granian_workers(workers)
    except Exception:
        bridge.stop()
        raise
    return bridge
