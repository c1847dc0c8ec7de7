"""The load generator: Debian's ``wrk`` 4.1 with bench/lua/replay.lua, pinned with taskset.

wrk2's constant-rate mode is not in Debian; replay.lua paces requests with wrk's own delay()
hook instead (a per-thread schedule of send times), see the script's header. Each run reports
throughput, latency percentiles, errors, and the CPU the server and wrk itself used.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .common import CpuMeter, Layout

LUA = Path(__file__).resolve().parent / "lua" / "replay.lua"


@dataclass
class Req:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""

    def line(self) -> str:
        hdrs = "\x01".join(f"{k}: {v}" for k, v in self.headers.items())
        for part in (self.method, self.path, hdrs, self.body):
            if "\t" in part or "\n" in part:
                raise ValueError("request fields may not contain tabs or newlines")
        return f"{self.method}\t{self.path}\t{hdrs}\t{self.body}"


def write_requests(reqs: Iterable[Req], directory: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix="reqs-", suffix=".txt", dir=directory)
    with os.fdopen(fd, "w") as fh:
        for r in reqs:
            fh.write(r.line() + "\n")
    return Path(name)


@dataclass
class Result:
    """One wrk run."""

    label: str
    connections: int
    target_rate: float  # 0 = closed loop
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non2xx: int
    wraps: int
    server_cores: float  # average cores the server processes used
    client_cores: float  # average cores wrk used
    other_cores: float  # cores used by anything else on the machine meanwhile
    server_cpu_us_per_req: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_wrk(
    url: str,
    requests_file: Path,
    *,
    layout: Layout,
    server_pids: Sequence[int],
    duration: float,
    connections: int = 8,
    threads: int = 1,
    rate: float = 0,
    mode: str = "cycle",
    label: str = "",
    timeout_s: int = 5,
    start: int = 0,
) -> Result:
    """One wrk run; ``start`` (distinct mode) skips the lines earlier runs already sent."""
    env = {
        **os.environ,
        "BENCH_REQUESTS": str(requests_file),
        "BENCH_RATE": str(int(rate)),
        "BENCH_MODE": mode,
        "BENCH_THREADS": str(threads),
        "BENCH_START": str(start),
    }
    argv = [
        *layout.client_prefix(),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    meter = CpuMeter({"server": server_pids}).start()
    try:
        out, err = proc.communicate(timeout=duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    meter.stop()
    # wrk's CPU: the rusage of reaped children (wrk is the only child reaped meanwhile).
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    meter.used["client"] = client_cpu
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {proc.returncode}):\n{out}\n{err}")
    d = json.loads(line[6:])
    seconds = d["duration_us"] / 1e6
    errors = d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"]
    return Result(
        label=label,
        connections=connections,
        target_rate=rate,
        requests=d["requests"],
        seconds=seconds,
        rps=d["requests"] / seconds if seconds else 0.0,
        p50_ms=d["p50"] / 1000,
        p90_ms=d["p90"] / 1000,
        p95_ms=d["p95"] / 1000,
        p99_ms=d["p99"] / 1000,
        max_ms=d["max"] / 1000,
        errors=errors,
        non2xx=d["err_status"],
        wraps=d["wraps"],
        server_cores=meter.cores("server"),
        client_cores=meter.cores("client"),
        other_cores=meter.other_cores(),
        server_cpu_us_per_req=(meter.used["server"] / d["requests"] * 1e6) if d["requests"] else 0,
    )
