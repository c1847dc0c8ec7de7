"""Processes, CPU accounting and core pinning for the benchmarks.

Every process a benchmark starts is recorded here and stopped by its pid (never by name).
CPU time comes from /proc/PID/stat (utime + stime of every thread, plus reaped children), so each
measurement can say how much CPU the server and the load generator used.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.ports import free_port  # noqa: F401 (the benchmarks pick ports with it)

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# ---------------------------------------------------------------- core layout


@dataclass(frozen=True)
class Layout:
    """Which cores the servers and the load generator get.

    ``pinned``: servers on core 0, the load generator (wrk) on core 1: the server's CPU is not
    shared with the client, so ratios compare one core against one core.
    ``shared``: nothing pinned, everything (server and wrk) shares both cores.
    """

    name: str
    server_cpus: tuple[int, ...]
    client_cpus: tuple[int, ...]

    @property
    def server_cores(self) -> int:
        return len(self.server_cpus)

    def server_prefix(self) -> list[str]:
        return taskset_prefix(self.server_cpus)

    def client_prefix(self) -> list[str]:
        return taskset_prefix(self.client_cpus)

    def describe(self) -> str:
        if self.name == "pinned":
            return (
                f"servers on core {cpus_str(self.server_cpus)}, load generator on core "
                f"{cpus_str(self.client_cpus)} (taskset)"
            )
        return (
            f"nothing pinned: servers and load generator share cores {cpus_str(self.server_cpus)}"
        )


def cpus_str(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def layouts() -> dict[str, Layout]:
    all_cpus = tuple(range(NCPU))
    out = {"shared": Layout("shared", all_cpus, all_cpus)}
    if NCPU >= 2:
        out["pinned"] = Layout("pinned", (0,), (NCPU - 1,))
    return out


def taskset_prefix(cpus: Sequence[int]) -> list[str]:
    if len(cpus) >= NCPU:
        return []
    return ["taskset", "-c", cpus_str(cpus)]


def pin(pids: Iterable[int], cpus: Sequence[int]) -> None:
    """Pin every thread of each pid to ``cpus`` (``taskset -a -p``)."""
    for pid in pids:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cpus_str(cpus), str(pid)],
            check=False,
            capture_output=True,
        )


# ---------------------------------------------------------------- CPU accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` in seconds; 0 when it is gone.

    From /proc/PID/task/*/schedstat (the scheduler's exact run time in ns): utime/stime are
    sampled at timer ticks and misattribute CPU between processes that take turns on one core
    (a server and the slurmrestd it waits for). Falls back to utime + stime without schedstat.
    """
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        return total / 1e9
    except (OSError, ValueError):
        pass
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    # after ')': state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(x) for x in f[11:15]) / TICK


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is not None and int(f[1]) == pid:
            out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = children(p)
        found += kids
        todo += kids
    return found


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return (total - idle) / TICK, total / TICK


class CpuMeter:
    """CPU seconds used by groups of pids (and the whole machine) between start() and stop()."""

    def __init__(self, groups: dict[str, Iterable[int]]) -> None:
        self.groups = {k: list(v) for k, v in groups.items()}
        self.used: dict[str, float] = {}
        self.machine = 0.0
        self.wall = 0.0

    def _sample(self) -> dict[str, float]:
        return {k: sum(cpu_seconds(p) for p in pids) for k, pids in self.groups.items()}

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._m0 = machine_busy()[0]
        self._s0 = self._sample()
        return self

    def stop(self) -> CpuMeter:
        s1 = self._sample()
        self.machine = machine_busy()[0] - self._m0
        self.wall = time.monotonic() - self._t0
        self.used = {k: max(0.0, s1[k] - self._s0.get(k, 0.0)) for k in s1}
        return self

    def cores(self, group: str) -> float:
        """Average cores busy in ``group`` over the measurement."""
        return self.used.get(group, 0.0) / self.wall if self.wall else 0.0

    def other_cores(self) -> float:
        """Cores busy with processes outside every group (other users of the machine)."""
        ours = sum(self.used.values())
        return max(0.0, self.machine - ours) / self.wall if self.wall else 0.0


# ---------------------------------------------------------------- processes


class Procs:
    """Every process a benchmark started; ``stop_all`` ends them by pid, newest first."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log: Path, **kw: object) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "ab")  # closed with the process, in stop()
        proc = subprocess.Popen(  # type: ignore[call-overload]
            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw
        )
        proc._bench_log = fh  # type: ignore[attr-defined]
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10) -> None:
        stop_pid(proc, timeout)
        fh = getattr(proc, "_bench_log", None)
        if fh is not None:
            fh.close()
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _name, proc in reversed(list(self._procs)):
            self.stop(proc)


def stop_pid(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only this pid (gunicorn stops its workers)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_http(url: str, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = str(exc)
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s: {last}")


# ---------------------------------------------------------------- numbers


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # NaN
        return "\u2013"  # en dash: not measured
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


# ---------------------------------------------------------------- machine and versions


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).strip()


def machine_info() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        kib = int(fh.readline().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    osname = "?"
    with contextlib.suppress(OSError), open("/etc/os-release") as fh:
        for line in fh:
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip().strip('"')
    hv = _cmd(["systemd-detect-virt"]) or "none"
    return {
        "cpu": f"{model}, {NCPU} cores ({hv})",
        "memory": mem,
        "os": f"{osname}, kernel {platform.release()}",
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("PyJWT", "cryptography", "Flask", "Werkzeug", "gunicorn", "urllib3"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    out["openssl"] = _cmd(["openssl", "version"])
    out["wrk"] = _cmd(["wrk", "-v"]).splitlines()[0] if _cmd(["wrk", "-v"]) else "?"
    out["node"] = _cmd(["node", "--version"])
    pkg = ROOT / "tests/oidc-provider/node_modules/oidc-provider/package.json"
    if pkg.exists():
        import json

        out["oidc-provider"] = json.loads(pkg.read_text()).get("version", "?")
    from tests.helpers.keycloak import KEYCLOAK_VERSION

    out["Keycloak"] = KEYCLOAK_VERSION
    java = _cmd(["java", "-version"]).splitlines()
    out["java"] = java[0] if java else "?"
    return out
