"""docs/slurm.md's slurmrestd command lines, run as written against real Slurm.

Only what a test cannot use as is gets replaced: the port (a free one), the socket directory
(a fresh one), the bridge's group (root here) and SLURM_CONF (each test cluster has its own).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import requests

from tests.helpers.ports import free_port
from tests.helpers.slurm_rest import VERSIONS, BridgeCluster

T = TypeVar("T")
DOC = Path(__file__).resolve().parents[2] / "docs" / "slurm.md"
RESTD_PREFIX = "runuser -u slurmrest -- env SLURM_JWT=daemon slurmrestd"


def doc_commands() -> list[str]:
    lines = [ln.strip() for ln in DOC.read_text().splitlines() if ln.startswith("    ")]
    return [ln for ln in lines if ln.startswith((RESTD_PREFIX, "install -d", "useradd "))]


def restd_line(version: str, unix: bool) -> str:
    for line in doc_commands():
        if not line.startswith(RESTD_PREFIX) or line.endswith(".socket") != unix:
            continue
        if ("v0.0.38" in line) == (version == "22.05"):
            return line
    raise AssertionError(f"docs/slurm.md has no slurmrestd line for {version} (unix={unix})")


@contextlib.contextmanager
def run_doc_restd(bc: BridgeCluster, line: str, listen: str) -> Iterator[int]:
    argv = shlex.split(line)
    argv[argv.index("env") + 1 : argv.index("env") + 1] = [
        f"SLURM_CONF={bc.cluster.conf_in_cluster}"
    ]
    argv[-1] = listen
    prefix = ["chroot", str(bc.cluster.chroot)] if bc.cluster.chroot is not None else []
    log = bc.workdir / "doc-restd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*prefix, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def unix_get(path: Path, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(
            f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{head}Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def wait_until(check: Callable[[], T], what: str, log: Path, timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    result: T
    while time.monotonic() < deadline:
        try:
            result = check()
            return result
        except (OSError, requests.RequestException) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what}: {last!r}\n{log.read_text(errors='replace')[-2000:]}")


@pytest.mark.parametrize("version", VERSIONS)
def test_slurmrestd_tcp_as_documented(request: pytest.FixtureRequest, version: str) -> None:
    bc: BridgeCluster = request.getfixturevalue(f"slurm_{version.replace('.', '')}")
    port = free_port()
    token = bc.mint("alice")
    url = f"http://127.0.0.1:{port}/slurm/{bc.cluster.api_version}/jobs"
    headers = {"X-SLURM-USER-TOKEN": token, "X-SLURM-USER-NAME": "alice"}
    with run_doc_restd(bc, restd_line(version, unix=False), f"127.0.0.1:{port}") as group:
        r = wait_until(
            lambda: requests.get(url, headers=headers, timeout=10),
            "documented slurmrestd answering",
            bc.workdir / "doc-restd.log",
        )
        assert r.status_code == 200, r.text[:500]
        # It runs as the account the docs create: not root, not the SlurmUser.
        assert restd_uids(group) == {slurmrest_uid(bc)}


def restd_uids(group: int) -> set[int]:
    """Real uids of the slurmrestd processes in the process group we started."""
    uids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            pgid = int(text[text.rindex(")") + 2 :].split()[2])
            if comm == "slurmrestd" and pgid == group:
                status = (stat.parent / "status").read_text()
                uids.add(
                    int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
                )
    return uids


def slurmrest_uid(bc: BridgeCluster) -> int:
    passwd = bc.cluster.host_path("/etc/passwd").read_text()
    return next(int(ln.split(":")[2]) for ln in passwd.splitlines() if ln.startswith("slurmrest:"))


@pytest.mark.parametrize("version", VERSIONS)
def test_slurmrestd_unix_socket_as_documented(request: pytest.FixtureRequest, version: str) -> None:
    bc: BridgeCluster = request.getfixturevalue(f"slurm_{version.replace('.', '')}")
    install = next(ln for ln in doc_commands() if ln.startswith("install -d"))
    sock_dir_in = f"/run/sjb-doc-restd-{os.getpid()}-{version}"
    argv = shlex.split(install.replace("/run/slurmrestd", sock_dir_in))
    argv[argv.index("-g") + 1] = "root"
    prefix = ["chroot", str(bc.cluster.chroot)] if bc.cluster.chroot is not None else []
    subprocess.run([*prefix, *argv], check=True)
    sock_dir = bc.cluster.host_path(sock_dir_in)
    try:
        assert oct(sock_dir.stat().st_mode & 0o777) == "0o750"
        token = bc.mint("alice")
        headers = {"X-SLURM-USER-TOKEN": token, "X-SLURM-USER-NAME": "alice"}
        target = f"/slurm/{bc.cluster.api_version}/jobs"
        line = restd_line("26.05", unix=True)
        if version == "22.05":  # the same line with 22.05's plugin, as the TCP example shows
            line = line.replace("openapi/slurmctld", "openapi/v0.0.38")
        with run_doc_restd(bc, line, f"unix:{sock_dir_in}/slurmrestd.socket") as group:
            status, body = wait_until(
                lambda: unix_get(sock_dir / "slurmrestd.socket", target, headers),
                "documented slurmrestd on its socket",
                bc.workdir / "doc-restd.log",
            )
            assert restd_uids(group) == {slurmrest_uid(bc)}
        assert status == 200, body[:500]
    finally:
        for p in sock_dir.glob("*"):
            p.unlink()
        sock_dir.rmdir()
