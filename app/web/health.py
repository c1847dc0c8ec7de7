"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    bridge = current_app.extensions["slurm_jwt_bridge"]
    ring = bridge.keys.current()
    checks: dict[str, object] = {
        "keys": {
            "active_kid": ring.active.kid if ring.active else None,
            "hs256": ring.hs256 is not None,
            "reload_error": bridge.keys.last_error,
        }
    }
    ready = ring.active is not None or ring.hs256 is not None
    return jsonify(ready=ready, checks=checks), (200 if ready else 503)
