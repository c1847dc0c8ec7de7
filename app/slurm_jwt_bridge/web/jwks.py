"""The JWKS slurmctld (and `jwks sync`) reads: next + active + unexpired retired RS256 keys."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

bp = Blueprint("jwks", __name__)


@bp.get("/.well-known/jwks.json")
@bp.get("/jwks.json")
def jwks() -> Response:
    bridge = current_app.extensions["slurm_jwt_bridge"]
    body, etag = bridge.keys.current().jwks_document()
    headers = {
        "ETag": f'"{etag}"',
        "Cache-Control": f"public, max-age={bridge.settings.jwks.max_age}",
    }
    if request.if_none_match.contains(etag):
        return Response(status=304, headers=headers)
    return Response(body, status=200, mimetype="application/json", headers=headers)
