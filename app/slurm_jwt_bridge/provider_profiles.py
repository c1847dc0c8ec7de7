"""Provider profiles: what a token of each issuer kind (``IssuerSettings.kind``) means.

Pure functions of the settings, the claims and the header; no I/O. Each profile accepts or
refuses the token's audience and reads its client, kind (access or ID), groups, roles and
whether a service (client credentials) holds it.

- ``keycloak``: access tokens often carry ``aud`` "account" or none, so a token is accepted when
  ``aud`` names a configured audience or ``azp`` is an allowed client. Opaque tokens can be
  introspected (introspection.py) when ``introspection`` is configured.
- ``cognito``: ``token_use`` decides; access tokens carry ``client_id`` (no ``aud``), ID tokens
  carry ``aud``.
- ``entra``: v1 and v2 issuers for the token's ``tid``, ``{tenantid}`` templates for multi-tenant
  apps, allowed tenants, JWKS keys without ``alg``, Graph tokens refused with advice.
- ``oidc``: ``aud`` must meet ``audiences``; ``allowed_clients`` restricts ``azp``/``client_id``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .errors import invalid_grant
from .settings import TENANT_PLACEHOLDER, IssuerSettings
from .token_claims import (
    CLAIM_CLIP,
    Profile,
    audiences,
    clip,
    clip_list,
    dedupe,
    string,
    strings,
    wrong_audience,
    wrong_use,
)

GRAPH_AUDIENCES = frozenset(
    {
        "00000003-0000-0000-c000-000000000000",
        "https://graph.microsoft.com",
        "https://graph.microsoft.com/",
    }
)
# Entra's v2 login host -> its v1 (sts) host, for sovereign clouds too.
_ENTRA_STS_HOST = {
    "login.microsoftonline.com": "sts.windows.net",
    "login.microsoftonline.us": "sts.windows.net",
    "login.chinacloudapi.cn": "sts.chinacloudapi.cn",
    "login.partner.microsoftonline.cn": "sts.chinacloudapi.cn",
}
_ENTRA_LOGIN_HOST = {"sts.chinacloudapi.cn": "login.chinacloudapi.cn"}

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,99}$")


def entra_issuer_forms(configured: str, tid: str) -> set[str]:
    """The issuers Entra may write for tenant ``tid``: the configured form, v1 and v2."""
    host = urlsplit(configured.replace(TENANT_PLACEHOLDER, "t")).hostname or ""
    login = (
        host
        if host in _ENTRA_STS_HOST
        else _ENTRA_LOGIN_HOST.get(host, "login.microsoftonline.com")
    )
    sts = _ENTRA_STS_HOST.get(login, "sts.windows.net")
    return {
        configured.replace(TENANT_PLACEHOLDER, tid),
        f"https://{login}/{tid}/v2.0",
        f"https://{sts}/{tid}/",
    }


def entra_allowed_tenants(s: IssuerSettings) -> tuple[str, ...] | None:
    """Tenants whose tokens are accepted; None means any (``allow_any_tenant = true``)."""
    if s.tenants:
        return s.tenants
    if TENANT_PLACEHOLDER in s.issuer:
        return None if s.allow_any_tenant else ()
    segments = [seg for seg in urlsplit(s.issuer).path.split("/") if seg]
    if "v2.0" in segments:
        i = segments.index("v2.0")
        return (segments[i - 1],) if i > 0 else ()
    return (segments[-1],) if segments else ()


def _generic_use(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """Best effort: RFC 9068 ``at+jwt`` is an access token; at_hash/nonce mark an ID token."""
    typ = header.get("typ")
    if isinstance(typ, str) and typ.lower() in ("at+jwt", "application/at+jwt"):
        return "access"
    if "at_hash" in claims or "nonce" in claims or "c_hash" in claims:
        return "id"
    return "access"


# Claims an OpenID Connect ID token never carries and OAuth access tokens do (RFC 9068 client_id
# and scope, Okta's cid and scp).
_ACCESS_MARKERS = ("scope", "scp", "client_id", "cid")


def _oidc_use(s: IssuerSettings, claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A generic issuer's token kind. An ID token need not carry nonce or at_hash (refreshed and
    device-grant ID tokens do not): one issued to the bridge's own login client (its ``aud``)
    that does not say it is an access token (``at+jwt`` or an access-token claim) is an ID
    token."""
    use = _generic_use(claims, header)
    if use != "access" or not s.client_id or s.client_id not in audiences(claims):
        return use
    typ = header.get("typ")
    if isinstance(typ, str) and typ.lower() in ("at+jwt", "application/at+jwt"):
        return use
    return use if any(marker in claims for marker in _ACCESS_MARKERS) else "id"


