"""docs/BENCHMARKS.md from the results of one ``python -m bench`` run."""

from __future__ import annotations

from typing import Any

from .common import fmt

# the rate-limited series' client addresses (bench/scenarios.py); kept here so that rendering
# an earlier run's JSON needs nothing else
LIMITED_ADDRESSES = 2000

DASH = "\u2013"  # shown for a figure that was not measured
TIMES = "\u00d7"

# The targets of #24 (docs/BENCHMARKS.md, pinned layout)
RS256_OVER_OIDC = 1.2  # RS256 exchange / oidc-provider's client_credentials grant
RS256_OVER_KEYCLOAK = 10.0  # RS256 exchange / Keycloak's client_credentials grant
HS256_OVER_OIDC = 2.0  # HS256 exchange / oidc-provider
CPU_BEYOND_RSA_US = 250.0  # server CPU per RS256 exchange minus one RSA-2048 signature
# ... set where one RSA-2048 signature took 265 µs of CPU: on slower cores the same share of
# the exchange is more µs, so the table also gives the figure in signatures
TARGET_SIGNATURE_US = 265.0
PROXY_RATIO = 0.6  # the bridge's proxy / direct slurmrestd throughput
PROXY_ADDED_P50_MS = 0.5  # added p50 through the bridge's proxy, one connection
AUTH_REQUEST_RATIO = 0.85  # nginx + bridge auth_request (as shipped) / direct
JWKS_RPS = 5000.0  # JWKS responses per second on one core
REFUSAL_OVER_SUCCESS = 1.0  # server CPU of the dearest refusal / of an RS256 exchange

TARGETS_INTRO = """\
Ratios are computed from medians measured in this same run on this same machine. The primary
layout is **pinned**: every server (the bridge, oidc-provider, slurmrestd + slurmctld) gets core
0 and `wrk` gets core 1, so a server never shares its core with the load generator and the
openssl ceiling is measured on that same core. The **shared** layout (nothing pinned, wrk
competing for both cores) is reported beside it."""


