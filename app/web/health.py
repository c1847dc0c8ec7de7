"""Liveness, readiness and metrics."""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify
from flask.typing import ResponseReturnValue

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok", worker=os.getpid())


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
    # A keys directory that changed and failed to load means the service signs with a ring
    # that is no longer the one on disk: not ready until it loads again.
    ready = (ring.active is not None or ring.hs256 is not None) and bridge.keys.last_error is None
    verifier = bridge.pipeline.verifier
    if verifier is not None:
        verifier.refresh_due()
        issuers = verifier.health()
        checks["issuers"] = issuers
        ready = ready and all(s["jwks_present"] and s["usable"] for s in issuers.values())
    return jsonify(ready=ready, checks=checks), (200 if ready else 503)


@bp.get("/metrics")
def metrics() -> Response:
    from ..metrics import render

    bridge = current_app.extensions["slurm_jwt_bridge"]
    body, content_type = render(bridge.keys.current(), bridge.settings.keys.rotation_period)
    return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)
