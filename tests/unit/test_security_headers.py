"""Every answer carries the security headers (create_app's after_request hook); an HTML
answer also a Content-Security-Policy; a header the view set itself is kept."""

from __future__ import annotations

from flask import Response

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import Settings


def test_security_headers(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/test-html")
    def html() -> Response:
        return Response("<p>x</p>", mimetype="text/html")

    @app.get("/test-own")
    def own() -> Response:
        return Response(
            "<p>x</p>",
            mimetype="text/html",
            headers={"x-frame-options": "SAMEORIGIN", "Content-Security-Policy": "default-src x"},
        )

    client = app.test_client()
    r = client.get("/healthz")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "Content-Security-Policy" not in r.headers
    r = client.get("/test-html")
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert r.headers["X-Frame-Options"] == "DENY"
    r = client.get("/test-own")
    assert r.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert r.headers.getlist("Content-Security-Policy") == ["default-src x"]
    assert r.headers["Referrer-Policy"] == "no-referrer"