def _get(d: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def _r(x: float | None, digits: int = 2) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def _ms(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def _kib(values: list[int] | int | None) -> str:
    if values is None:
        return DASH
    if isinstance(values, int):
        values = [values]
    if not values:
        return DASH
    return ", ".join(f"{v / 1024:.0f} MiB" for v in values)


def _rounds(s: dict[str, Any] | None, attr: str = "rps", digits: int = 0) -> str:
    if not s:
        return DASH
    return " / ".join(fmt(r[attr], digits) for r in s["rounds"])


def _load_row(label: str, s: dict[str, Any] | None, extra: str = "") -> str:
    if not s:
        return f"| {label} |" + f" {DASH} |" * 9
    return (
        f"| {label} | **{fmt(s['rps'])}** | {_rounds(s)} | {_ms(s['p50_ms'])} | "
        f"{_ms(s['p95_ms'])} | {_ms(s['p99_ms'])} | {fmt(s['cpu_us'])} | "
        f"{_r(s['server_cores'])} | {_r(s['client_cores'])} | {_r(s['other_cores'])}"
        f"{extra} |"
    )


LOAD_HEAD = (
    "| what | req/s (median) | rounds | p50 ms | p95 ms | p99 ms | server CPU µs/req | "
    "server cores | wrk cores | other load (cores) |\n|---|---|---|---|---|---|---|---|---|---|"
)


# (label, where in the proxy results) for the one-connection comparison in section 5
ONE_CONNECTION = (
    ("slurmrestd direct (bridge-minted token)", ("direct-1conn",)),
    ("slurmrestd direct (IdP token, no bridge)", ("idp-direct-1conn",)),
    ("plain nginx", ("nginx-1conn",)),
    ("oauth2-proxy (no bridge)", ("oauth2-proxy-1conn",)),
    ("the bridge's proxy", ("proxied-1conn",)),
    ("nginx + bridge auth_request, cached (as shipped)", ("auth-request", "cached-1conn")),
    ("nginx + bridge auth_request, uncached", ("auth-request", "uncached-1conn")),
)

# (path, what it checks, what it does not) for section 5
PATHS_CHECK = (
    (
        "slurmrestd direct, bridge-minted token",
        "slurmctld: signature by a key in its jwks= file, `exp`",
        "nothing else: the bridge checked the rest when it minted the token",
    ),
    (
        "slurmrestd direct, IdP token (`userclaimfield`)",
        "slurmctld: signature by an IdP key in the file, `exp`",
        "`iss`, `aud`, client, groups; the name: root, the SlurmUser, digits (a uid), system "
        "accounts and unknown names (user `nobody`) are accepted "
        "(tests/integration/test_idp_direct.py, docs/slurm.md)",
    ),
    (
        "plain nginx",
        "nothing: it forwards the headers",
        "everything; slurmctld still checks what it always checks",
    ),
    (
        "oauth2-proxy `--skip-jwt-bearer-tokens`",
        "the bearer JWT's signature against the IdP's JWKS, `iss`, `aud` (its client id), "
        "`exp`, an e-mail claim (`--email-domain=*` here)",
        "the Slurm user name (slurmctld maps `preferred_username` itself, as in the row above): "
        "root, system accounts and unknown names pass; slurmctld gets the IdP's token with the "
        "IdP's lifetime",
    ),
    (
        "the bridge's proxy",
        "issuer, signature, `aud`/client, `exp`, the mapping rules and `[policy]` (no root, "
        "SlurmUser, system accounts, unknown names); slurmctld gets a short-lived Slurm token "
        "the bridge minted",
        "per request nothing new: the verified grant is cached per token (until its `exp`) and "
        "the minted token per user",
    ),
    (
        "nginx + bridge auth_request",
        "the same as the bridge's proxy, asked per token; nginx forwards with the bridge's "
        "Slurm token",
        "as shipped, nginx reuses the bridge's answer for a token up to 60 s",
    ),
)


def _paths_check() -> str:
    rows = [
        "What each path in front of slurmrestd checks:\n",
        "| path | checks | does not check |",
        "|---|---|---|",
    ]
    rows += [f"| {path} | {checks} | {not_checked} |" for path, checks, not_checked in PATHS_CHECK]
    return "\n".join(rows) + "\n"


def _added_p50_table(px: dict[str, Any]) -> str:
    """Added p50 on one connection, for every path, against slurmrestd direct."""
    base = _get(px, "direct-1conn", "p50_ms")
    rows = [
        "Added p50 on one connection, against slurmrestd direct with a bridge-minted token:\n",
        "| path | p50 ms, 1 connection | added p50 ms |",
        "|---|---|---|",
    ]
    for label, where in ONE_CONNECTION:
        p50 = _get(px, *where, "p50_ms")
        added = DASH if p50 is None or base is None else f"{p50 - base:+.2f}"
        rows.append(f"| {label} | {_ms(p50)} | {added} |")
    return "\n".join(rows) + "\n"


def signature_us(res: dict[str, Any], lay: str) -> float | None:
    """CPU µs of one RSA-2048 signature on the server core: the CPU time of the bridge's own
    signing call in-process (bench/breakdown.py ``mint_RS256``), else the openssl ceiling's
    rate (wall-clock, so only right on an idle core)."""
    mint = _get(res, "exchange", "breakdown", "mint_RS256")
    if mint:
        return mint
    ceil = _get(res, "ceiling", lay, default={})
    per_s = ceil.get("openssl_sign_s")
    if not per_s:
        return None
    return 1e6 * ceil.get("cores", 1) / per_s


def _row(what: str, measured: float | None, target: float, op: str, detail: str, **kw: Any) -> dict:
    """One row of the targets table (``unit``, ``digits`` and ``why`` optional)."""
    return {
        "what": what,
        "measured": measured,
        "target": target,
        "op": op,
        "detail": detail,
        "why": "",
        **kw,
    }


def _exchange_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The exchange targets of #24 beyond RS256 / oidc-provider (pinned layout)."""
    lay = "pinned" if _get(res, "exchange", "layouts", "pinned") else "shared"
    L = _get(res, "exchange", "layouts", lay, default={})
    rs = _get(L, "RS256-pool", "rps")
    kc = _get(res, "keycloak", lay, "capacity", "rps")
    hs = _get(L, "HS256-pool", "rps")
    op = _get(res, "oidc", lay, "capacity", "rps")
    cpu = _get(L, "RS256-pool", "cpu_us")
    sig = signature_us(res, lay)
    beyond = None if cpu is None or sig is None else cpu - sig
    why = ""
    if beyond is not None and sig and beyond > CPU_BEYOND_RSA_US:
        floor = _get(L, "healthz", "cpu_us")
        why = (
            f"{_server(res)} + Flask answering /healthz alone cost {fmt(floor)} µs "
            "(see 'where the time goes'); in signatures: "
            f"{beyond / sig:.2f}x this run's RSA signature, where the target is "
            f"{CPU_BEYOND_RSA_US / TARGET_SIGNATURE_US:.2f}x the {fmt(TARGET_SIGNATURE_US)} µs "
            "signature of the cores it was set on"
        )
    refusals = [(k, _get(L, k, "cpu_us")) for k in REFUSALS if _get(L, k, "cpu_us")]
    dearest = max(refusals, key=lambda kv: kv[1]) if refusals else None
    return [
        _row(
            f"RS256 exchange / Keycloak client_credentials ({lay})",
            _ratio(rs, kc),
            RS256_OVER_KEYCLOAK,
            ">=",
            f"{fmt(rs)} / {fmt(kc)} per s",
        ),
        _row(
            f"HS256 exchange / oidc-provider client_credentials ({lay})",
            _ratio(hs, op),
            HS256_OVER_OIDC,
            ">=",
            f"{fmt(hs)} / {fmt(op)} per s",
        ),
        _row(
            "bridge CPU per RS256 exchange beyond the RSA signature (its CPU time "
            f"in-process), HTTP server included ({lay})",
            beyond,
            CPU_BEYOND_RSA_US,
            "<=",
            f"{fmt(cpu)} - {fmt(sig)} µs",
            unit=" µs",
            digits=0,
            why=why,
        ),
        _row(
            f"server CPU of the dearest refusal / of an RS256 exchange ({lay})",
            _ratio(dearest[1], cpu) if dearest else None,
            REFUSAL_OVER_SUCCESS,
            "<=",
            f"{REFUSALS[dearest[0]]}: {fmt(dearest[1])} / {fmt(cpu)} µs" if dearest else DASH,
        ),
    ]


def _jwks_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    j = res.get("jwks", {})
    return [
        _row(
            f"JWKS responses/s, one core ({j.get('layout', 'pinned')})",
            _get(j, "200", "rps"),
            JWKS_RPS,
            ">=",
            f"{fmt(_get(j, '200', 'cpu_us'))} µs of CPU each",
            unit="/s",
            digits=0,
        )
    ]


# series key -> label of the refusals measured beside the exchanges (bench/scenarios.py)
REFUSALS = {
    "refused-signature": "bad signature",
    "refused-account": "no such local account",
}


def _server(res: dict[str, Any]) -> str:
    """The HTTP server the bridge's figures in ``res`` were measured with."""
    return str(res.get("server", "gunicorn gthread"))


def server_view(res: dict[str, Any], server: str) -> dict[str, Any] | None:
    """``res`` with the bridge's own figures (exchanges, JWKS, proxy, auth_request) taken from
    the series run under ``server`` (kept under that key beside gunicorn's), the others' (the
    ceiling, oidc-provider, Keycloak, slurmrestd direct, nginx) as they are; None when the run
    has no such series."""
    ex = _get(res, "exchange", "layouts", "pinned", server)
    if not ex:
        return None
    view = {**res, "server": server}
    pinned = {**_get(res, "exchange", "layouts", "pinned"), **ex}
    view["exchange"] = {**res["exchange"], "layouts": {"pinned": pinned}}
    if _get(res, "jwks", server):
        view["jwks"] = {**res["jwks"], **res["jwks"][server]}
    view["slurm"] = {}
    for version, sl in res.get("slurm", {}).items():
        px = sl.get("proxy", {})
        # without that server's proxy series, the proxy rows read "not measured"
        mine = {k: v for k, v in px.items() if k not in ("proxied", "proxied-1conn")}
        mine.pop("auth-request", None)
        view["slurm"][version] = {**sl, "proxy": {**mine, **px.get(server, {})}}
    return view


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the targets table: measured ratio, target, met/missed, why."""
    rows: list[dict[str, Any]] = []
    ex = _get(res, "exchange", "layouts", default={})
    ceil = res.get("ceiling", {})
    oidc = res.get("oidc", {})
    slurm = res.get("slurm", {})
    for lay in ("pinned", "shared"):
        rs = _get(ex, lay, "RS256-pool", "rps")
        if rs is None:
            continue
        cpu = _get(ex, lay, "RS256-pool", "cpu_us")
        floor = _get(ex, lay, "healthz", "cpu_us")
        hs_cpu = _get(ex, lay, "HS256-pool", "cpu_us")
        op = _get(oidc, lay, "capacity", "rps")
        op_cpu = _get(oidc, lay, "capacity", "cpu_us")
        ratio = _ratio(rs, op)
        why = ""
        if ratio is not None and ratio < RS256_OVER_OIDC:
            sign_s = _get(ceil, lay, "openssl_sign_s")
            sign_us = 1e6 * _get(ceil, lay, "cores", default=1) / sign_s if sign_s else None
            why = (
                f"both sign one RSA-2048 token per request, but the bridge spends {fmt(cpu)} µs "
                f"of CPU per exchange against oidc-provider's {fmt(op_cpu)} µs per grant: "
                f"{_server(res)} + Flask answering /healthz alone cost {fmt(floor)} µs"
            )
            if sign_us and op_cpu:
                why += (
                    f", about what oidc-provider spends on a whole grant apart from its "
                    f"signature ({fmt(op_cpu - sign_us)} µs)"
                )
            why += " (see 'where the time goes')"
        rows.append(
            {
                "what": f"RS256 exchange / oidc-provider client_credentials ({lay})",
                "measured": ratio,
                "target": RS256_OVER_OIDC,
                "op": ">=",
                "detail": f"{fmt(rs)} / {fmt(op)} per s",
                "why": why,
            }
        )
        sign = _get(ceil, lay, "openssl_sign_s")
        ratio = _ratio(rs, sign)
        why = ""
        if ratio is not None and ratio < 0.5 and sign:
            cores = _get(ceil, lay, "cores", default=1)
            sign_us = 1e6 * cores / sign
            budget = 2 * sign_us
            why = (
                f"50 % of the ceiling leaves {fmt(budget)} µs of CPU per exchange, of which one "
                f"signature at the measured ceiling takes {fmt(sign_us)} µs; the bridge needs "
                f"{fmt(cpu)} µs: "
                f"{fmt(floor)} µs is the {_server(res)} + Flask floor (/healthz), "
                f"{fmt((hs_cpu or 0) - (floor or 0))} µs the exchange without RSA (HS256 minus "
                f"/healthz)"
            )
            if lay == "shared":
                why += "; wrk shares these cores"
        rows.append(
            {
                "what": f"RS256 exchange / openssl rsa2048 sign ceiling ({lay})",
                "measured": ratio,
                "target": 0.5,
                "op": ">=",
                "detail": f"{fmt(rs)} / {fmt(sign)} per s",
                "why": why,
            }
        )
    rows += _exchange_rows(res)
    pinned_rs = _get(ex, "pinned", "RS256-pool", "rps") or _get(ex, "shared", "RS256-pool", "rps")
    for version, s in slurm.items():
        sc = _get(s, "scontrol", "rate")
        ratio = _ratio(pinned_rs, sc)
        why = ""
        if ratio is not None and ratio < 20 and sc:
            why = (
                f"`scontrol token` is a process per token ({fmt(1000 / sc, 1)} ms each: exec in "
                "the chroot, munge credential, RPC to slurmctld); 20x would need "
                f"{fmt(20 * sc)} exchanges/s, i.e. at most {fmt(1e6 / (20 * sc))} µs of CPU per "
                "exchange on one core, where the bridge needs "
                f"{fmt(_get(ex, 'pinned', 'RS256-pool', 'cpu_us'))} µs "
                "(see the openssl row)"
            )
        rows.append(
            {
                "what": f"RS256 exchange / `scontrol token` (Slurm {version}, sequential)",
                "measured": ratio,
                "target": 20,
                "op": ">=",
                "detail": f"{fmt(pinned_rs)} / {fmt(sc, 1)} per s",
                "why": why,
            }
        )
        px = _get(s, "proxy", default={})
        d = _get(px, "direct", "rps")
        d50 = _get(px, "direct-1conn", "p50_ms")
        ng = _get(px, "nginx", "rps")
        ng_note = (
            f"; plain nginx in the same place (no token work) keeps {_r(_ratio(ng, d))}{TIMES}"
            if ng
            else ""
        )
        p = _get(px, "proxied", "rps")
        ratio = _ratio(p, d)
        why = ""
        if ratio is not None and ratio < PROXY_RATIO:
            d_cpu = _get(px, "direct", "cpu_us")
            p_cpu = _get(px, "proxied", "cpu_us")
            why = (
                f"slurmrestd + slurmctld need {fmt(d_cpu)} µs of CPU per GET; through the "
                f"bridge's own proxy the shared core pays {fmt(p_cpu)} µs per request: "
                f"{_server(res)}, Flask, the Python HTTP client and the relay run for every "
                "request (under gunicorn about 1 ms of CPU, 80 % of it the Python interpreter "
                "under perf), and "
                f"slurmrestd works harder when fed one request per worker connection{ng_note}. "
                "The nginx auth_request rows below are the fast path"
            )
        rows.append(
            {
                "what": f"bridge proxy / direct slurmrestd throughput (Slurm {version}, GET jobs)",
                "measured": ratio,
                "target": PROXY_RATIO,
                "op": ">=",
                "detail": f"{fmt(p)} / {fmt(d)} per s",
                "why": why,
            }
        )
        p50 = _get(px, "proxied-1conn", "p50_ms")
        added = None if d50 is None or p50 is None else p50 - d50
        why = ""
        if added is not None and added > PROXY_ADDED_P50_MS:
            why = (
                f"every proxied request runs {_server(res)} + Flask and the forwarding on the core "
                "slurmrestd needs too (about 1 ms of CPU per request, see the row above)"
            )
        rows.append(
            {
                "what": f"bridge proxy added p50, one connection (Slurm {version})",
                "measured": added,
                "target": PROXY_ADDED_P50_MS,
                "op": "<=",
                "unit": " ms",
                "detail": f"{_ms(p50)} - {_ms(d50)} ms",
                "why": why,
            }
        )
        ar = _get(px, "auth-request", default={})
        a = _get(ar, "cached", "rps")
        if a is not None:
            ratio = _ratio(a, d)
            why = ""
            if ratio is not None and ratio < AUTH_REQUEST_RATIO:
                why = (
                    "nginx answered from its cache of the bridge's decisions, so the bridge "
                    "was not the cost here; see the nginx and uncached rows in section 5"
                )
            rows.append(
                {
                    "what": (
                        f"nginx + bridge auth_request (cached, as shipped) / direct "
                        f"(Slurm {version})"
                    ),
                    "measured": ratio,
                    "target": AUTH_REQUEST_RATIO,
                    "op": ">=",
                    "detail": f"{fmt(a)} / {fmt(d)} per s",
                    "why": why,
                }
            )
            a50 = _get(ar, "cached-1conn", "p50_ms")
            added = None if d50 is None or a50 is None else a50 - d50
            rows.append(
                {
                    "what": (
                        f"nginx + bridge auth_request added p50, one connection (Slurm {version})"
                    ),
                    "measured": added,
                    "target": 1.0,
                    "op": "<=",
                    "unit": " ms",
                    "detail": f"{_ms(a50)} - {_ms(d50)} ms",
                    "why": "" if added is None or added <= 1.0 else "see section 5",
                }
            )
    rows += _jwks_rows(res)
    for row in rows:
        m = row["measured"]
        if m is None:
            row["status"] = "not measured"
        elif row["op"] == ">=":
            row["status"] = "met" if m >= row["target"] else "missed"
        else:
            row["status"] = "met" if m <= row["target"] else "missed"
    return rows


def _targets_table(w: Any, rows: list[dict[str, Any]]) -> None:
    w("| ratio | measured | target | | figures | why |\n|---|---|---|---|---|---|")
    for row in rows:
        unit = row.get("unit", TIMES)
        m = row["measured"]
        shown = DASH if m is None else f"{fmt(m, row.get('digits', 2))}{unit}"
        tgt = f"{row['op']} {row['target']:,g}{unit}"
        w(
            f"| {row['what']} | {shown} | {tgt} | {row['status']} | {row['detail']} | "
            f"{row['why'] or DASH} |"
        )
    w("")


def render(res: dict[str, Any]) -> str:
    meta = res.get("meta", {})
    out: list[str] = []
    w = out.append
    w("# Benchmarks\n")
    w(
        "Written by `make bench` (`python -m bench`, code in `bench/`) from one run on one "
        f"machine: {meta.get('started', '?')}, {fmt(meta.get('duration_s'))} s in all. "
        "Rerun it to refresh every figure; nothing below is edited by hand.\n"
    )
    if res.get("errors"):
        w("**Parts of this run failed:**\n")
        for e in res["errors"]:
            w(f"- {e}")
        w("")

    # ------------------------------------------------------------ machine
    w("## Machine and versions\n")
    w("| | |\n|---|---|")
    for k, v in meta.get("machine", {}).items():
        w(f"| {k} | {v} |")
    for k, v in meta.get("versions", {}).items():
        w(f"| {k} | {v} |")
    for v, s in res.get("slurm", {}).items():
        w(f"| Slurm {v} | {s.get('version', '?')} |")
    w("")

    # ------------------------------------------------------------ method
    plan = meta.get("plan", {})
    w("## How it was measured\n")
    w(TARGETS_INTRO + "\n")
    for name, desc in meta.get("layouts", {}).items():
        w(f"- **{name}**: {desc}")
    w("")
    w(
        f"- **Rounds**: {plan.get('rounds')} rounds of {plan.get('duration')} s for capacity "
        f"figures, {plan.get('short')} s for sweeps, latency levels, one-connection runs and "
        f"JWKS, each series after a {plan.get('warmup')} s warm-up; tables give the median "
        "and every round.\n"
        f"- **Load generator**: Debian's `wrk` 4.1 with `bench/lua/replay.lua`, one thread, "
        f"{plan.get('connections')} connections for capacity (closed loop, like the reference "
        "figures' `wrk -t1 -c8`). wrk2's constant-rate mode is not in Debian: for the latency "
        "levels replay.lua paces requests with wrk's `delay()` hook on a fixed schedule "
        f"(25/50/90 % of the measured capacity, {plan.get('paced_connections')} connections so "
        "pacing never waits for a free one); latency counts from the actual send, without "
        "wrk2's coordinated-omission correction. The `wrk cores` column is wrk's own CPU "
        "(its rusage), `server cores` the CPU of every server process (from /proc), `other "
        "load` whatever else ran on the machine meanwhile (other users' jobs: a non-zero value "
        "means that round was disturbed).\n"
        "- **Server CPU µs/req**: CPU seconds of the server processes divided by the requests "
        "answered: the cost of one request, less sensitive to disturbance than req/s.\n"
        "- **The bridge**: `slurm-jwt-bridge serve --prod --workers N` (gunicorn with "
        "`gunicorn_conf.py`, gthread, threads from `GUNICORN_THREADS`), its JSON access log "
        "to a file as in production; on the pinned layout the exchange, proxy, auth_request "
        "and JWKS series run again under `serve --prod --server granian` (granian_serve.py, "
        "at the workers x threads of its own sweep, its JSON access log too). Configuration: "
        "`[rate_limit] enabled = false` (the "
        "defaults, 120/minute per address and 60/minute per subject, would refuse almost "
        "everything from one load generator) except in one series, which turns them on as in "
        "production (memory storage, 120/minute per address, the per-subject limit raised to "
        f"100000/minute) and sends each request from one of {fmt(LIMITED_ADDRESSES)} client "
        "addresses (`X-Forwarded-For` behind `[server] proxy_fix = 1`) so that none is "
        "refused: the cost of counting), "
        '`[audit] destination = "file:..."` (one JSON line per decision, as in '
        "production; one series with `none` shows its cost), `[browser] enabled = false`, one "
        "`oidc` issuer (the local test issuer, tests/helpers/test_issuer.py, serving discovery "
        "and JWKS over HTTP), one mapping rule on `preferred_username`.\n"
    )
    ex = res.get("exchange", {})
    if ex:
        if ex.get("local_users"):
            users = (
                f"{ex.get('users')} users, each a real local account (`sjbb001`..: locked, no "
                "shell, no home; created once by the benchmark) so the policy's `getpwnam` finds "
                "them as it would find real users (`require_local_account = true`, the default)"
            )
        else:
            users = (
                f"{ex.get('users')} users without local accounts (not root: "
                "`require_local_account = false`; getpwnam still runs, and misses)"
            )
        w(
            f"- **Upstream tokens**: RS256 access tokens shaped like oidc-provider's (iss, sub, "
            f"aud, client_id, scope, preferred_username, email, groups, jti; about 700 bytes) for "
            f"{users}. **Pool**: those {ex.get('users')} tokens in turn; after the first round "
            "every worker has verified each of them once, so an exchange hits the verifier's "
            "cache (sha256 of the token, until its exp) and pays no upstream signature check: "
            "the steady state of users who exchange the same IdP token repeatedly. **Distinct**: "
            "a new token for every request (signed beforehand), so every exchange verifies an "
            "RS256 signature and parses the token: the worst case. **Refused**: the pool's tokens "
            "each with another token's signature (every request pays the RSA verify and is "
            "refused), and tokens of names with no local account (getpwnam misses); each refusal "
            "is audited and counted like a success.\n"
        )
    w(
        "- **oidc-provider**: tests/oidc-provider/server.mjs (npm oidc-provider, in-memory "
        "adapter, RS256 JWT access tokens via resource indicators), `POST /token` with "
        "`grant_type=client_credentials` and client_secret_basic, one Node process, its "
        "per-request log line to a file.\n"
        "- **Keycloak**: the pinned server distribution (tests/helpers/keycloak.py, `kc.sh "
        "start-dev`, H2 database, OpenJDK 17, heap capped at 512 MiB) with the test realm "
        "`hpc` (tests/keycloak), `POST /realms/hpc/protocol/openid-connect/token` with "
        "`grant_type=client_credentials` and client_secret_basic for the service account "
        "svc-portal (RS256); pinned layout only, after capacity rounds of JIT warm-up until one "
        "is no faster than the one before (at most six).\n"
        "- **Slurm**: a real cluster started by tests/helpers/slurm.py (munged, slurmctld, "
        "slurmd, slurmrestd `-a rest_auth/jwt`), daemons pinned like the servers. `scontrol "
        "token` runs sequentially, one process after another, as a site script would. The proxy "
        "series use bridge-minted RS256 tokens for alice: direct with `X-SLURM-USER-NAME` + "
        "`X-SLURM-USER-TOKEN`, through the proxy with the upstream token as `Authorization: "
        "Bearer` (caches warm: 10 tokens of 2 users), each server at its exchange sweep's "
        "workers x threads.\n"
        "- **nginx** (Debian's, one worker process, pinned with the servers): as a plain "
        "reverse proxy with the direct requests (what any proxy costs on that core), and "
        "running examples/nginx/slurmrestd-auth-request.conf in front of slurmrestd with the "
        "bridge answering its auth_request (`[proxy] auth_request = true`), with the upstream "
        "tokens as `Authorization: Bearer`: as shipped (nginx caches the bridge's answers per "
        "token for up to 60 s) and with the example's cache lines deleted (every request asks "
        "the bridge).\n"
        "- **Without the bridge** (Slurm 23.02+): the cluster's jwks= file also holds the "
        "upstream issuer's keys, with `userclaimfield=preferred_username`; the upstream tokens "
        "go straight to slurmrestd as `Authorization: Bearer`, and through **oauth2-proxy** "
        "(github.com/oauth2-proxy/oauth2-proxy/v7, pinned by bench/oauth2-proxy/go.mod and "
        "built with the machine's Go, cached; one process pinned with the servers, its request "
        "log to a file) verifying them as bearer JWTs (`--skip-jwt-bearer-tokens`, "
        "`--bearer-token-login-fallback=false`) and passing them on.\n"
    )

    # ------------------------------------------------------------ headline
    w("## Headline\n")
    w(LOAD_HEAD)
    lay = "pinned" if "pinned" in ex.get("layouts", {}) else "shared"
    L = _get(ex, "layouts", lay, default={})
    w(_load_row(f"bridge RS256 exchange, pool ({lay})", L.get("RS256-pool")))
    w(_load_row(f"bridge HS256 exchange, pool ({lay})", L.get("HS256-pool")))
    w(_load_row(f"bridge RS256 exchange, distinct tokens ({lay})", L.get("RS256-distinct")))
    G = L.get("granian", {})
    if G:
        w(_load_row(f"bridge under granian, RS256 exchange, pool ({lay})", G.get("RS256-pool")))
        w(_load_row(f"bridge under granian, HS256 exchange, pool ({lay})", G.get("HS256-pool")))
    w(_load_row(f"oidc-provider client_credentials ({lay})", _get(res, "oidc", lay, "capacity")))
    w(_load_row(f"Keycloak client_credentials ({lay})", _get(res, "keycloak", lay, "capacity")))
    for v, s in res.get("slurm", {}).items():
        px = s.get("proxy", {})
        w(_load_row(f"slurmrestd {v} GET jobs, direct", px.get("direct")))
        w(_load_row(f"slurmrestd {v} GET jobs, through the proxy", px.get("proxied")))
        if _get(px, "granian", "proxied"):
            w(
                _load_row(
                    f"slurmrestd {v} GET jobs, through the proxy under granian",
                    _get(px, "granian", "proxied"),
                )
            )
    j = res.get("jwks", {})
    w(_load_row("JWKS 200", j.get("200")))
    w(_load_row("JWKS 304 (If-None-Match)", j.get("304")))
    if _get(j, "granian", "200"):
        w(_load_row("JWKS 200 under granian", _get(j, "granian", "200")))
    w("")
    for v, s in res.get("slurm", {}).items():
        sc = s.get("scontrol", {})
        w(
            f"`scontrol token` (Slurm {v}, sequential): **{fmt(sc.get('rate'), 1)}/s** "
            f"(rounds {' / '.join(fmt(r['rate'], 1) for r in sc.get('rounds', []))}).\n"
        )
    c = res.get("ceiling", {})
    for name, s in c.items():
        w(
            f"Ceiling ({name}, {s['cores']} core(s)): openssl rsa2048 **{fmt(s['openssl_sign_s'])} "
            f"sign/s**, PyJWT RS256 {fmt(s.get('pyjwt_rs256_s'))}/s, PyJWT HS256 "
            f"{fmt(s.get('pyjwt_hs256_s'))}/s, raw HMAC-SHA256 {fmt(s.get('raw_hmac_s'))}/s.\n"
        )

    # ------------------------------------------------------------ targets
    w("## Targets\n")
    granian = server_view(res, "granian")
    if granian is not None:
        w(
            "Each target twice: with gunicorn (the default, `serve --prod`) and with granian "
            "(`serve --prod --server granian`), each server at its own sweep's workers x "
            "threads, each server's "
            "series in this same run beside the same peers.\n"
        )
        w("### gunicorn\n")
    _targets_table(w, targets(res))
    if granian is not None:
        w("### granian\n")
        _targets_table(w, targets(granian))

    # ------------------------------------------------------------ details
    w("## 1. The ceiling\n")
    w(
        "| layout | cores | openssl sign/s (rounds) | openssl verify/s | PyJWT RS256/s | "
        "raw RSA sign/s | PyJWT HS256/s | raw HMAC/s |\n|---|---|---|---|---|---|---|---|"
    )
    for name, s in c.items():
        rounds = " / ".join(fmt(r["sign_s"]) for r in s["openssl_rounds"])
        w(
            f"| {name} | {s['cores']} | **{fmt(s['openssl_sign_s'])}** ({rounds}) | "
            f"{fmt(s['openssl_verify_s'])} | {fmt(s.get('pyjwt_rs256_s'))} | "
            f"{fmt(s.get('raw_rsa_sign_s'))} | {fmt(s.get('pyjwt_hs256_s'))} | "
            f"{fmt(s.get('raw_hmac_s'))} |"
        )
    w(
        "\n`openssl speed -seconds N rsa2048` (with `-multi 2` on two cores); the in-process "
        "figures come from `python -m bench.ceiling`, one process per core.\n"
    )

    w("## 2. The bridge under gunicorn (and granian)\n")
    for name, L in ex.get("layouts", {}).items():
        w(f"### {name}: {_get(meta, 'layouts', name, default='')}\n")
        w(
            "Workers x threads (RS256, pool, one round each; within 5 % of the fastest counts "
            "as a tie, and the first in this order is used):\n"
        )
        w(
            "| server | workers x threads | req/s | p50 ms | p99 ms | server CPU µs/req |\n"
            "|---|---|---|---|---|---|"
        )
        for server, sub in (("gunicorn", L), ("granian", L.get("granian") or {})):
            for s in sub.get("sweep", []):
                chosen = (s["workers"], s["threads"]) == (sub.get("workers"), sub.get("threads"))
                w(
                    f"| {server} | {s['workers']} x {s['threads']}{' (best)' if chosen else ''} | "
                    f"{fmt(s['rps'])} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | "
                    f"{fmt(s['server_cpu_us_per_req'])} |"
                )
        w(
            f"\nBest: **{L.get('config')}** (gunicorn gthread; `GUNICORN_WORKERS`/`--workers` and "
            "`GUNICORN_THREADS`)"
            + (f"; under granian **{L['granian'].get('config')}**" if L.get("granian") else "")
            + ".\n"
        )
        w(LOAD_HEAD)
        w(_load_row("RS256, pool", L.get("RS256-pool")))
        w(_load_row("HS256, pool", L.get("HS256-pool")))
        if L.get("RS256-distinct"):
            w(_load_row("RS256, distinct tokens", L.get("RS256-distinct")))
        if L.get("RS256-pool-audit-none"):
            w(_load_row("RS256, pool, audit none", L.get("RS256-pool-audit-none")))
        if L.get("RS256-pool-rate-limited"):
            w(
                _load_row(
                    f"RS256, pool, rate limits on ({fmt(LIMITED_ADDRESSES)} client addresses)",
                    L.get("RS256-pool-rate-limited"),
                )
            )
        for key, label in REFUSALS.items():
            if L.get(key):
                w(_load_row(f"refused: {label}", L.get(key)))
        w(_load_row("GET /healthz (framework floor)", L.get("healthz")))
        w("")
        if L.get("RS256-distinct", {}).get("wraps"):
            w(
                f"(distinct: the token list wrapped {L['RS256-distinct']['wraps']} time(s), "
                "so some requests reused a token)\n"
            )
        w(f"RSS per worker after the runs: {_kib(L.get('rss_kib'))}.\n")
        G = L.get("granian")
        if G:
            w(
                f"The same series under granian (`serve --prod --server granian`), "
                f"{G.get('config')}:\n"
            )
            w(LOAD_HEAD)
            w(_load_row("granian: RS256, pool", G.get("RS256-pool")))
            w(_load_row("granian: HS256, pool", G.get("HS256-pool")))
            w(_load_row("granian: RS256, distinct tokens", G.get("RS256-distinct")))
            for key, label in REFUSALS.items():
                if G.get(key):
                    w(_load_row(f"granian: refused: {label}", G.get(key)))
            w(_load_row("granian: GET /healthz (framework floor)", G.get("healthz")))
            w(f"\nRSS per granian worker after the runs: {_kib(G.get('rss_kib'))}.\n")
        if L.get("latency"):
            w("Latency at a constant rate (RS256, pool):\n")
            w(
                "| load | target req/s | achieved req/s | p50 ms | p95 ms | p99 ms | "
                "server cores | wrk cores |\n|---|---|---|---|---|---|---|---|"
            )
            for frac, s in L["latency"].items():
                w(
                    f"| {frac} % | {fmt(s['target_rate'])} | {fmt(s['rps'])} | "
                    f"{_ms(s['p50_ms'])} | "
                    f"{_ms(s['p95_ms'])} | {_ms(s['p99_ms'])} | {_r(s['server_cores'])} | "
                    f"{_r(s['client_cores'])} |"
                )
            w("")

    bd = ex.get("breakdown")
    if bd:
        w("### Where the time goes\n")
        lay_name = "pinned" if "pinned" in ex.get("layouts", {}) else "shared"
        Lp = _get(ex, "layouts", lay_name, default={})
        g_hz = _get(Lp, "healthz", "cpu_us")
        g_rs = _get(Lp, "RS256-pool", "cpu_us")
        g_hs = _get(Lp, "HS256-pool", "cpu_us")
        w(
            "The same work timed in-process on one pinned core (`bench/breakdown.py`: WSGI calls "
            "straight into the Flask app, no HTTP server, best of 3), beside the CPU per request "
            f"the gunicorn server used above ({lay_name}):\n"
        )
        w("| step | µs CPU |\n|---|---|")
        rows = [
            ("gunicorn: GET /healthz (server CPU per request)", g_hz),
            ("gunicorn: RS256 exchange (server CPU per request)", g_rs),
            ("gunicorn: HS256 exchange (server CPU per request)", g_hs),
            ("in-process: Flask GET /healthz", bd.get("flask_healthz")),
            (
                "in-process: POST /oauth/token, RS256 (in front of Flask)",
                bd.get("flask_exchange_RS256"),
            ),
            (
                "in-process: POST /oauth/token, HS256 (in front of Flask)",
                bd.get("flask_exchange_HS256"),
            ),
            (
                "in-process: POST /oauth/token, refused (forged signature, in front of Flask)",
                bd.get("flask_refused_signature"),
            ),
            (
                "in-process: POST /oauth/token, HS256 through Flask's view",
                bd.get("flask_view_exchange_HS256"),
            ),
            (
                "in-process: POST /oauth/token, refused (forged signature) through Flask's view",
                bd.get("flask_view_refused_signature"),
            ),
            ("in-process: GET /.well-known/jwks.json (in front of Flask)", bd.get("flask_jwks")),
            (
                "in-process: pipeline.exchange HS256 (no Flask, no form)",
                bd.get("pipeline_exchange_HS256"),
            ),
            ("verify, cache hit (sha256 + LRU + clock checks)", bd.get("verify_cached")),
            ("verify, new token (parse + RS256 verify + claims)", bd.get("verify_uncached")),
            ("map claims to a user + grant", bd.get("map_grant")),
            ("policy (name rules + getpwnam)", bd.get("policy_getpwnam")),
            ("mint RS256 (RSA-2048 signature)", bd.get("mint_RS256")),
            ("mint HS256", bd.get("mint_HS256")),
            ("audit line to a file", bd.get("audit_line")),
            ("Prometheus counters + histogram (multiprocess)", bd.get("metrics")),
        ]
        for label, v in rows:
            w(f"| {label} | {fmt(v)} |")
        if g_hz and bd.get("flask_healthz"):
            w(
                f"\ngunicorn (gthread: poller thread, worker thread, wake-up pipe), its access log "
                "and the kernel's loopback TCP cost about "
                f"{fmt(g_hz - bd['flask_healthz'])} µs per "
                "request on top of Flask: the floor under every door.\n"
            )
        else:
            w("")

    w("## 3. Identity providers: client_credentials\n")
    w("npm oidc-provider and Keycloak answering the same grant (RS256 JWT access token).\n")
    w(LOAD_HEAD)
    idps = (("oidc-provider", "oidc"), ("Keycloak", "keycloak"))
    for who, key in idps:
        for name, s in res.get(key, {}).items():
            w(_load_row(f"{who} client_credentials ({name})", s.get("capacity")))
    w("")
    for who, key in idps:
        for name, s in res.get(key, {}).items():
            w(f"{who} RSS ({name}): {_kib(s.get('rss_kib'))}.\n")
            if s.get("latency"):
                w(
                    "| load | target req/s | achieved req/s | p50 ms | p95 ms | p99 ms |\n"
                    "|---|---|---|---|---|---|"
                )
                for frac, x in s["latency"].items():
                    w(
                        f"| {frac} % | {fmt(x['target_rate'])} | {fmt(x['rps'])} | "
                        f"{_ms(x['p50_ms'])} | "
                        f"{_ms(x['p95_ms'])} | {_ms(x['p99_ms'])} |"
                    )
                w("")
    w("Keycloak's own sizing guide plans 120 client-credential grants/s per vCPU.\n")

    w("## 4. `scontrol token`\n")
    for s in res.get("slurm", {}).values():
        sc = s.get("scontrol", {})
        w(
            f"Slurm {s.get('version')}: `{sc.get('argv')}`, one after another for "
            f"{plan.get('short')} s per round.\n"
        )
        w("| round | tokens | per s | failed | slurmctld cores |\n|---|---|---|---|---|")
        for i, r in enumerate(sc.get("rounds", []), 1):
            w(
                f"| {i} | {r['tokens']} | {fmt(r['rate'], 1)} | {r['failed']} | "
                f"{_r(r['slurmctld_cores'])} |"
            )
        w(f"\nMedian **{fmt(sc.get('rate'), 1)}/s**.\n")

    w("## 5. The proxy\n")
    for s in res.get("slurm", {}).values():
        px = s.get("proxy", {})
        w(
            f"Slurm {s.get('version')}, `GET {px.get('path')}`, bridge {px.get('config')}"
            + (f" (and {px['granian'].get('config')})" if px.get("granian") else "")
            + ", "
            f"auth_style {px.get('auth_style')}; slurmrestd, slurmctld and the bridge share the "
            f"server core(s) ({s.get('layout')}).\n"
        )
        w(LOAD_HEAD)
        w(_load_row("direct to slurmrestd", px.get("direct")))
        w(_load_row("through the proxy", px.get("proxied")))
        w(_load_row("direct, 1 connection", px.get("direct-1conn")))
        w(_load_row("through the proxy, 1 connection", px.get("proxied-1conn")))
        w(_load_row("plain nginx (no token work)", px.get("nginx")))
        w(_load_row("plain nginx, 1 connection", px.get("nginx-1conn")))
        w(_load_row("IdP token straight to slurmrestd (no bridge)", px.get("idp-direct")))
        w(_load_row("IdP token straight, 1 connection", px.get("idp-direct-1conn")))
        w(_load_row("oauth2-proxy (no bridge)", px.get("oauth2-proxy")))
        w(_load_row("oauth2-proxy, 1 connection", px.get("oauth2-proxy-1conn")))
        ar = px.get("auth-request", {})
        w(_load_row("nginx + bridge auth_request, cached (as shipped)", ar.get("cached")))
        w(_load_row("nginx + auth_request, cached, 1 connection", ar.get("cached-1conn")))
        w(_load_row("nginx + bridge auth_request, uncached", ar.get("uncached")))
        w(_load_row("nginx + auth_request, uncached, 1 connection", ar.get("uncached-1conn")))
        gx = px.get("granian", {})
        if gx:
            gar = gx.get("auth-request", {})
            w(_load_row("granian: through the proxy", gx.get("proxied")))
            w(_load_row("granian: through the proxy, 1 connection", gx.get("proxied-1conn")))
            w(_load_row("granian: nginx + bridge auth_request, cached", gar.get("cached")))
            w(_load_row("granian: nginx + auth_request, cached, 1 conn.", gar.get("cached-1conn")))
            w(_load_row("granian: nginx + bridge auth_request, uncached", gar.get("uncached")))
            w(
                _load_row(
                    "granian: nginx + auth_request, uncached, 1 conn.", gar.get("uncached-1conn")
                )
            )
        d, p = px.get("direct-1conn"), px.get("proxied-1conn")
        if d and p:
            w(
                "\nAdded by the proxy on one connection: p50 "
                f"**{p['p50_ms'] - d['p50_ms']:+.2f} ms**, "
                f"p99 **{p['p99_ms'] - d['p99_ms']:+.2f} ms**. Throughput kept: "
                f"**{_r(_ratio(_get(px, 'proxied', 'rps'), _get(px, 'direct', 'rps')))}"
                f"{TIMES}** of "
                f"direct. Bridge RSS per worker: {_kib(px.get('rss_kib'))}.\n"
            )
        else:
            w("")
        w(
            "(server CPU µs/req counts slurmrestd + slurmctld, plus nginx, oauth2-proxy and/or "
            "the bridge where they are in the path)\n"
        )
        w(_added_p50_table(px))

    w(_paths_check())

    w("## 6. JWKS\n")
    if j:
        w(
            f"`GET /.well-known/jwks.json` ({j.get('body_bytes')} bytes), bridge "
            f"{j.get('config')}, {j.get('layout')} layout.\n"
        )
        w(LOAD_HEAD)
        w(_load_row("200 (full document)", j.get("200")))
        w(_load_row("304 (If-None-Match)", j.get("304")))
        if j.get("granian"):
            w(_load_row(f"200 under {j['granian'].get('config')}", _get(j, "granian", "200")))
            w(_load_row("304 under granian", _get(j, "granian", "304")))
        w("")

    extra = res.get("notes")
    if extra:
        w(extra)
    return "\n".join(out) + "\n"
