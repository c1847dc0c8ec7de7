"""The service's own absolute URLs: from ``[server] public_url``, never from the request.

A redirect URI built from the ``Host`` (or ``X-Forwarded-Host``) header is one a client can
steer: the identity provider would send the authorization code, or the user, to the host the
client named wherever its registration accepts it. Without ``public_url`` (the development
server; gunicorn and ``config check`` refuse browser login without it) the request's own base
URL stands in. The path is the route's own, without the request's script root: a
``SCRIPT_NAME`` would otherwise move the service's URLs under ``public_url``.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, has_request_context, request, url_for

from ..settings import Settings


def own_url(endpoint: str, *, relative: bool = False, **values: Any) -> str:
    """``public_url`` + the endpoint's path; without ``public_url``, the path alone when
    ``relative`` (the client resolves it against the URL it asked), else the request's base
    URL + path."""
    settings: Settings = current_app.extensions["slurm_jwt_bridge"].settings
    path = url_for(endpoint, **values)
    if settings.server.public_url:
        # public_url carries any deployment prefix; the request's script root (SCRIPT_NAME,
        # which gunicorn takes from a header of a forwarder it trusts) is not the service's.
        root = request.script_root if has_request_context() else ""
        if root and path.startswith(root + "/"):
            path = path[len(root) :]
        return settings.server.public_url + path
    return path if relative else request.host_url.rstrip("/") + path


def public_url_problem(settings: Settings) -> str | None:
    """One line when browser login (its redirect URIs, the device page's address) would be
    built from the request's ``Host`` header: a login issuer and no ``public_url``."""
    if settings.server.public_url or not settings.browser.enabled:
        return None
    if not any(i.client_id for i in settings.issuers):
        return None
    return (
        "server.public_url: must be set for browser login (the identity provider's redirect "
        "URI is built from it, never from the request's Host)"
    )
