"""Where an exchange's CPU goes: the same work timed in-process, step by step (no HTTP server).

Run pinned in a subprocess by ``python -m bench`` (``python -m bench.breakdown CONFIG.toml
TOKENS.json``); prints one JSON object of CPU microseconds per call. Comparing "Flask /healthz
in-process" with the gunicorn figure for /healthz gives the cost of gunicorn and the kernel.
"""

from __future__ import annotations

import io
import json
import os
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


def measure(config: Path, pool: list[str], fresh: list[str], user: str) -> dict[str, float]:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sjb-bench-"))
    os.environ["SLURM_JWT_BRIDGE_CONFIG"] = str(config)
    from werkzeug.test import EnvironBuilder

    from slurm_jwt_bridge import create_app
    from slurm_jwt_bridge.minting import mint_slurm_token
    from slurm_jwt_bridge.pipeline import Request
    from slurm_jwt_bridge.policy import check_account

    from .servers import exchange_body

    app = create_app()
    bridge = app.extensions["slurm_jwt_bridge"]
    pipeline = bridge.pipeline
    ring = bridge.keys.current()

    def environ(path: str, method: str = "GET", body: str | None = None) -> tuple[dict, bytes]:
        ct = "application/x-www-form-urlencoded" if body else None
        env = EnvironBuilder(path=path, method=method, data=body, content_type=ct).get_environ()
        return env, env["wsgi.input"].read()

    def wsgi(cases: list[tuple[dict, bytes]]) -> Callable[[], None]:
        state = {"i": 0}

        def call() -> None:
            env, raw = cases[state["i"] % len(cases)]
            state["i"] += 1
            env = dict(env)
            env["wsgi.input"] = io.BytesIO(raw)
            for _ in app(env, lambda *a: None):
                pass

        return call

    out: dict[str, float] = {}
    out["flask_healthz"] = _us(wsgi([environ("/healthz")]), 2000)
    for alg, n in (("HS256", 2000), ("RS256", 400)):
        cases = [environ("/oauth/token", "POST", exchange_body(t, alg)) for t in pool]
        out[f"flask_exchange_{alg}"] = _us(wsgi(cases), n)
    token = pool[0]
    origin = Request("token-exchange", "127.0.0.1")
    out["pipeline_exchange_HS256"] = _us(
        lambda: pipeline.exchange(token, alg="HS256", request=origin), 2000
    )
    out["verify_cached"] = _us(lambda: pipeline.verify(token), 5000)
    it = iter(fresh)
    out["verify_uncached"] = _us(lambda: pipeline.verify(next(it)), (len(fresh) - 10) // 3)
    verified = pipeline.verify(token)
    out["map_grant"] = _us(lambda: pipeline.grant_for(verified), 5000)
    policy = bridge.settings.policy
    required = bridge.settings.mapping.require_local_account
    out["policy_getpwnam"] = _us(lambda: check_account(user, policy, required), 5000)
    out["mint_HS256"] = _us(lambda: mint_slurm_token(ring, user, 1800, "HS256"), 5000)
    out["mint_RS256"] = _us(lambda: mint_slurm_token(ring, user, 1800, "RS256"), 300)
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
    out["audit_line"] = _us(lambda: pipeline.audit.record("exchange", "minted", **fields), 5000)
    if pipeline.observer is not None:
        obs = pipeline.observer
        out["metrics"] = _us(lambda: obs.minted(fields, 0.001), 5000)
    return out


if __name__ == "__main__":
    cfg, tokens_file, user = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    data = json.loads(tokens_file.read_text())
    print(json.dumps(measure(cfg, data["pool"], data["fresh"], user)))
