"""Liveness, readiness and metrics."""

from __future__ import annotations

import ipaddress
import logging
import os

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from . import current_bridge

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


def _internal() -> bool:
    """Whether the client is in ``[server] internal_allow`` (sees details and metrics)."""
    bridge = current_bridge()
    try:
        addr = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(
        addr in ipaddress.ip_network(net, strict=False)
        for net in bridge.settings.server.internal_allow
    )


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok", worker=os.getpid())


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    bridge = current_bridge()
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
        # Due refreshes run in the background: a probe answers from what is known now.
        verifier.refresh_due(background=True)
        issuers = verifier.health()
        checks["issuers"] = issuers
        ready = ready and all(s["jwks_present"] and s["usable"] for s in issuers.values())
    status = 200 if ready else 503
    if _internal():
        return jsonify(ready=ready, checks=checks), status
    if not ready:
        log.warning("not ready: %s", checks)
    return jsonify(ready=ready), status


@bp.get("/metrics")
def metrics() -> Response:
    from ..metrics import render

    bridge = current_bridge()
    if not _internal():
        return Response("forbidden\n", status=403, mimetype="text/plain")
    body, content_type = render(bridge.keys.current(), bridge.settings.keys.rotation_period)
    return Response(body, mimetype=content_type.split(";")[0], content_type=content_type)
