"""Soak: the bridge under gunicorn at half its measured capacity for --minutes (default 10).

    .venv/bin/python bench/soak.py [--minutes 10] [--workers 5] [--fraction 0.5] [--out FILE]

What runs, all on 127.0.0.1: a local identity provider (tests/helpers/test_issuer.py), a stub
slurmrestd, and ``slurm-jwt-bridge serve --prod`` (gunicorn,
slurm_jwt_bridge.gunicorn_conf). The traffic
mix: token exchanges (POST /oauth/token) with a pool of identity-provider tokens, proxied
requests (GET /slurm/v0.0.44/jobs), JWKS and health reads, and a few bad tokens (their 400 is
expected, not an error).

1. Capacity: closed loop (--clients threads sending back to back) for --capacity-seconds,
   after a warm-up; capacity = answered requests per second.
2. Soak: open loop at --fraction x capacity for --minutes: requests are scheduled at fixed
   times, so a slow server shows as lateness, not as a lower rate.
3. Every --sample-seconds: VmRSS of every gunicorn worker (from /proc).

Errors are any unexpected status, any exception, or a worker that restarted. The run ends by
itself and prints a JSON report (also written to --out): capacity, rates, latencies, errors,
and per worker RSS at the start and end of the soak with its growth. Exit 0 when there were no
errors and no worker grew by more than --max-rss-growth-mb, else 1.

Not part of ``make test``: it takes --minutes plus about a minute.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slurm_jwt_bridge.keys import init_keys  # noqa: E402
from tests.helpers.bridge import BridgeServer, start_bridge  # noqa: E402
from tests.helpers.stub_http import StubServer  # noqa: E402
from tests.helpers.test_issuer import TestIssuer  # noqa: E402

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
MIX = (("exchange", 60), ("proxy", 25), ("jwks", 8), ("healthz", 4), ("bad_token", 3))
EXPECTED = {"exchange": 200, "proxy": 200, "jwks": 200, "healthz": 200, "bad_token": 400}


def config(keys: Path, audit: Path, issuer: str, upstream: str) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {{port}}
[keys]
dir = "{keys}"
[audit]
destination = "file:{audit}"
[browser]
enabled = false
[rate_limit]
enabled = false
[[issuers]]
name = "idp"
kind = "oidc"
issuer = "{issuer}"
audiences = ["bridge"]
[mapping]
require_local_account = false
[[mapping.rules]]
claim = "preferred_username"
[proxy]
upstream = "{upstream}"
read_timeout = 10
"""


# ---------------------------------------------------------------- the load


