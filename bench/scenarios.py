"""What ``python -m bench`` measures; each function returns plain dicts for bench/report.py."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ceiling import inprocess, openssl_rsa2048
from .common import Layout, Procs, cpu_seconds, free_port, median
from .loadgen import Req, Result, run_wrk, write_requests
from .report import LIMITED_ADDRESSES
from .servers import (
    BridgeConfig,
    Upstream,
    exchange_body,
    granian_installed,
    plain_proxy_conf,
    restd_pids,
    start_bridge,
    start_keycloak,
    start_nginx,
    start_oauth2_proxy,
    start_oidc_provider,
    start_slurm,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BENCH_USER_PREFIX = "sjbb"
BENCH_USERS = 200
BENCH_UID_MIN = 20001


@dataclass
class Plan:
    """Round counts and lengths (``--quick`` shrinks them)."""

    rounds: int = 3
    duration: float = 10.0
    short: float = 5.0  # sweeps, latency levels, one-connection runs, JWKS
    warmup: float = 2.0
    connections: int = 8  # closed loop, like the reference figures (wrk -t1 -c8)
    paced_connections: int = 32  # constant-rate runs: enough that pacing never waits on them
    ceiling_seconds: int = 3


@dataclass
class Ctx:
    plan: Plan
    layouts: dict[str, Layout]
    workdir: Path
    procs: Procs
    log: Any
    results: dict[str, Any] = field(default_factory=dict)


def _series(
    ctx: Ctx,
    url: str,
    reqs_file: Path,
    layout: Layout,
    pids: list[int],
    label: str,
    *,
    rounds: int | None = None,
    duration: float | None = None,
    connections: int | None = None,
    rate: float = 0,
    mode: str = "cycle",
    warm: bool = True,
) -> list[Result]:
    plan = ctx.plan
    conns = connections or (plan.paced_connections if rate else plan.connections)
    if warm:
        run_wrk(
            url,
            reqs_file,
            layout=layout,
            server_pids=pids,
            duration=plan.warmup,
            connections=conns,
            rate=rate,
            mode="cycle" if mode == "distinct" else mode,
        )
    out = []
    sent = 0  # distinct mode: lines earlier rounds sent (each round starts past them)
    for i in range(rounds or plan.rounds):
        r = run_wrk(
            url,
            reqs_file,
            layout=layout,
            server_pids=pids,
            duration=duration or plan.duration,
            connections=conns,
            rate=rate,
            mode=mode,
            label=label,
            start=sent,
        )
        # wrk builds one request per thread it never sends, and one per connection may have
        # been in flight when the round ended
        sent += r.requests + conns + 1
        ctx.log(
            f"  {label} [{layout.name}] round {i + 1}: {r.rps:,.0f}/s p50 {r.p50_ms:.2f} ms "
            f"p99 {r.p99_ms:.2f} ms server {r.server_cores:.2f} cores, wrk {r.client_cores:.2f}, "
            f"other {r.other_cores:.2f}, non-2xx {r.non2xx}, errors {r.errors}"
        )
        out.append(r)
    return out


def summarize(rounds: list[Result]) -> dict[str, Any]:
    def med(attr: str) -> float:
        return median([getattr(r, attr) for r in rounds])

    return {
        "rounds": [r.as_dict() for r in rounds],
        "rps": med("rps"),
        "p50_ms": med("p50_ms"),
        "p95_ms": med("p95_ms"),
        "p99_ms": med("p99_ms"),
        "server_cores": med("server_cores"),
        "client_cores": med("client_cores"),
        "other_cores": med("other_cores"),
        "cpu_us": med("server_cpu_us_per_req"),
        "non2xx": sum(r.non2xx for r in rounds),
        "errors": sum(r.errors for r in rounds),
        "wraps": sum(r.wraps for r in rounds),
    }


# ---------------------------------------------------------------- 1. the ceiling


def ceiling(ctx: Ctx) -> None:
    out: dict[str, Any] = {}
    for name, layout in ctx.layouts.items():
        ossl, inproc = [], []
        for i in range(ctx.plan.rounds):
            ossl.append(openssl_rsa2048(layout, ctx.plan.ceiling_seconds))
            inproc.append(inprocess(layout, min(2.0, ctx.plan.ceiling_seconds)))
            ctx.log(
                f"  ceiling [{name}] round {i + 1}: openssl rsa2048 {ossl[-1]['sign_s']:,.0f} "
                f"sign/s, PyJWT RS256 {inproc[-1]['pyjwt_rs256_s']:,.0f}/s, "
                f"HS256 {inproc[-1]['pyjwt_hs256_s']:,.0f}/s"
            )
        out[name] = {
            "cores": layout.server_cores,
            "openssl_rounds": ossl,
            "inprocess_rounds": inproc,
            "openssl_sign_s": median([r["sign_s"] for r in ossl]),
            "openssl_verify_s": median([r["verify_s"] for r in ossl]),
            **{k: median([r[k] for r in inproc]) for k in inproc[0]},
        }
    ctx.results["ceiling"] = out


# ---------------------------------------------------------------- users and tokens


def bench_users() -> list[str]:
    return [f"{BENCH_USER_PREFIX}{i:03d}" for i in range(1, BENCH_USERS + 1)]


def ensure_bench_users(log: Any) -> bool:
    """200 local accounts (locked, no login shell, no home) so the policy's getpwnam finds them,
    as it would find real users in production. Created once, left in place (the Slurm test
    accounts are too); ``python -m bench --remove-users`` deletes them. False without root."""
    import pwd

    if os.geteuid() != 0:
        return False
    missing = []
    for name in bench_users():
        try:
            pwd.getpwnam(name)
        except KeyError:
            missing.append(name)
    if missing:
        log(f"creating {len(missing)} local benchmark accounts {missing[0]}..{missing[-1]}")
    for name in missing:
        uid = BENCH_UID_MIN + int(name[len(BENCH_USER_PREFIX) :]) - 1
        base = ["useradd", "-M", "-N", "-g", "nogroup", "-s", "/usr/sbin/nologin"]
        base += ["-d", "/nonexistent"]
        r = subprocess.run([*base, "-u", str(uid), name], capture_output=True, text=True)
        if r.returncode != 0:  # that uid is taken: let useradd pick one from 20000 up
            r = subprocess.run([*base, "-K", "UID_MIN=20000", name], capture_output=True, text=True)
        if r.returncode != 0:
            log(f"useradd {name} failed: {r.stderr.strip()}")
            return False
    return True


def remove_bench_users(log: Any) -> None:
    import pwd

    for name in bench_users():
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        subprocess.run(["userdel", name], capture_output=True)
    log("benchmark accounts removed")


# ---------------------------------------------------------------- 2. the bridge: exchanges


def _exchange_reqs(tokens: list[str], alg: str) -> list[Req]:
    return [Req("POST", "/oauth/token", FORM, exchange_body(t, alg)) for t in tokens]


SWEEP = {
    "pinned": [(1, 1), (1, 2), (2, 1), (1, 4)],
    "shared": [(2, 1), (2, 2), (3, 1), (4, 1), (5, 4)],
}
# A sweep's rounds are single and short: configurations within this fraction of the fastest
# are a tie, and the first of them in sweep order (the fewest workers and threads) is used.
SWEEP_TIE = 0.95


def pick_best(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The first configuration of ``sweep`` within SWEEP_TIE of the fastest one."""
    fastest = max(s["rps"] for s in sweep)
    return next(s for s in sweep if s["rps"] >= SWEEP_TIE * fastest)


