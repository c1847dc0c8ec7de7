"""Debian's nginx for tests and benchmarks: one process (no master, no daemon) serving the
given ``http``-level configuration from a private prefix; stopped by pid."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUTH_REQUEST_EXAMPLE = ROOT / "examples" / "nginx" / "slurmrestd-auth-request.conf"


def nginx_executable() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )


class Nginx:
    def __init__(self, proc: subprocess.Popen, port: int, workdir: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown of this one process
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def auth_request_site(
    example: str, listen_port: int, restd: str, bridge: str, cache_dir: Path, cache: bool = True
) -> str:
    """examples/nginx/slurmrestd-auth-request.conf with its listen line, the two upstream
    addresses (as a site admin is told to edit it) and the cache directory replaced; without
    ``cache``, the cache lines deleted as the example's comment describes."""
    text = example
    for pattern, value in (
        (r"proxy_cache_path /run/nginx-slurm-jwt-bridge ", f"proxy_cache_path {cache_dir} "),
        (r"listen 127\.0\.0\.1:8443;", f"listen 127.0.0.1:{listen_port};"),
        (r"server 127\.0\.0\.1:6820;", f"server {restd};"),
        (r"server 127\.0\.0\.1:8000;", f"server {bridge};"),
    ):
        text, n = re.subn(pattern, value, text)
        if n != 1:
            raise ValueError(f"the example no longer has exactly one {pattern!r}")
    if not cache:
        text, n = re.subn(r"\n\s*proxy_cache_path[^;]*;", "", text)
        text, m = re.subn(r"\n\s*proxy_(cache|cache_key|cache_bypass|no_cache) [^;]*;", "", text)
        if (n, m) != (1, 4):
            raise ValueError(f"the example's cache lines changed ({n} path, {m} directives)")
    return text


def start_nginx(
    workdir: Path,
    http_conf: str,
    port: int,
    *,
    prefix_cmd: Sequence[str] = (),
    timeout: float = 15.0,
) -> Nginx:
    """Run nginx with ``http_conf`` inside ``http { }`` (it must listen on ``port``); wait until
    the port answers HTTP."""
    exe = nginx_executable()
    if exe is None:
        raise RuntimeError("nginx is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
{http_conf}
}}
"""
    )
    log = open(workdir / "stdout.log", "ab")
    try:
        proc = subprocess.Popen(
            [*prefix_cmd, exe, "-p", str(workdir), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()
    server = Nginx(proc, port, workdir)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}: {server.error_log()[-2000:]}")
        try:
            with urllib.request.urlopen(server.url + "/", timeout=2):
                return server
        except urllib.error.HTTPError:
            return server  # any HTTP answer means it is serving
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"nginx did not listen: {server.error_log()[-2000:]}") from None
            time.sleep(0.05)
