"""slurm-jwt-bridge: exchange identity-provider tokens for short-lived Slurm JWTs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .audit import AuditLog
from .errors import BridgeError
from .keys import KeyRingSource
from .pipeline import Pipeline
from .settings import IssuerSettings, Settings, load_settings

if TYPE_CHECKING:
    from flask import Flask

    from .metrics import Metrics

__all__ = ["Bridge", "create_app"]


@dataclass
class Bridge:
    """What every blueprint needs, built once by ``create_app``."""

    settings: Settings
    keys: KeyRingSource
    pipeline: Pipeline  # its audit log is the one every door writes to

    def discovery(self, issuer: IssuerSettings) -> dict[str, Any]:
        """The issuer's OpenID discovery document (cached by the upstream verifier)."""
        if self.pipeline.verifier is None:
            raise BridgeError("invalid_request", "no identity provider is configured", 404)
        return self.pipeline.verifier.discovery(issuer.name)


def build_bridge(settings: Settings, metrics: Metrics | None = None) -> Bridge:
    """Load keys and wire the pipeline (no Flask); raises on a bad key directory."""
    keys = KeyRingSource(
        settings.keys.dir,
        settings.keys.reload_interval,
        on_reload_error=metrics.key_reload_failed if metrics is not None else None,
    )
    audit = AuditLog(settings.audit.destination)
    verifier = None
    if settings.issuers:
        from .upstream import UpstreamVerifier

        verifier = UpstreamVerifier(
            settings.issuers, on_fetch=metrics.jwks_fetch if metrics is not None else None
        )
    limiter = None
    if settings.rate_limit.enabled and settings.issuers:
        from .ratelimit import SubjectLimiter

        limiter = SubjectLimiter(settings.rate_limit)
    pipeline = Pipeline(settings, keys, audit, verifier, observer=metrics, subject_limiter=limiter)
    return Bridge(settings, keys, pipeline)


def create_app(settings: Settings | None = None) -> Flask:
    """The application factory: ``gunicorn 'slurm_jwt_bridge:create_app()'``
    reads $SLURM_JWT_BRIDGE_CONFIG."""
    # Flask is imported here, not at module level, so the admin CLI starts quickly.
    from flask import Flask, Response, jsonify

    from .metrics import Metrics

    settings = settings or load_settings()
    metrics = Metrics()
    bridge = build_bridge(settings, metrics)
    app = Flask(__name__, template_folder="web/templates", static_folder="web/static")
    app.extensions["slurm_jwt_bridge_metrics"] = metrics
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.extensions["slurm_jwt_bridge"] = bridge
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from .web import api, browser, health, jwks, openapi

    for blueprint in (jwks.bp, health.bp, api.bp, openapi.bp):
        app.register_blueprint(blueprint)
    app.wsgi_app = jwks.JwksFastPath(app.wsgi_app, bridge)  # type: ignore[method-assign]
    if settings.browser.enabled:
        browser.init_browser(app, settings)
    if settings.proxy.enabled or settings.proxy.auth_request:
        from .web.proxy import init_proxy

        init_proxy(app, settings, bridge.pipeline)
    from .web import token_door

    address_limit = None
    if settings.rate_limit.enabled:
        from .ratelimit import AddressLimit, init_rate_limits

        limiter = init_rate_limits(app, settings.rate_limit)
        # POST /oauth/token is counted in front of Flask, in Flask-Limiter's counter
        address_limit = AddressLimit(
            settings.rate_limit, token_door.ENDPOINT, bridge.pipeline, limiter
        )
    app.wsgi_app = token_door.TokenFastPath(app.wsgi_app, app, bridge, address_limit)  # type: ignore[method-assign]
    if settings.server.proxy_fix:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # X-Forwarded-For and -Proto of that many hops; never -Host, -Port or -Prefix: the
        # service's own URLs come from [server] public_url (web/urls.py).
        from .web.forwarded import ForwardedClientRequired

        n = settings.server.proxy_fix
        proxied = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=0, x_port=0, x_prefix=0)
        app.wsgi_app = ForwardedClientRequired(proxied, n)  # type: ignore[method-assign]

    app.after_request(jwks.add_security_headers)

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> Response:
        resp = jsonify(error="invalid_request", error_description="request body too large")
        resp.status_code = 413
        resp.headers["Cache-Control"] = "no-store"
        return resp

    from werkzeug.exceptions import ClientDisconnected

    @app.errorhandler(ClientDisconnected)
    def body_not_received(_exc: Exception) -> Response:
        # The body stopped arriving (the worker's read timeout, gunicorn_worker.py) or the
        # client went away.
        resp = jsonify(
            error="invalid_request", error_description="the request body did not arrive in time"
        )
        resp.status_code = 408
        resp.headers["Connection"] = "close"
        return resp

    @app.errorhandler(500)
    def server_error(_exc: Exception) -> tuple[Response, int]:
        return jsonify(error="server_error", error_description="internal error; see the log"), 500

    return app