def exchange(ctx: Ctx, upstream: Upstream, keys_dir: Path, local_users: bool) -> None:
    plan = ctx.plan
    users = bench_users()
    pool = upstream.tokens(users)
    wd = ctx.workdir / "exchange"
    wd.mkdir(exist_ok=True)
    files = {alg: write_requests(_exchange_reqs(pool, alg), wd) for alg in ("RS256", "HS256")}
    out: dict[str, Any] = {"users": len(users), "local_users": local_users, "layouts": {}}
    for name, layout in ctx.layouts.items():
        base = BridgeConfig(1, 1, "file", local_accounts=local_users)
        sweep, cfg = _exchange_sweep(ctx, base, wd, keys_dir, upstream, layout, files["RS256"])
        res: dict[str, Any] = {
            "sweep": sweep,
            "config": cfg.describe(),
            "workers": cfg.workers,
            "threads": cfg.threads,
        }
        distinct_file: Path | None = None
        b = start_bridge(wd, keys_dir, upstream, cfg, layout, ctx.procs)
        try:
            res.update(_pool_series(ctx, b, files, layout, wd))
            if name == "pinned":
                cap = res["RS256-pool"]["rps"]
                res["latency"] = _latency_levels(ctx, b, files["RS256"], layout, "RS256", cap)
                # distinct tokens: every request verifies a new upstream signature
                # enough for every round without a repeat, with room for a faster granian
                room = 2.0 if granian_installed() else 1.3
                count = int(cap * room * plan.duration * plan.rounds) + 500
                ctx.log(f"  minting {count} distinct upstream tokens")
                t0 = time.monotonic()
                distinct = upstream.many_tokens(users, count)
                ctx.log(f"  minted in {time.monotonic() - t0:.1f} s")
                distinct_file = write_requests(_exchange_reqs(distinct, "RS256"), wd)
                del distinct
                res["RS256-distinct"] = _distinct_series(ctx, b, distinct_file, layout)
                res.update(_refusals(ctx, b, upstream, pool, local_users, layout, wd))
        finally:
            b.stop()
        if name == "pinned" and distinct_file is not None:
            try:
                if granian_installed():
                    # the other server `serve --prod` offers, at its own sweep's pick
                    gbase = dataclasses.replace(base, server="granian")
                    gsweep, gcfg = _exchange_sweep(
                        ctx, gbase, wd, keys_dir, upstream, layout, files["RS256"]
                    )
                    res["granian"] = _server_series(
                        ctx, gcfg, wd, keys_dir, upstream, layout, files, distinct_file, pool
                    )
                    res["granian"]["sweep"] = gsweep
                else:
                    ctx.log("  granian is not installed (pip install '.[granian]'): not measured")
            finally:
                distinct_file.unlink()
        if name == "pinned":
            cfg_none = BridgeConfig(cfg.workers, cfg.threads, "none", local_accounts=local_users)
            b = start_bridge(wd, keys_dir, upstream, cfg_none, layout, ctx.procs)
            try:
                res["RS256-pool-audit-none"] = summarize(
                    _series(ctx, b.url, files["RS256"], layout, b.pids(), "RS256 audit none")
                )
            finally:
                b.stop()
            res["RS256-pool-rate-limited"] = _rate_limited_series(
                ctx, cfg, wd, keys_dir, upstream, layout, pool
            )
        out["layouts"][name] = res
    ctx.results["exchange"] = out
    layout = ctx.layouts.get("pinned") or next(iter(ctx.layouts.values()))
    out["breakdown"] = breakdown(ctx, upstream, keys_dir, local_users, pool, layout)