def keycloak_profile(
    s: IssuerSettings, claims: dict[str, Any], header: dict[str, Any], introspected: bool = False
) -> Profile:
    typ = claims.get("typ")
    if isinstance(typ, str):
        use = {"bearer": "access", "id": "id"}.get(typ.lower(), typ.lower()[:CLAIM_CLIP])
    else:
        use = _generic_use(claims, header)
    aud = audiences(claims)
    # Introspection answers (RFC 7662) name the client in client_id; Keycloak's tokens in azp.
    azp = string(claims.get("azp")) or string(claims.get("client_id"))
    if not (set(aud) & set(s.audiences)) and not (azp and azp in s.allowed_clients):
        raise wrong_audience(
            f"token of client azp={clip(azp)} with aud={clip_list(aud)} is not accepted by "
            f"issuer {s.name!r}: expected azp in allowed_clients {clip_list(s.allowed_clients)} "
            f"or aud in audiences {clip_list(s.audiences)}"
        )
    # Bare names are realm roles; a client role is only ever "<client>:<role>", so a role of the
    # same name defined on any client cannot stand in for a realm role.
    roles: list[str] = []
    realm = claims.get("realm_access")
    if isinstance(realm, dict):
        roles += strings(realm.get("roles"))
    resources = claims.get("resource_access")
    if isinstance(resources, dict):
        for client, access in resources.items():
            if isinstance(access, dict):
                roles += [f"{client}:{role}" for role in strings(access.get("roles"))]
    return Profile(
        azp,
        use,
        dedupe(strings(claims.get("groups"))),
        dedupe(roles),
        use == "access" and _keycloak_service(claims, azp, introspected),
    )


def _keycloak_service(claims: dict[str, Any], azp: str | None, introspected: bool) -> bool:
    """A service-account token: the service account's user name AND the client id claim that
    Keycloak writes from the client-credentials session only (``clientId`` before Keycloak 24,
    ``client_id`` since). A person whose user name happens to be "service-account-<client>"
    logging in through that client has the name but not the claim. An introspection answer
    (RFC 7662) names every token's client in ``client_id``, so there only ``clientId`` counts."""
    username = claims.get("preferred_username")
    if not isinstance(username, str) or azp is None:
        return False
    # Keycloak stores user names in lower case.
    if username.lower() != f"service-account-{azp}".lower():
        return False
    marks = ("clientId",) if introspected else ("clientId", "client_id")
    return any(claims.get(mark) == azp for mark in marks)


def cognito_profile(s: IssuerSettings, claims: dict[str, Any], header: dict[str, Any]) -> Profile:
    use = claims.get("token_use")
    if use not in ("access", "id"):
        raise wrong_use(
            f"token has token_use={clip(use)}; issuer {s.name!r} accepts "
            f"{' or '.join(s.token_use)} tokens"
        )
    if use == "access":
        client = string(claims.get("client_id"))
        if client is None or client not in s.allowed_clients:
            raise wrong_audience(
                f"Cognito access token of app client client_id={clip(client)} is not accepted "
                f"by issuer {s.name!r}: expected one of allowed_clients "
                f"{clip_list(s.allowed_clients)}"
            )
        # client_credentials tokens have no user, hence no username, and name the app client
        # as their subject.
        is_service = "username" not in claims and claims.get("sub") == client
    else:
        aud = audiences(claims)
        accepted = set(s.audiences) | set(s.allowed_clients)
        if not set(aud) & accepted:
            raise wrong_audience(
                f"Cognito ID token for aud={clip_list(aud)} is not accepted by issuer "
                f"{s.name!r}: expected one of {clip_list(sorted(accepted))}"
            )
        client = aud[0] if aud else None
        is_service = False
    groups = dedupe(strings(claims.get("cognito:groups")))
    return Profile(client, use, groups, (), is_service)


def entra_profile(s: IssuerSettings, claims: dict[str, Any], header: dict[str, Any]) -> Profile:
    tid = claims.get("tid")
    allowed = entra_allowed_tenants(s)
    if allowed is not None and tid not in allowed:
        raise invalid_grant(
            f"tenant tid={clip(tid)} is not allowed by issuer {s.name!r}; "
            f"allowed tenants: {clip_list(list(allowed))}",
            "tenant_not_allowed",
        )
    aud = audiences(claims)
    if not set(aud) & set(s.audiences):
        raise wrong_audience(
            f"Entra token for aud={clip_list(aud)} is not accepted by issuer {s.name!r}: "
            f"request a token for one of {clip_list(s.audiences)}"
        )
    client = string(claims.get("azp")) or string(claims.get("appid"))
    if s.allowed_clients and client not in s.allowed_clients:
        raise wrong_audience(
            f"Entra client application {clip(client)} is not in allowed_clients "
            f"{clip_list(s.allowed_clients)} of issuer {s.name!r}"
        )
    idtyp = claims.get("idtyp")
    sub = claims.get("sub")
    use = _generic_use(claims, header)
    # App-only: idtyp "app" (optional claim), or without it oid == sub; never a delegated scope
    # (scp), never an ID token.
    is_service = (
        use == "access"
        and "scp" not in claims
        and (idtyp == "app" or (idtyp is None and sub is not None and sub == claims.get("oid")))
    )
    return Profile(
        client,
        use,
        dedupe(strings(claims.get("groups"))),
        dedupe(strings(claims.get("roles"))),
        is_service,
    )


