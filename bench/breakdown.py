"""Where an exchange's CPU goes: the same work timed in-process, step by step (no HTTP server).

Run pinned in a subprocess by ``python -m bench`` (``python -m bench.breakdown CONFIG.toml
TOKENS.json USER``); prints one JSON object of CPU microseconds per call. Comparing "Flask
/healthz in-process" with the gunicorn figure for /healthz gives the cost of gunicorn and the
kernel.

On its own, for profiling (it starts the local test issuer and makes its own keys)::

    python -m bench.breakdown --standalone                  # the JSON figures
    python -m bench.breakdown --standalone --profile exchange_RS256   # + cProfile of one case

CPU time per call (``time.process_time``) is meaningful on a busy machine when compared with
another figure of the same run; wall-clock throughput is not.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _us(fn: Callable[[], Any], n: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):  # best of 3: the least disturbed estimate of the cost
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


def cases(
    config: Path, pool: list[str], fresh: list[str], user: str
) -> dict[str, tuple[Callable[[], Any], int]]:
    """name -> (one call, calls per timing): every step measured, built on one app."""
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sjb-bench-"))
    os.environ["SLURM_JWT_BRIDGE_CONFIG"] = str(config)
    from werkzeug.test import EnvironBuilder

    from slurm_jwt_bridge import create_app
    from slurm_jwt_bridge.minting import mint_slurm_token
    from slurm_jwt_bridge.pipeline import Request
    from slurm_jwt_bridge.policy import check_account

    from .scenarios import forged
    from .servers import exchange_body

    app = create_app()
    bridge = app.extensions["slurm_jwt_bridge"]
    pipeline = bridge.pipeline
    ring = bridge.keys.current()

    def environ(
        path: str, method: str = "GET", body: str | None = None, headers: dict | None = None
    ) -> tuple[dict, bytes]:
        ct = "application/x-www-form-urlencoded" if body else None
        env = EnvironBuilder(
            path=path, method=method, data=body, content_type=ct, headers=headers
        ).get_environ()
        return env, env["wsgi.input"].read()

    def wsgi(calls: list[tuple[dict, bytes]], target: Any = app) -> Callable[[], None]:
        state = {"i": 0}

        def call() -> None:
            env, raw = calls[state["i"] % len(calls)]
            state["i"] += 1
            env = dict(env)
            env["wsgi.input"] = io.BytesIO(raw)
            for _ in target(env, lambda *a: None):
                pass

        return call

    def form(tokens: list[str], alg: str) -> list[tuple[dict, bytes]]:
        return [environ("/oauth/token", "POST", exchange_body(t, alg)) for t in tokens]

    out: dict[str, tuple[Callable[[], Any], int]] = {}
    out["flask_healthz"] = (wsgi([environ("/healthz")]), 2000)
    jwks = environ("/.well-known/jwks.json")
    out["flask_jwks"] = (wsgi([jwks]), 2000)
    for alg, n in (("HS256", 2000), ("RS256", 400)):
        out[f"flask_exchange_{alg}"] = (wsgi(form(pool, alg)), n)
    out["flask_refused_signature"] = (wsgi(form(forged(pool), "RS256")), 1000)
    # the same exchange through Flask's view, without the fast path in front (web/token_door.py)
    view = app.wsgi_app.app
    out["flask_view_exchange_HS256"] = (wsgi(form(pool, "HS256"), view), 2000)
    out["flask_view_refused_signature"] = (wsgi(form(forged(pool), "RS256"), view), 1000)
    token = pool[0]
    origin = Request("token-exchange", "127.0.0.1")
    out["pipeline_exchange_HS256"] = (
        lambda: pipeline.exchange(token, alg="HS256", request=origin),
        2000,
    )
    # the pipeline's private steps, timed one by one
    out["verify_cached"] = (lambda: pipeline._verify(token), 5000)
    it = iter(fresh)
    out["verify_uncached"] = (lambda: pipeline._verify(next(it)), (len(fresh) - 10) // 4)
    verified = pipeline._verify(token)
    out["map_grant"] = (lambda: pipeline._grant_for(verified), 5000)
    policy = bridge.settings.policy
    required = bridge.settings.mapping.require_local_account
    out["policy_getpwnam"] = (lambda: check_account(user, policy, required), 5000)
    out["mint_HS256"] = (lambda: mint_slurm_token(ring, user, 1800, "HS256"), 5000)
    out["mint_RS256"] = (lambda: mint_slurm_token(ring, user, 1800, "RS256"), 300)
    fields = {
        "door": "token-exchange",
        "remote_addr": "127.0.0.1",
        "issuer": "idp",
        "sub": "x" * 20,
        "client": "portal",
        "user": user,
        "kind": "user",
        "alg": "RS256",
        "kid": "k" * 43,
        "jti": "j" * 22,
        "exp": 1700000000,
    }
    out["audit_line"] = (lambda: pipeline.audit.record("exchange", "minted", **fields), 5000)
    if pipeline.observer is not None:
        obs = pipeline.observer
        out["metrics"] = (lambda: obs.minted(fields, 0.001), 5000)
    return out


def interleaved(
    call: Callable[[], Any],
    before: Callable[[], None],
    after: Callable[[], None],
    n: int = 200,
    batches: int = 30,
) -> tuple[float, float]:
    """Median CPU µs per ``call`` with ``before()`` then with ``after()`` in force, in
    alternating batches of ``n`` calls in this one process: how one change was judged on a
    machine shared with other work (both sides see the same disturbances)."""
    sides: dict[int, list[float]] = {0: [], 1: []}
    for i in range(2 * batches):
        side = (i + i // 2) % 2  # 0 1 1 0 0 1 1 0 ...: neither side always goes first
        (after if side else before)()
        call()
        t0 = time.process_time()
        for _ in range(n):
            call()
        sides[side].append((time.process_time() - t0) / n * 1e6)
    before()
    return statistics.median(sides[0]), statistics.median(sides[1])


def measure(config: Path, pool: list[str], fresh: list[str], user: str) -> dict[str, float]:
    return {name: _us(fn, n) for name, (fn, n) in cases(config, pool, fresh, user).items()}


def profile(fn: Callable[[], Any], n: int, top: int = 35) -> str:
    """cProfile of ``n`` calls of ``fn``: the functions with the most own time, then the most
    cumulative time."""
    fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def standalone_cases(
    wanted: str = "", edit: Callable[[str], str] = str
) -> tuple[dict[str, tuple[Callable[[], Any], int]], Callable[[], None]]:
    """The cases on a local issuer with fresh keys and the benchmark's configuration (``edit``
    may change its TOML text; no gunicorn, no wrk), and the function that stops the issuer."""
    import pwd

    from slurm_jwt_bridge.keys import init_keys

    from .scenarios import bench_users
    from .servers import BridgeConfig, Upstream, bridge_toml

    wd = Path(tempfile.mkdtemp(prefix="sjb-breakdown-"))
    upstream = Upstream()
    init_keys(wd / "keys")
    users = bench_users()
    try:
        pwd.getpwnam(users[-1])
        local = True
    except KeyError:  # python -m bench (as root) creates them
        local = False
    cfg = wd / "bridge.toml"
    cfg.write_text(
        edit(
            bridge_toml(
                wd, 0, wd / "keys", upstream, BridgeConfig(1, 1, "file", local_accounts=local)
            )
        )
    )
    pool = upstream.tokens(users)
    fresh = upstream.many_tokens(
        users, 1200 if "verify_uncached" in (wanted or "verify_uncached") else 50
    )
    return cases(cfg, pool, fresh, users[len(users) // 2]), upstream.stop


def standalone(args: argparse.Namespace) -> None:
    table, stop = standalone_cases(args.profile or args.only or "")
    try:
        if args.profile:
            fn, n = table[args.profile]
            print(profile(fn, args.calls or n, args.top))
            print(f"{args.profile}: {_us(fn, args.calls or n):.1f} us CPU per call (best of 3)")
            return
        only = [x for x in (args.only or "").split(",") if x] or list(table)
        print(json.dumps({name: _us(*table[name]) for name in only}))
    finally:
        stop()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    ap = argparse.ArgumentParser(prog="python -m bench.breakdown")
    ap.add_argument("config", nargs="?")
    ap.add_argument("tokens", nargs="?")
    ap.add_argument("user", nargs="?")
    ap.add_argument("--standalone", action="store_true")
    ap.add_argument("--profile", help="one case name, e.g. flask_exchange_RS256")
    ap.add_argument("--only", help="comma list of case names (--standalone)")
    ap.add_argument("--calls", type=int, default=0)
    ap.add_argument("--top", type=int, default=35)
    a = ap.parse_args()
    if a.standalone:
        standalone(a)
    else:
        data = json.loads(Path(a.tokens).read_text())
        print(json.dumps(measure(Path(a.config), data["pool"], data["fresh"], a.user)))