def _exchange_sweep(
    ctx: Ctx,
    base: BridgeConfig,
    wd: Path,
    keys_dir: Path,
    upstream: Upstream,
    layout: Layout,
    reqs: Path,
) -> tuple[list[dict[str, Any]], BridgeConfig]:
    """Workers x threads for ``base.server``: one short round each, RS256, token pool; the
    rounds and the configuration ``pick_best`` takes from them. Each server gets its own sweep
    (a second worker on one core costs granian more than gunicorn)."""
    sweep = []
    for w, t in SWEEP.get(layout.name, [(1, 1)]):
        trial = dataclasses.replace(base, workers=w, threads=t)
        b = start_bridge(wd, keys_dir, upstream, trial, layout, ctx.procs)
        try:
            label = f"sweep {base.server} {w}x{t}"
            r = _series(
                ctx, b.url, reqs, layout, b.pids(), label, rounds=1, duration=ctx.plan.short
            )[0]
        finally:
            b.stop()
        sweep.append({"workers": w, "threads": t, **r.as_dict()})
    best = pick_best(sweep)
    cfg = dataclasses.replace(base, workers=best["workers"], threads=best["threads"])
    ctx.log(f"  best on [{layout.name}]: {cfg.describe()}")
    return sweep, cfg


def _pool_series(
    ctx: Ctx, b: Any, files: dict[str, Path], layout: Layout, wd: Path
) -> dict[str, Any]:
    """The token pool's RS256 and HS256 exchanges, the workers' RSS, and the framework floor
    (the HTTP server + Flask + access log answering /healthz)."""
    server = b.cfg.server
    res: dict[str, Any] = {}
    for alg in ("RS256", "HS256"):
        res[f"{alg}-pool"] = summarize(
            _series(ctx, b.url, files[alg], layout, b.pids(), f"{server} {alg} pool")
        )
    res["rss_kib"] = b.worker_rss_kib()
    hz = write_requests([Req("GET", "/healthz")], wd)
    res["healthz"] = summarize(
        _series(
            ctx, b.url, hz, layout, b.pids(), f"{server} healthz", rounds=1, duration=ctx.plan.short
        )
    )
    return res