def oidc_profile(s: IssuerSettings, claims: dict[str, Any], header: dict[str, Any]) -> Profile:
    aud = audiences(claims)
    client = string(claims.get("azp")) or string(claims.get("client_id"))
    if s.audiences and not set(aud) & set(s.audiences):
        raise wrong_audience(
            f"token for aud={clip_list(aud)} is not accepted by issuer {s.name!r}: expected "
            f"one of {clip_list(s.audiences)}"
        )
    if s.allowed_clients and not (client in s.allowed_clients or set(aud) & set(s.allowed_clients)):
        raise wrong_audience(
            f"token of client {clip(client)} (aud={clip_list(aud)}) is not accepted by issuer "
            f"{s.name!r}: expected a client in {clip_list(s.allowed_clients)}"
        )
    use = _oidc_use(s, claims, header)
    return Profile(
        client,
        use,
        dedupe(strings(claims.get("groups"))),
        dedupe(strings(claims.get("roles"))),
        use == "access" and oidc_service(s, claims, client),
    )


# Claims of an end user or of a login session (OpenID Connect Core 2 and 5.1, RFC 9068 2.2.1):
# a client-credentials token has none of them.
END_USER_CLAIMS = frozenset(
    {
        "auth_time",
        "sid",
        "nonce",
        "acr",
        "amr",
        "at_hash",
        "session_state",
        "preferred_username",
        "email",
        "name",
        "given_name",
        "family_name",
        "upn",
    }
)


def oidc_service(s: IssuerSettings, claims: dict[str, Any], client: str | None) -> bool:
    """``[[issuers]] service_tokens`` of a generic issuer: "sub_is_client" (RFC 9068 2.2: a
    client-credentials token names its client as subject), "claim:NAME=VALUE" (a claim only
    the IdP's client-credentials grant sets, e.g. Auth0's gty=client-credentials) or "none"."""
    rule = s.service_tokens
    if client is None or rule == "none":
        return False
    if rule.startswith("claim:"):
        name, _, value = rule[len("claim:") :].partition("=")
        return claims.get(name) == value
    # A person whose subject equals a client id (an IdP that lets users pick their sub) is not
    # that client: a token that speaks of a person or a login session is never a service's.
    if any(marker in claims for marker in END_USER_CLAIMS):
        return False
    scope = claims.get("scope")
    if isinstance(scope, str) and "openid" in scope.split():
        return False  # the openid scope is granted to a person's login, never to a client alone
    return claims.get("sub") == client


PROFILES: dict[str, Callable[[IssuerSettings, dict[str, Any], dict[str, Any]], Profile]] = {
    "keycloak": keycloak_profile,
    "cognito": cognito_profile,
    "entra": entra_profile,
    "oidc": oidc_profile,
}


def refuse_graph_token(s: IssuerSettings, header: dict[str, Any], payload: dict[str, Any]) -> None:
    """Graph access tokens (header nonce) verify only at Graph: say which token to get instead."""
    aud = payload.get("aud")
    graph_aud = isinstance(aud, str) and aud in GRAPH_AUDIENCES
    if "nonce" not in header and not graph_aud:
        return
    app_uri = next((a for a in s.audiences if "://" in a), None)
    if app_uri is None:
        app_uri = f"api://{s.audiences[0]}" if s.audiences else "<application ID URI>"
    raise invalid_grant(
        "this is a Microsoft Graph token, which only Graph can verify; request a token for "
        f"this bridge instead, with scope '{app_uri.rstrip('/')}/.default' (not a Graph scope "
        "such as User.Read)",
        "graph_token",
    )


def issuer_matches(s: IssuerSettings, iss: str, payload: dict[str, Any]) -> bool:
    """Whether a token naming ``iss`` (with ``payload``) is one of issuer ``s``'s."""
    if s.kind != "entra":
        return iss == s.issuer
    tid = payload.get("tid")
    if isinstance(tid, str) and _TENANT_RE.match(tid):
        return iss in entra_issuer_forms(s.issuer, tid)
    return iss == s.issuer
