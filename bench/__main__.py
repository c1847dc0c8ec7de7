"""``python -m bench``: run every benchmark and write docs/BENCHMARKS.md.

    python -m bench                      # everything (~26 minutes on 2 cores)
    python -m bench --quick              # 1 round of 3 s each: checks the harness, writes
                                         # var/bench/quick.md (never docs/BENCHMARKS.md)
    python -m bench --only ceiling,exchange --out /tmp/b.md
    python -m bench --remove-users       # delete the sjbb* accounts the benchmark created

Needs root for the Slurm parts (daemons, chroot) and the local benchmark accounts; without root
those parts are skipped and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .common import ROOT, Procs, layouts, machine_info, versions
from .report import render
from .scenarios import (
    Ctx,
    Plan,
    ceiling,
    ensure_bench_users,
    exchange,
    jwks,
    keycloak,
    oidc_provider,
    remove_bench_users,
    slurm,
)

PARTS = ("ceiling", "exchange", "oidc", "keycloak", "slurm", "jwks")
NOTES = ROOT / "bench" / "NOTES.md"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per capacity round")
    ap.add_argument("--short", type=float, default=5.0, help="seconds per short round")
    ap.add_argument("--quick", action="store_true", help="1 round, 3 s: check the harness")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--layouts", default="pinned,shared", help="pinned and/or shared")
    ap.add_argument("--slurm", default="26.05", help="Slurm versions: 26.05 and/or 22.05")
    ap.add_argument("--out", help="default docs/BENCHMARKS.md (--quick: var/bench/quick.md)")
    ap.add_argument("--json", help="default var/bench/results.json (--quick: quick.json)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--remove-users", action="store_true")
    ap.add_argument("--from-json", help="only render --out from the results of an earlier run")
    args = ap.parse_args(argv)

    quick = "quick" if args.quick else None
    args.out = args.out or str(
        ROOT / "var" / "bench" / "quick.md" if quick else ROOT / "docs" / "BENCHMARKS.md"
    )
    args.json = args.json or str(ROOT / "var" / "bench" / f"{quick or 'results'}.json")
    if args.remove_users:
        remove_bench_users(log)
        return 0
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        if NOTES.exists():
            results["notes"] = NOTES.read_text()
        Path(args.out).write_text(render(results))
        log(f"wrote {args.out} from {args.from_json}")
        return 0
    plan = Plan(rounds=args.rounds, duration=args.duration, short=args.short)
    if args.quick:
        plan = Plan(rounds=1, duration=3, short=2, warmup=1, ceiling_seconds=1)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    all_layouts = layouts()
    chosen = {k: all_layouts[k] for k in args.layouts.split(",") if k in all_layouts}
    if not chosen:
        ap.error("no usable layout (pinned needs 2 cores)")
    for tool in ("wrk", "openssl", "node", "taskset"):
        if shutil.which(tool) is None:
            log(f"{tool} is not installed (apt-get install {tool}); parts needing it will fail")

    workdir = Path(tempfile.mkdtemp(prefix="slurm-jwt-bridge-bench-"))
    procs = Procs()
    ctx = Ctx(plan, chosen, workdir, procs, log)
    started = time.time()
    ctx.results["meta"] = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": machine_info(),
        "versions": versions(),
        "plan": plan.__dict__,
        "layouts": {k: v.describe() for k, v in chosen.items()},
    }
    errors: list[str] = []
    ctx.results["errors"] = errors
    upstream = None
    log(f"work directory {workdir}; parts {', '.join(parts)}; layouts {', '.join(chosen)}")
    try:
        from slurm_jwt_bridge.keys import init_keys

        from .servers import Upstream

        keys_dir = workdir / "keys"
        init_keys(keys_dir)
        upstream = Upstream()

        def part(name: str, fn, *a) -> None:  # type: ignore[no-untyped-def]
            if name not in parts:
                return
            log(f"== {name}")
            t0 = time.monotonic()
            try:
                fn(ctx, *a)
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
                log(f"{name} failed:\n{traceback.format_exc()}")
            finally:
                ctx.procs.stop_all()
            log(f"== {name} done in {time.monotonic() - t0:.0f} s")

        part("ceiling", ceiling)
        local_users = ensure_bench_users(log) if "exchange" in parts else False
        part("exchange", exchange, upstream, keys_dir, local_users)
        part("oidc", oidc_provider)
        part("keycloak", keycloak)
        if "slurm" in parts:
            if os.geteuid() != 0:
                errors.append("slurm: skipped, real Slurm daemons need root")
            else:
                for version in [v.strip() for v in args.slurm.split(",") if v.strip()]:
                    part("slurm", slurm, upstream, version)
        part("jwks", jwks, keys_dir)
    finally:
        procs.stop_all()
        if upstream is not None:
            upstream.stop()
        ctx.results["meta"]["duration_s"] = time.time() - started
        if NOTES.exists():
            ctx.results["notes"] = NOTES.read_text()
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(ctx.results, indent=1, default=str))
        Path(args.out).write_text(render(ctx.results))
        log(f"wrote {args.out} and {args.json} ({time.time() - started:.0f} s)")
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