def _rate_limited_series(
    ctx: Ctx,
    cfg: BridgeConfig,
    wd: Path,
    keys_dir: Path,
    upstream: Upstream,
    layout: Layout,
    pool: list[str],
) -> dict[str, Any]:
    """The pool's RS256 exchanges with the rate limits on, as in production (memory storage,
    the default 120/minute per address), each request from one of LIMITED_ADDRESSES client
    addresses (``[server] proxy_fix = 1``, X-Forwarded-For) so that none is refused: the cost
    of counting. The per-subject limit is raised (every one of the 200 subjects exchanges
    several times a second here)."""
    limited = dataclasses.replace(cfg, rate_limits=True)
    reqs = [
        Req(
            "POST",
            "/oauth/token",
            {**FORM, "X-Forwarded-For": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"},
            exchange_body(pool[i % len(pool)], "RS256"),
        )
        for i in range(LIMITED_ADDRESSES)
    ]
    f = write_requests(reqs, wd)
    b = start_bridge(wd, keys_dir, upstream, limited, layout, ctx.procs)
    try:
        res = summarize(_series(ctx, b.url, f, layout, b.pids(), "RS256 pool, rate limits on"))
    finally:
        b.stop()
        f.unlink()
    answered = sum(r["requests"] for r in res["rounds"])
    if res["non2xx"]:
        raise RuntimeError(f"rate-limited series: {res['non2xx']} of {answered} refused")
    return res


def _distinct_series(ctx: Ctx, b: Any, reqs: Path, layout: Layout) -> dict[str, Any]:
    """Distinct tokens: every request verifies a new upstream signature (no token twice)."""
    return summarize(
        _series(ctx, b.url, reqs, layout, b.pids(), "RS256 distinct", mode="distinct", warm=False)
    )


def _server_series(
    ctx: Ctx,
    cfg: BridgeConfig,
    wd: Path,
    keys_dir: Path,
    upstream: Upstream,
    layout: Layout,
    files: dict[str, Path],
    distinct: Path,
    pool: list[str],
) -> dict[str, Any]:
    """The exchange series every target reads (pool RS256 and HS256, /healthz, distinct
    tokens, refusals) with the bridge served by ``cfg.server``."""
    res: dict[str, Any] = {"config": cfg.describe(), "workers": cfg.workers, "threads": cfg.threads}
    b = start_bridge(wd, keys_dir, upstream, cfg, layout, ctx.procs)
    try:
        res.update(_pool_series(ctx, b, files, layout, wd))
        res["RS256-distinct"] = _distinct_series(ctx, b, distinct, layout)
        res.update(_refusals(ctx, b, upstream, pool, cfg.local_accounts, layout, wd))
    finally:
        b.stop()
    return res


def forged(tokens: list[str]) -> list[str]:
    """Each token with the next one's signature: well-formed, the issuer's kid, a signature
    that does not verify (never cached: every request pays the RSA verify)."""
    sigs = [t.rsplit(".", 1)[1] for t in tokens]
    return [t.rsplit(".", 1)[0] + "." + sigs[(i + 1) % len(sigs)] for i, t in enumerate(tokens)]


def _refusals(
    ctx: Ctx,
    b: Any,
    upstream: Upstream,
    pool: list[str],
    local_users: bool,
    layout: Layout,
    wd: Path,
) -> dict[str, Any]:
    """Refused exchanges (audited and counted like every decision): a bad signature, and (with
    the local benchmark accounts) a name with no local account (getpwnam misses)."""
    cases = {"refused-signature": forged(pool)}
    if local_users:
        cases["refused-account"] = upstream.tokens([f"sjbnone{i:03d}" for i in range(200)])
    out: dict[str, Any] = {}
    for key, tokens in cases.items():
        f = write_requests(_exchange_reqs(tokens, "RS256"), wd)
        out[key] = summarize(_series(ctx, b.url, f, layout, b.pids(), key, duration=ctx.plan.short))
        answered = sum(r["requests"] for r in out[key]["rounds"])
        if out[key]["non2xx"] < answered:
            raise RuntimeError(f"{key}: {answered - out[key]['non2xx']} request(s) not refused")
    return out


def breakdown(
    ctx: Ctx,
    upstream: Upstream,
    keys_dir: Path,
    local_users: bool,
    pool: list[str],
    layout: Layout,
) -> dict[str, float]:
    """bench/breakdown.py in a pinned subprocess: the exchange's steps timed in-process."""
    import json
    import sys

    from .servers import bridge_toml

    wd = ctx.workdir / "breakdown"
    wd.mkdir(exist_ok=True)
    cfg = wd / "bridge.toml"
    cfg.write_text(
        bridge_toml(
            wd, 0, keys_dir, upstream, BridgeConfig(1, 1, "file", local_accounts=local_users)
        )
    )
    tokens = wd / "tokens.json"
    tokens.write_text(json.dumps({"pool": pool, "fresh": upstream.many_tokens(bench_users(), 600)}))
    user = bench_users()[len(pool) // 2 if pool else 0]
    r = subprocess.run(
        [
            *layout.server_prefix(),
            sys.executable,
            "-m",
            "bench.breakdown",
            str(cfg),
            str(tokens),
            user,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    if r.returncode != 0:
        raise RuntimeError(f"bench.breakdown failed:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    ctx.log("  in-process: " + ", ".join(f"{k} {v:.0f} us" for k, v in result.items()))
    return result


# ---------------------------------------------------------------- 6. JWKS


def _granian_config(cfg: BridgeConfig, exchange: dict[str, Any]) -> BridgeConfig:
    """``cfg`` served by granian at its own exchange sweep's pick (``exchange``: the exchange
    part's results for the layout), or at ``cfg``'s workers x threads when that part did not
    run."""
    own = exchange.get("granian", {})
    return dataclasses.replace(
        cfg,
        server="granian",
        workers=own.get("workers", cfg.workers),
        threads=own.get("threads", cfg.threads),
    )


def jwks(ctx: Ctx, keys_dir: Path) -> None:
    layout = ctx.layouts.get("pinned") or next(iter(ctx.layouts.values()))
    best = ctx.results.get("exchange", {}).get("layouts", {}).get(layout.name, {})
    cfg = BridgeConfig(best.get("workers", 1), best.get("threads", 1), "file")
    wd = ctx.workdir / "jwks"
    out: dict[str, Any] = _jwks_series(ctx, cfg, wd, keys_dir, layout)
    out["layout"] = layout.name
    if granian_installed():
        gcfg = _granian_config(cfg, best)
        out["granian"] = _jwks_series(ctx, gcfg, wd, keys_dir, layout)
    ctx.results["jwks"] = out


def _jwks_series(
    ctx: Ctx, cfg: BridgeConfig, wd: Path, keys_dir: Path, layout: Layout
) -> dict[str, Any]:
    b = start_bridge(wd, keys_dir, None, cfg, layout, ctx.procs)
    try:
        import urllib.request

        with urllib.request.urlopen(b.url + "/.well-known/jwks.json") as r:
            etag = r.headers["ETag"]
            size = len(r.read())
        plain = write_requests([Req("GET", "/.well-known/jwks.json")], wd)
        cond = write_requests([Req("GET", "/.well-known/jwks.json", {"If-None-Match": etag})], wd)
        out: dict[str, Any] = {"config": cfg.describe(), "body_bytes": size}
        label = f"{cfg.server} JWKS"
        out["200"] = summarize(
            _series(ctx, b.url, plain, layout, b.pids(), f"{label} 200", duration=ctx.plan.short)
        )
        out["304"] = summarize(
            _series(ctx, b.url, cond, layout, b.pids(), f"{label} 304", duration=ctx.plan.short)
        )
    finally:
        b.stop()
    return out


# ---------------------------------------------------------------- 3. oidc-provider


def _cc_request(ctx: Ctx, wd: Path, path: str) -> Path:
    """The client_credentials grant of svc-portal (client_secret_basic) as wrk's request file."""
    import base64

    basic = base64.b64encode(b"svc-portal:svc-portal-secret").decode()
    req = Req(
        "POST", path, {**FORM, "Authorization": f"Basic {basic}"}, "grant_type=client_credentials"
    )
    wd.mkdir(parents=True, exist_ok=True)
    return write_requests([req], wd)


def _latency_levels(
    ctx: Ctx, server: Any, f: Path, layout: Any, who: str, cap: float
) -> dict[str, Any]:
    """Constant-rate runs at 25, 50 and 90 % of the measured capacity ``cap``."""
    out: dict[str, Any] = {}
    for frac in (0.25, 0.5, 0.9):
        rate = max(10.0, cap * frac)
        s = summarize(
            _series(
                ctx,
                server.url,
                f,
                layout,
                server.pids(),
                f"{who} at {frac:.0%}",
                duration=ctx.plan.short,
                rate=rate,
            )
        )
        s["target_rate"] = rate
        out[f"{int(frac * 100)}"] = s
    return out


def _grant_series(ctx: Ctx, op: Any, f: Path, layout: Any, who: str, latency: bool) -> dict:
    """Capacity rounds (and, on the pinned layout, latency at fixed fractions of it) + RSS."""
    from .common import rss_kib

    label = f"{who} client_credentials"
    res: dict[str, Any] = {"capacity": summarize(_series(ctx, op.url, f, layout, op.pids(), label))}
    if latency:
        res["latency"] = _latency_levels(ctx, op, f, layout, who, res["capacity"]["rps"])
    res["rss_kib"] = sum(rss_kib(p) or 0 for p in op.pids())
    return res


def oidc_provider(ctx: Ctx) -> None:
    wd = ctx.workdir / "oidc"
    f = _cc_request(ctx, wd, "/token")
    out: dict[str, Any] = {}
    for name, layout in ctx.layouts.items():
        op = start_oidc_provider(wd, layout, ctx.procs)
        try:
            _check_cc(op.url + "/token", "oidc-provider")
            out[name] = _grant_series(ctx, op, f, layout, "oidc-provider", name == "pinned")
        finally:
            op.stop()
    ctx.results["oidc"] = out


def keycloak(ctx: Ctx) -> None:
    """Keycloak's client_credentials grant (RS256 JWT), on the pinned layout only: a start takes
    tens of seconds, and the JVM is first warmed (JIT) with capacity rounds."""
    wd = ctx.workdir / "keycloak"
    out: dict[str, Any] = {}
    layout = ctx.layouts.get("pinned") or next(iter(ctx.layouts.values()))
    kc = start_keycloak(wd, layout, ctx.procs)
    try:
        f = _cc_request(ctx, wd, kc.token_endpoint)
        _check_cc(kc.url + kc.token_endpoint, "Keycloak")
        # The JVM compiles hot code after thousands of calls: warm until a round is no faster
        # than the one before (within 10 %), at most six rounds.
        last = 0.0
        for _ in range(6):
            (w,) = _series(
                ctx, kc.url, f, layout, kc.pids(), "Keycloak JIT warm-up", rounds=1, warm=False
            )
            if w.rps <= last * 1.1:
                break
            last = w.rps
        out[layout.name] = _grant_series(ctx, kc, f, layout, "Keycloak", True)
    finally:
        kc.stop()
    ctx.results["keycloak"] = out


def _check_cc(url: str, who: str) -> None:
    """One grant by hand at ``url`` (the token endpoint): the answer must be an RS256 JWT."""
    import base64
    import json
    import urllib.request

    basic = base64.b64encode(b"svc-portal:svc-portal-secret").decode()
    r = urllib.request.Request(
        url,
        data=b"grant_type=client_credentials",
        headers={**FORM, "Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(r, timeout=10) as resp:
        tok = json.loads(resp.read())["access_token"]
    header = json.loads(base64.urlsafe_b64decode(tok.split(".")[0] + "=="))
    if header.get("alg") != "RS256":
        raise RuntimeError(f"{who} issued {header}, expected an RS256 JWT")


# ---------------------------------------------------------------- 4 + 5. Slurm


def slurm(ctx: Ctx, upstream: Upstream, version: str) -> None:
    """scontrol token (sequential) and GET jobs direct vs through the proxy."""
    layout = ctx.layouts.get("pinned") or next(iter(ctx.layouts.values()))
    wd = ctx.workdir / f"slurm-{version}"
    ctx.log(f"  starting Slurm {version}")
    t0 = time.monotonic()
    # 23.02+ can also trust the identity provider directly (the oauth2-proxy baseline)
    bc = start_slurm(version, wd, layout, None if version == "22.05" else upstream)
    out: dict[str, Any] = {
        "version": bc.cluster.slurm_full_version or version,
        "layout": layout.name,
        "start_s": time.monotonic() - t0,
    }
    try:
        out["scontrol"] = _scontrol(ctx, bc)
        out["proxy"] = _proxy(ctx, bc, upstream, layout, wd)
    finally:
        bc.stop()
    ctx.results.setdefault("slurm", {})[version] = out


def _scontrol(ctx: Ctx, bc: Any) -> dict[str, Any]:
    cluster = bc.cluster
    argv = [*cluster.scontrol_argv(), "token", "username=alice", "lifespan=1800"]
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    if not re.search(r"SLURM_JWT=\S+", first.stdout):
        raise RuntimeError(f"scontrol token failed: {first.stdout} {first.stderr}")
    rounds = []
    ctld = cluster._pids.get("slurmctld")
    for i in range(ctx.plan.rounds):
        n, failed = 0, 0
        c0 = cpu_seconds(ctld) if ctld else 0.0
        t0 = time.monotonic()
        end = t0 + ctx.plan.short
        while time.monotonic() < end:
            r = subprocess.run(argv, capture_output=True, env=env, timeout=30)
            n += 1
            failed += r.returncode != 0
        dt = time.monotonic() - t0
        ctld_cores = ((cpu_seconds(ctld) - c0) / dt) if ctld else 0.0
        rounds.append(
            {
                "tokens": n,
                "failed": failed,
                "seconds": dt,
                "rate": n / dt,
                "slurmctld_cores": ctld_cores,
            }
        )
        ctx.log(f"  scontrol token round {i + 1}: {n / dt:,.1f}/s ({failed} failed)")
    return {
        "rounds": rounds,
        "rate": median([r["rate"] for r in rounds]),
        "argv": "scontrol token username=alice lifespan=1800 (in the sid chroot)",
    }


def _proxy(ctx: Ctx, bc: Any, upstream: Upstream, layout: Layout, wd: Path) -> dict[str, Any]:
    from slurm_jwt_bridge.keys import KeyRing
    from slurm_jwt_bridge.minting import mint_slurm_token

    cluster = bc.cluster
    api = cluster.api_version
    path = f"/slurm/{api}/jobs"
    ring = KeyRing.load(bc.keys_dir)
    direct_tok = mint_slurm_token(ring, "alice", 3600, "RS256").token
    direct = write_requests(
        [Req("GET", path, {"X-SLURM-USER-NAME": "alice", "X-SLURM-USER-TOKEN": direct_tok})], wd
    )
    tokens = upstream.tokens(["alice", "bob"] * 5)
    proxied = write_requests(
        [Req("GET", path, {"Authorization": f"Bearer {t}"}) for t in tokens], wd
    )
    best = ctx.results.get("exchange", {}).get("layouts", {}).get(layout.name, {})
    style = "x-slurm" if cluster.version == "22.05" else "bearer"
    cfg = BridgeConfig(
        best.get("workers", 1),
        best.get("threads", 1),
        "file",
        proxy_upstream=cluster.restd_url,
        proxy_auth_style=style,
        proxy_auth_request=True,
    )
    restd = restd_pids(bc)
    out: dict[str, Any] = {"path": path, "auth_style": style}
    label = f"slurmrestd {cluster.version} direct"
    _pair(ctx, out, "direct", cluster.restd_url, direct, layout, restd, label)
    from tests.helpers.nginx import nginx_executable

    have_nginx = nginx_executable() is not None
    if have_nginx:
        port = free_port()
        ng = start_nginx(wd / "nginx", plain_proxy_conf(port, cluster.restd_url), port, layout)
        try:
            pids = [*restd, ng.pid]
            _pair(ctx, out, "nginx", ng.url, direct, layout, pids, "through nginx")
        finally:
            ng.stop()
    else:
        ctx.log("  nginx is not installed (make bench installs it): no nginx series")
    if cluster.version != "22.05":
        out.update(_baseline_series(ctx, cluster, restd, upstream, proxied, tokens[0], layout, wd))
    servers = [cfg, _granian_config(cfg, best)] if granian_installed() else [cfg]
    for server_cfg in servers:
        # gunicorn's figures at the top level, granian's under "granian"
        into = out if server_cfg.server == "gunicorn" else out.setdefault(server_cfg.server, {})
        b = start_bridge(wd, bc.keys_dir, upstream, server_cfg, layout, ctx.procs)
        try:
            _check_proxy(b.url + path, tokens[0])
            pids = restd + b.pids()
            into["config"] = server_cfg.describe()
            label = "through the proxy" + ("" if into is out else f" ({server_cfg.server})")
            _pair(ctx, into, "proxied", b.url, proxied, layout, pids, label)
            into["rss_kib"] = b.worker_rss_kib()
            if have_nginx:
                into["auth-request"] = _auth_request_series(
                    ctx, cluster, restd, b, proxied, tokens[0], layout, wd
                )
        finally:
            b.stop()
    return out


def _pair(
    ctx: Ctx,
    out: dict[str, Any],
    key: str,
    url: str,
    reqs: Path,
    layout: Layout,
    pids: list[int],
    label: str,
) -> None:
    """``out[key]`` under load and ``out[key + "-1conn"]`` on one connection."""
    out[key] = summarize(_series(ctx, url, reqs, layout, pids, label))
    out[f"{key}-1conn"] = summarize(
        _series(
            ctx,
            url,
            reqs,
            layout,
            pids,
            f"{label}, 1 connection",
            connections=1,
            duration=ctx.plan.short,
        )
    )


def _baseline_series(
    ctx: Ctx,
    cluster: Any,
    restd: list[int],
    upstream: Upstream,
    proxied: Path,
    check_token: str,
    layout: Layout,
    wd: Path,
) -> dict[str, Any]:
    """Without the bridge: slurmctld trusts the identity provider's keys
    (userclaimfield=preferred_username), the upstream tokens go straight to slurmrestd, and
    through oauth2-proxy verifying them as bearer JWTs and passing them on."""
    res: dict[str, Any] = {}
    _check_proxy(cluster.restd_url + f"/slurm/{cluster.api_version}/jobs", check_token)
    _pair(ctx, res, "idp-direct", cluster.restd_url, proxied, layout, restd, "IdP token direct")
    try:
        op = start_oauth2_proxy(
            wd / "oauth2-proxy", upstream.issuer, cluster.restd_url, layout, ctx.procs
        )
    except Exception as exc:  # no Go or no module proxy: say so, keep the other series
        ctx.log(f"  oauth2-proxy could not be started: {exc}")
        ctx.results.setdefault("errors", []).append(f"oauth2-proxy: {str(exc)[:300]}")
        return res
    try:
        _check_proxy(op.url + f"/slurm/{cluster.api_version}/jobs", check_token)
        pids = [*restd, op.proc.pid]
        _pair(ctx, res, "oauth2-proxy", op.url, proxied, layout, pids, "through oauth2-proxy")
    finally:
        op.stop()
    return res


def _auth_request_series(
    ctx: Ctx,
    cluster: Any,
    restd: list[int],
    b: Any,
    proxied: Path,
    check_token: str,
    layout: Layout,
    wd: Path,
) -> dict[str, Any]:
    """nginx in front of slurmrestd, the bridge answering its auth_request: the example
    (examples/nginx/slurmrestd-auth-request.conf) as shipped, with nginx caching the bridge's
    answers, and with its cache lines deleted (every request asks the bridge)."""
    from tests.helpers.nginx import AUTH_REQUEST_EXAMPLE, auth_request_site

    res: dict[str, Any] = {}
    path = f"/slurm/{cluster.api_version}/jobs"
    for cache in (True, False):
        port = free_port()
        site = auth_request_site(
            AUTH_REQUEST_EXAMPLE.read_text(),
            port,
            cluster.restd_url.split("://", 1)[1],
            b.url.split("://", 1)[1],
            wd / f"nginx-auth-cache-{port}",
            cache=cache,
        )
        name = "cached" if cache else "uncached"
        ng = start_nginx(wd / f"nginx-auth-{port}", site, port, layout)
        try:
            _check_proxy(ng.url + path, check_token)
            pids = [*restd, ng.pid, *b.pids()]
            label = f"nginx + bridge ({b.cfg.server}) auth_request, {name}"
            _pair(ctx, res, name, ng.url, proxied, layout, pids, label)
        finally:
            ng.stop()
    return res


def _check_proxy(url: str, token: str) -> None:
    import urllib.request

    r = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(r, timeout=30) as resp:
        if resp.status != 200:
            raise RuntimeError(f"proxy answered {resp.status}")