class Load:
    def __init__(self, url: str, tokens: list[str], bad: list[str]) -> None:
        self.url = url
        self.tokens = tokens
        self.bad = bad
        self.kinds = [k for k, w in MIX for _ in range(w)]
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.done = 0
            self.latencies: list[float] = []
            self.statuses: Counter[str] = Counter()
            self.errors: Counter[str] = Counter()
            self.examples: list[str] = []
            self.late = 0

    def one(self, session: requests.Session, rng: random.Random) -> None:
        kind = rng.choice(self.kinds)
        started = time.perf_counter()
        try:
            if kind in ("exchange", "bad_token"):
                token = rng.choice(self.tokens if kind == "exchange" else self.bad)
                form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT}
                r = session.post(f"{self.url}/oauth/token", data=form, timeout=30)
            elif kind == "proxy":
                auth = {"Authorization": f"Bearer {rng.choice(self.tokens)}"}
                r = session.get(f"{self.url}/slurm/v0.0.44/jobs", headers=auth, timeout=30)
            elif kind == "jwks":
                r = session.get(f"{self.url}/.well-known/jwks.json", timeout=30)
            else:
                r = session.get(f"{self.url}/healthz", timeout=30)
            status = r.status_code
            error = None if status == EXPECTED[kind] else f"{kind} HTTP {status}"
            detail = r.text[:160]
        except requests.RequestException as exc:
            status = 0
            error = f"{kind} {type(exc).__name__}"
            detail = str(exc)[:160]
        elapsed = time.perf_counter() - started
        with self.lock:
            self.done += 1
            self.latencies.append(elapsed)
            self.statuses[f"{kind} {status}"] += 1
            if error:
                self.errors[error] += 1
                if len(self.examples) < 10:
                    self.examples.append(f"{error}: {detail}")

    def closed_loop(self, clients: int, seconds: float) -> float:
        """Requests per second with ``clients`` threads sending back to back."""
        stop = time.monotonic() + seconds
        self.reset()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            with requests.Session() as s:
                while time.monotonic() < stop:
                    self.one(s, rng)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.done / (time.monotonic() - started)

    def open_loop(self, rate: float, seconds: float, clients: int, on_tick: Any) -> float:
        """Send at ``rate`` per second for ``seconds``; returns the achieved rate."""
        self.reset()
        slots = itertools.count()
        start = time.monotonic() + 0.5
        end = start + seconds

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            with requests.Session() as s:
                while True:
                    with self.lock:
                        i = next(slots)
                    due = start + i / rate
                    if due >= end:
                        return
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -1.0:
                        with self.lock:
                            self.late += 1
                    self.one(s, rng)

        threads = [threading.Thread(target=worker, args=(1000 + i,)) for i in range(clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            on_tick()
            time.sleep(0.5)
        for t in threads:
            t.join()
        return self.done / seconds


# ---------------------------------------------------------------- gunicorn workers


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return sorted(out)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def slope_kib_per_min(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 2:
        return 0.0
    xs = [t / 60 for t, _ in samples]
    ys = [float(v) for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fraction", type=float, default=0.5, help="of the measured capacity")
    ap.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    ap.add_argument("--clients", type=int, default=32, help="load-generator threads")
    ap.add_argument("--capacity-seconds", type=float, default=20.0)
    ap.add_argument("--sample-seconds", type=float, default=15.0)
    ap.add_argument("--tokens", type=int, default=500, help="distinct IdP tokens (users)")
    ap.add_argument("--max-rss-growth-mb", type=float, default=10.0)
    ap.add_argument("--out", type=Path, help="also write the JSON report here")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sjb-soak-"))
    keys = work / "keys"
    init_keys(keys)
    idp_server = TestIssuer().start()
    idp = idp_server.add_issuer("/idp")
    upstream = StubServer(b'{"jobs":[],"warnings":[],"errors":[]}')
    lifetime = int(args.minutes * 60) + 3600
    tokens = [
        idp.mint(
            {
                **idp.oidc_claims(sub=f"s{i}", aud="bridge", preferred_username=f"user{i:04d}"),
                "exp": idp.now() + lifetime,
            }
        )
        for i in range(args.tokens)
    ]
    bad = [t[:-6] + "AAAAAA" for t in tokens[:20]] + ["not.a.token"]
    bridge: BridgeServer | None = None
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": {}}
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    try:
        bridge = start_bridge(
            work / "bridge",
            config(keys, work / "audit.log", idp.issuer, upstream.url),
            workers=args.workers,
        )
        load = Load(bridge.url, tokens, bad)
        master = bridge.proc.pid
        print(f"bridge {bridge.url} gunicorn master {master}", file=sys.stderr)
        load.closed_loop(args.clients, 5.0)  # warm-up: caches, connections, imports
        capacity = load.closed_loop(args.clients, args.capacity_seconds)
        cap_errors = dict(load.errors)
        report["capacity_rps"] = round(capacity, 1)
        report["capacity_p50_ms"] = round(percentile(load.latencies, 50) * 1000, 2)
        report["capacity_p99_ms"] = round(percentile(load.latencies, 99) * 1000, 2)
        report["capacity_errors"] = cap_errors
        rate = capacity * args.fraction
        print(f"capacity {capacity:.1f} req/s; soaking at {rate:.1f} req/s", file=sys.stderr)

        workers = children(master)
        series: dict[int, list[tuple[float, int]]] = {pid: [] for pid in workers}
        soak_start = time.monotonic()
        next_sample = [soak_start]

        def tick() -> None:
            now = time.monotonic()
            if now < next_sample[0]:
                return
            next_sample[0] = now + args.sample_seconds
            for pid in children(master):
                value = rss_kib(pid)
                if value is not None:
                    series.setdefault(pid, []).append((now - soak_start, value))
            print(
                f"t={now - soak_start:6.0f}s done={load.done} errors={sum(load.errors.values())} "
                f"rss={[s[-1][1] // 1024 for s in series.values() if s]} MiB",
                file=sys.stderr,
            )

        achieved = load.open_loop(rate, args.minutes * 60, args.clients, tick)
        next_sample[0] = 0
        tick()
        restarted = sorted(set(series) ^ set(workers))
        per_worker = {}
        worst_growth = 0.0
        for pid, samples in series.items():
            if not samples:
                continue
            start_kib, end_kib = samples[0][1], samples[-1][1]
            growth = (end_kib - start_kib) / 1024
            worst_growth = max(worst_growth, growth)
            per_worker[str(pid)] = {
                "rss_start_mib": round(start_kib / 1024, 1),
                "rss_end_mib": round(end_kib / 1024, 1),
                "rss_max_mib": round(max(v for _, v in samples) / 1024, 1),
                "growth_mib": round(growth, 2),
                "slope_kib_per_min": round(slope_kib_per_min(samples), 1),
                "samples": len(samples),
            }
        lat = load.latencies
        report.update(
            {
                "target_rps": round(rate, 1),
                "achieved_rps": round(achieved, 1),
                "minutes": args.minutes,
                "requests": load.done,
                "statuses": dict(sorted(load.statuses.items())),
                "errors": dict(load.errors),
                "error_examples": load.examples,
                "late_over_1s": load.late,
                "latency_ms": {
                    "p50": round(percentile(lat, 50) * 1000, 2),
                    "p95": round(percentile(lat, 95) * 1000, 2),
                    "p99": round(percentile(lat, 99) * 1000, 2),
                    "max": round(max(lat, default=0) * 1000, 2),
                },
                "gunicorn_workers": per_worker,
                "workers_restarted": restarted,
                "worst_rss_growth_mib": round(worst_growth, 2),
            }
        )
        ok = not load.errors and not restarted and worst_growth <= args.max_rss_growth_mb
        report["verdict"] = "pass" if ok else "fail"
    finally:
        if bridge is not None:
            bridge.stop()
        upstream.close()
        idp_server.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report.get("verdict") == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
