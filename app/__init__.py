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
    return Bridge(settings, keys, audit, Pipeline(settings, keys, audit))


def create_app(settings: Settings | None = None) -> Flask:
    """The application factory (``gunicorn 'app:create_app()'`` reads $SLURM_JWT_BRIDGE_CONFIG)."""
    settings = settings or load_settings()
    bridge = build_bridge(settings)
    app = Flask(__name__)
    app.extensions["slurm_jwt_bridge"] = bridge
    app.json.sort_keys = False

    from .web import health, jwks

    app.register_blueprint(jwks.bp)
    app.register_blueprint(health.bp)
    return app
