"""slurm-jwt-bridge: exchange identity-provider tokens for short-lived Slurm JWTs."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from .audit import AuditLog
from .keys import KeyRingSource
from .pipeline import Pipeline
from .settings import Settings, load_settings

__all__ = ["Bridge", "create_app"]


@dataclass
class Bridge:
    """What every blueprint needs, built once by ``create_app``."""

    settings: Settings
    keys: KeyRingSource
    audit: AuditLog
    pipeline: Pipeline


def build_bridge(settings: Settings) -> Bridge:
    """Load keys and wire the pipeline (no Flask); raises on a bad key directory."""
    keys = KeyRingSource(settings.keys.dir, settings.keys.reload_interval)
    audit = AuditLog(settings.audit.destination)
    verifier = None
    if settings.issuers:
        from .upstream import UpstreamVerifier

        verifier = UpstreamVerifier(settings.issuers)
    pipeline = Pipeline(settings, keys, audit, verifier)
    return Bridge(settings, keys, audit, pipeline)


def create_app(settings: Settings | None = None) -> Flask:
    """The application factory (``gunicorn 'app:create_app()'`` reads $SLURM_JWT_BRIDGE_CONFIG)."""
    settings = settings or load_settings()
    bridge = build_bridge(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.extensions["slurm_jwt_bridge"] = bridge
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from .web import api, health, jwks, openapi

    for blueprint in (jwks.bp, health.bp, api.bp, openapi.bp):
        app.register_blueprint(blueprint)
    return app
