"""Verify tokens from the upstream identity providers: discovery, JWKS cache, provider profiles.

Why one module: every door trusts an upstream token only after ``UpstreamVerifier.verify``, so the
rules that keep a forged, expired or misdirected token out (asymmetric algorithms only, exact
issuer, audience per provider, clock checks with leeway) live in one place.

Availability rules: a JWKS is fetched lazily (or by ``prefetch``), refreshed every few minutes,
refetched on an unknown ``kid`` at most once per ``jwks_refetch_interval``, and kept in use while
the IdP is unreachable for up to ``jwks_stale_window`` so an IdP outage does not stop the cluster.
Only one fetch per issuer runs at a time; a thread that holds usable keys never waits for it.

Provider profiles (``IssuerSettings.kind``):

- ``keycloak``: access tokens often carry ``aud`` "account" or none, so a token is accepted when
  ``aud`` names a configured audience or ``azp`` is an allowed client. Opaque tokens can be
  introspected with python-keycloak when ``introspection`` is configured.
- ``cognito``: ``token_use`` decides; access tokens carry ``client_id`` (no ``aud``), ID tokens
  carry ``aud``.
- ``entra``: v1 and v2 issuers for the token's ``tid``, ``{tenantid}`` templates for multi-tenant
  apps, allowed tenants, JWKS keys without ``alg``, Graph tokens refused with advice.
- ``oidc``: ``aud`` must meet ``audiences``; ``allowed_clients`` restricts ``azp``/``client_id``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from .errors import BridgeError, invalid_grant, invalid_request
from .names import KEYCLOAK_ISSUER_RE as _KEYCLOAK_ISSUER_RE
from .outbound import http_client, requests_verify
from .settings import TENANT_PLACEHOLDER, IssuerSettings
from .untrusted import insecure_url, printable

__all__ = [
    "ALLOWED_ALGS",
    "MAX_DOCUMENT_BYTES",
    "MAX_TOKEN_BYTES",
    "UpstreamVerifier",
    "VerifiedToken",
    "discovery_url",
]

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
# A fetched JWKS is refreshed after this long (never sooner than the refetch interval, never later
# than half the stale window), so a key removed upstream stops being trusted within minutes.
JWKS_TTL = 300.0
# While no keys were ever fetched, a failed first fetch is retried this soon (an IdP that starts
# together with the bridge should not lock it out for a whole refetch interval).
NO_KEYS_RETRY = 5.0
# Introspection answers "is this token still active": remember a yes only briefly.
INTROSPECTION_CACHE_SECONDS = 60.0
CLAIM_CLIP = 100

# alg -> (kty, allowed crv values or () for any). HS* and "none" are absent on purpose: an IdP's
# token must be verifiable with a published public key, never with a shared secret.
ALLOWED_ALGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "RS256": ("RSA", ()),
    "RS384": ("RSA", ()),
    "RS512": ("RSA", ()),
    "PS256": ("RSA", ()),
    "PS384": ("RSA", ()),
    "PS512": ("RSA", ()),
    "ES256": ("EC", ("P-256",)),
    "ES384": ("EC", ("P-384",)),
    "ES512": ("EC", ("P-521",)),
    "EdDSA": ("OKP", ("Ed25519", "Ed448")),
}
_EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}

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
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")

_JWS = jwt.PyJWS(algorithms=list(ALLOWED_ALGS))


# ---------------------------------------------------------------- result type


@dataclass(frozen=True)
class VerifiedToken:
    """An upstream token whose signature, issuer, audience and times were checked."""

    issuer: IssuerSettings
    claims: dict[str, Any]
    header: dict[str, Any]
    subject: str
    client_id: str | None
    token_use: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    is_service: bool
    exp: int
    token_hash: str


# ---------------------------------------------------------------- small helpers


def _clip(value: Any) -> str:
    """A claim value fit for a reason: at most CLAIM_CLIP characters, quoted, one line."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    more = "..." if len(text) > CLAIM_CLIP else ""
    return repr(text[:CLAIM_CLIP]) + more


def _clip_list(values: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(_clip(v) for v in values[:limit])
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def _malformed(reason: str) -> BridgeError:
    return invalid_grant(f"malformed token: {reason}", "malformed")


def _wrong_audience(reason: str) -> BridgeError:
    return invalid_grant(reason, "wrong_audience")


def _wrong_use(reason: str) -> BridgeError:
    return invalid_grant(reason, "wrong_token_use")


def _unavailable(reason: str, metric: str) -> BridgeError:
    # The token may be fine: the client should retry later, not throw the token away.
    return BridgeError("temporarily_unavailable", reason, 503, metric=metric)


def _b64decode(segment: str, what: str) -> bytes:
    if not _B64URL_RE.match(segment) or len(segment) % 4 == 1:
        raise _malformed(f"the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(f"the {what} is not base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        raise _malformed(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise _malformed(f"the {what} is not a JSON object")
    return value


def _parse_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a compact JWS, unverified; only used to pick issuer and key."""
    parts = token.split(".")
    if len(parts) == 5:
        raise _malformed("encrypted tokens (JWE) are not supported; send a signed JWT")
    if len(parts) != 3:
        raise _malformed("expected three base64url parts separated by dots")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    payload = _json_object(_b64decode(parts[1], "payload"), "payload")
    _b64decode(parts[2], "signature")
    return header, payload


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strs(value: Any) -> list[str]:
    """A claim that should be a list of strings; anything else counts as empty."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _dedupe(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if aud is None:
        return []
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    raise _malformed("the aud claim must be a string or a list of strings")


def _entra_issuer_forms(configured: str, tid: str) -> set[str]:
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


def _entra_allowed_tenants(s: IssuerSettings) -> tuple[str, ...] | None:
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


def _time_checks(s: IssuerSettings, claims: dict[str, Any], now: float) -> int:
    """exp (required), nbf and iat against the clock with the issuer's leeway; returns exp."""
    exp = claims.get("exp")
    if exp is None:
        raise invalid_grant(
            f"token has no exp claim; issuer {s.name!r} must issue expiring tokens",
            "missing_claim",
        )
    if not _is_number(exp):
        raise _malformed("the exp claim is not a number")
    if now > exp + s.leeway:
        raise invalid_grant(
            f"token expired {int(now - exp)} s ago; get a new token from issuer {s.name!r}",
            "expired",
        )
    nbf = claims.get("nbf")
    if nbf is not None:
        if not _is_number(nbf):
            raise _malformed("the nbf claim is not a number")
        if nbf > now + s.leeway:
            raise invalid_grant(
                f"token is not valid for another {int(nbf - now)} s (nbf); "
                "check the clocks of the identity provider and of this host",
                "not_yet_valid",
            )
    iat = claims.get("iat")
    if iat is not None:
        if not _is_number(iat):
            raise _malformed("the iat claim is not a number")
        if iat > now + s.leeway:
            raise invalid_grant(
                f"token was issued {int(iat - now)} s in the future (iat); "
                "check the clocks of the identity provider and of this host",
                "not_yet_valid",
            )
    return int(exp)


# ---------------------------------------------------------------- provider profiles


@dataclass(frozen=True)
class _Profile:
    client_id: str | None
    token_use: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    is_service: bool


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
    if use != "access" or not s.client_id or s.client_id not in _audiences(claims):
        return use
    typ = header.get("typ")
    if isinstance(typ, str) and typ.lower() in ("at+jwt", "application/at+jwt"):
        return use
    return use if any(marker in claims for marker in _ACCESS_MARKERS) else "id"


def _keycloak_profile(
    s: IssuerSettings, claims: dict[str, Any], header: dict[str, Any], introspected: bool = False
) -> _Profile:
    typ = claims.get("typ")
    if isinstance(typ, str):
        use = {"bearer": "access", "id": "id"}.get(typ.lower(), typ.lower()[:CLAIM_CLIP])
    else:
        use = _generic_use(claims, header)
    aud = _audiences(claims)
    # Introspection answers (RFC 7662) name the client in client_id; Keycloak's tokens in azp.
    azp = _str(claims.get("azp")) or _str(claims.get("client_id"))
    if not (set(aud) & set(s.audiences)) and not (azp and azp in s.allowed_clients):
        raise _wrong_audience(
            f"token of client azp={_clip(azp)} with aud={_clip_list(aud)} is not accepted by "
            f"issuer {s.name!r}: expected azp in allowed_clients {_clip_list(s.allowed_clients)} "
            f"or aud in audiences {_clip_list(s.audiences)}"
        )
    # Bare names are realm roles; a client role is only ever "<client>:<role>", so a role of the
    # same name defined on any client cannot stand in for a realm role.
    roles: list[str] = []
    realm = claims.get("realm_access")
    if isinstance(realm, dict):
        roles += _strs(realm.get("roles"))
    resources = claims.get("resource_access")
    if isinstance(resources, dict):
        for client, access in resources.items():
            if isinstance(access, dict):
                roles += [f"{client}:{role}" for role in _strs(access.get("roles"))]
    return _Profile(
        azp,
        use,
        _dedupe(_strs(claims.get("groups"))),
        _dedupe(roles),
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


def _cognito_profile(s: IssuerSettings, claims: dict[str, Any], header: dict[str, Any]) -> _Profile:
    use = claims.get("token_use")
    if use not in ("access", "id"):
        raise _wrong_use(
            f"token has token_use={_clip(use)}; issuer {s.name!r} accepts "
            f"{' or '.join(s.token_use)} tokens"
        )
    if use == "access":
        client = _str(claims.get("client_id"))
        if client is None or client not in s.allowed_clients:
            raise _wrong_audience(
                f"Cognito access token of app client client_id={_clip(client)} is not accepted "
                f"by issuer {s.name!r}: expected one of allowed_clients "
                f"{_clip_list(s.allowed_clients)}"
            )
        # client_credentials tokens have no user, hence no username, and name the app client
        # as their subject.
        is_service = "username" not in claims and claims.get("sub") == client
    else:
        aud = _audiences(claims)
        accepted = set(s.audiences) | set(s.allowed_clients)
        if not set(aud) & accepted:
            raise _wrong_audience(
                f"Cognito ID token for aud={_clip_list(aud)} is not accepted by issuer "
                f"{s.name!r}: expected one of {_clip_list(sorted(accepted))}"
            )
        client = aud[0] if aud else None
        is_service = False
    groups = _dedupe(_strs(claims.get("cognito:groups")))
    return _Profile(client, use, groups, (), is_service)


def _entra_profile(s: IssuerSettings, claims: dict[str, Any], header: dict[str, Any]) -> _Profile:
    tid = claims.get("tid")
    allowed = _entra_allowed_tenants(s)
    if allowed is not None and tid not in allowed:
        raise invalid_grant(
            f"tenant tid={_clip(tid)} is not allowed by issuer {s.name!r}; "
            f"allowed tenants: {_clip_list(list(allowed))}",
            "tenant_not_allowed",
        )
    aud = _audiences(claims)
    if not set(aud) & set(s.audiences):
        raise _wrong_audience(
            f"Entra token for aud={_clip_list(aud)} is not accepted by issuer {s.name!r}: "
            f"request a token for one of {_clip_list(s.audiences)}"
        )
    client = _str(claims.get("azp")) or _str(claims.get("appid"))
    if s.allowed_clients and client not in s.allowed_clients:
        raise _wrong_audience(
            f"Entra client application {_clip(client)} is not in allowed_clients "
            f"{_clip_list(s.allowed_clients)} of issuer {s.name!r}"
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
    return _Profile(
        client,
        use,
        _dedupe(_strs(claims.get("groups"))),
        _dedupe(_strs(claims.get("roles"))),
        is_service,
    )


def _oidc_profile(s: IssuerSettings, claims: dict[str, Any], header: dict[str, Any]) -> _Profile:
    aud = _audiences(claims)
    client = _str(claims.get("azp")) or _str(claims.get("client_id"))
    if s.audiences and not set(aud) & set(s.audiences):
        raise _wrong_audience(
            f"token for aud={_clip_list(aud)} is not accepted by issuer {s.name!r}: expected "
            f"one of {_clip_list(s.audiences)}"
        )
    if s.allowed_clients and not (client in s.allowed_clients or set(aud) & set(s.allowed_clients)):
        raise _wrong_audience(
            f"token of client {_clip(client)} (aud={_clip_list(aud)}) is not accepted by issuer "
            f"{s.name!r}: expected a client in {_clip_list(s.allowed_clients)}"
        )
    use = _oidc_use(s, claims, header)
    return _Profile(
        client,
        use,
        _dedupe(_strs(claims.get("groups"))),
        _dedupe(_strs(claims.get("roles"))),
        use == "access" and _oidc_service(s, claims, client),
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


def _oidc_service(s: IssuerSettings, claims: dict[str, Any], client: str | None) -> bool:
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


_PROFILES: dict[str, Callable[[IssuerSettings, dict[str, Any], dict[str, Any]], _Profile]] = {
    "keycloak": _keycloak_profile,
    "cognito": _cognito_profile,
    "entra": _entra_profile,
    "oidc": _oidc_profile,
}


# ---------------------------------------------------------------- JWKS state


def discovery_url(s: IssuerSettings) -> str:
    """Where issuer ``s`` publishes its discovery document, for the verifier and the login
    doors alike: Entra's ``{tenantid}`` issuers publish theirs under ``organizations``."""
    if s.discovery_url:
        return s.discovery_url
    base = s.issuer.replace(TENANT_PLACEHOLDER, "organizations").rstrip("/")
    return base + "/.well-known/openid-configuration"


class _FetchError(Exception):
    """Discovery or JWKS could not be fetched; the message goes to health() and logs."""


@dataclass
class _Key:
    """One usable public key of a JWKS; PyJWK objects are built per header alg on demand."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    jwk: dict[str, Any]
    parsed: dict[str, jwt.PyJWK] = field(default_factory=dict)

    def fits(self, alg: str) -> bool:
        kty, curves = ALLOWED_ALGS[alg]
        if self.kty != kty or (curves and self.crv not in curves):
            return False
        return self.alg is None or self.alg == alg

    def for_alg(self, alg: str) -> jwt.PyJWK:
        key = self.parsed.get(alg)
        if key is None:
            key = jwt.PyJWK(self.jwk, algorithm=alg)
            self.parsed[alg] = key
        return key


@dataclass(frozen=True)
class _KeySet:
    keys: tuple[_Key, ...]
    fetched_at: float

    def with_kid(self, kid: str | None) -> list[_Key]:
        return [k for k in self.keys if k.kid == kid]


def _parse_jwks(doc: dict[str, Any], now: float) -> _KeySet:
    """Keep the asymmetric signing keys; a JWKS without any is an error, not an empty set."""
    raw = doc.get("keys")
    if not isinstance(raw, list):
        raise _FetchError("JWKS has no 'keys' list")
    keys: list[_Key] = []
    for jwk in raw:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
            continue
        kty, kid, alg, crv = jwk.get("kty"), jwk.get("kid"), jwk.get("alg"), jwk.get("crv")
        if kty not in ("RSA", "EC", "OKP") or (kid is not None and not isinstance(kid, str)):
            continue
        if alg is not None and alg not in ALLOWED_ALGS:
            continue
        if alg is not None:
            probe = alg
        elif kty == "EC":
            probe = _EC_ALG.get(crv, "")
        else:
            probe = "RS256" if kty == "RSA" else "EdDSA"
        if probe not in ALLOWED_ALGS:
            continue
        key = _Key(kid, kty, crv if isinstance(crv, str) else None, alg, dict(jwk))
        if not key.fits(probe):
            continue
        try:
            key.for_alg(probe)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        keys.append(key)
    if not keys:
        raise _FetchError("JWKS holds no usable asymmetric signing key")
    return _KeySet(tuple(keys), now)


class _IssuerState:
    """Per-issuer cache: keys, fetch bookkeeping, and the lock that allows one fetch at a time."""

    def __init__(self, settings: IssuerSettings, http: httpx.Client | None = None) -> None:
        self.settings = settings
        # Each issuer's own client: its ca_file, or the system store, decides whom it trusts.
        self.own_http = http is None
        self.http = http or http_client(
            settings.ca_file or None, headers={"Accept": "application/json"}
        )
        self.fetch_lock = threading.Lock()
        self.keyset: _KeySet | None = None
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        self.jwks_uri: str | None = settings.jwks_uri or None
        self.introspector: Any = None
        self.discovery_doc: dict[str, Any] | None = None
        self.discovery_failed_at: float | None = None
        self.discovery_error: str | None = None
        self.refresher: threading.Thread | None = None
        self.refresher_lock = threading.Lock()
        self.rediscover = False
        s = settings
        self.ttl = max(s.jwks_refetch_interval, min(JWKS_TTL, s.jwks_stale_window / 2))

    @property
    def discovery_url(self) -> str:
        return discovery_url(self.settings)

    def matches(self, iss: str, payload: dict[str, Any]) -> bool:
        s = self.settings
        if s.kind != "entra":
            return iss == s.issuer
        tid = payload.get("tid")
        if isinstance(tid, str) and _TENANT_RE.match(tid):
            return iss in _entra_issuer_forms(s.issuer, tid)
        return iss == s.issuer


class _TokenCache:
    """Bounded LRU of verified tokens by sha256; entries die at their own deadline."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[str, tuple[VerifiedToken, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> VerifiedToken | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if now > entry[1]:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return entry[0]

    def put(self, key: str, token: VerifiedToken, until: float) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._data[key] = (token, until)
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)


# ---------------------------------------------------------------- the verifier


class UpstreamVerifier:
    """Verifies upstream tokens against the configured issuers; one per process, thread-safe."""

    def __init__(
        self,
        issuers: Sequence[IssuerSettings],
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10000,
        on_fetch: Callable[[str, bool], None] | None = None,
    ) -> None:
        for s in issuers:
            if s.kind not in _PROFILES:
                raise ValueError(f"issuer {s.name!r}: unknown kind {s.kind!r}")
            if s.introspection and (
                s.kind != "keycloak" or not _KEYCLOAK_ISSUER_RE.match(s.issuer)
            ):
                raise ValueError(
                    f"issuer {s.name!r}: introspection needs kind keycloak and an issuer "
                    "<base>/realms/<realm>"
                )
            for url in (s.issuer, s.discovery_url, s.jwks_uri):
                if insecure_url(url) and not s.allow_insecure_http:
                    raise ValueError(
                        f"issuer {s.name!r}: plain http to another machine ({_clip(url)}) "
                        "needs allow_insecure_http"
                    )
        self._states = [_IssuerState(s, http) for s in issuers]
        self._clock = clock
        self._cache = _TokenCache(cache_size)
        self._on_fetch = on_fetch

    # ------------------------------------------------------------ public API

    def verify(self, token: str, expected_use: str | None = None) -> VerifiedToken:
        """Verify ``token``; raise BridgeError with a reason a person can act on otherwise.

        ``expected_use`` ("access" or "id") additionally requires that kind of token.
        """
        if not isinstance(token, str) or not token:
            raise _malformed("empty token")
        if len(token) > MAX_TOKEN_BYTES:
            raise invalid_request(f"token is larger than {MAX_TOKEN_BYTES} bytes", "too_large")
        raw = token.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_TOKEN_BYTES:
            raise invalid_request(f"token is larger than {MAX_TOKEN_BYTES} bytes", "too_large")
        token_hash = hashlib.sha256(raw).hexdigest()

        cached = self._cache.get(token_hash, self._clock())
        if cached is not None:
            return self._recheck(cached, expected_use)

        if token.count(".") not in (2, 4) and self._introspecting():
            verified, until = self._introspect(token, token_hash)
        else:
            header, payload = _parse_jwt(token)
            verified = self._verify_jwt(token, token_hash, header, payload)
            until = verified.exp + verified.issuer.leeway
        self._check_use(verified, expected_use)
        self._cache.put(token_hash, verified, until)
        return verified

    def prefetch(self) -> None:
        """Fetch every issuer's discovery and JWKS now (in parallel); failures go to health()."""
        threads = [
            threading.Thread(target=self._fetch, args=(st,), kwargs={"wait": True, "min_gap": 0})
            for st in self._states
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def refresh_due(self, background: bool = False) -> None:
        """Refresh every issuer whose keys are missing or older than their refresh time, at
        most once per ``jwks_refetch_interval``: readiness probes call this, so an IdP outage
        shows in health() even when no token arrives. With ``background`` the fetches run in
        threads of their own (at most one per issuer) and this returns at once."""
        now = self._clock()
        for st in self._states:
            ks = st.keyset
            if ks is not None and now - ks.fetched_at < st.ttl:
                continue
            kwargs = {"wait": True, "min_gap": st.settings.jwks_refetch_interval}
            if not background:
                self._fetch(st, **kwargs)
                continue
            with st.refresher_lock:
                if st.refresher is not None and st.refresher.is_alive():
                    continue
                st.refresher = threading.Thread(
                    target=self._fetch, args=(st,), kwargs=kwargs, daemon=True
                )
                st.refresher.start()

    def health(self) -> dict[str, dict[str, Any]]:
        """Per issuer: keys present, their age in s, whether stale (refresh failed), last error.

        ``usable`` is False when tokens of that issuer would be refused for lack of keys.
        """
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for st in self._states:
            ks, error = st.keyset, st.last_error
            age = None if ks is None else max(0.0, now - ks.fetched_at)
            stale = ks is not None and error is not None
            out[st.settings.name] = {
                "jwks_present": ks is not None,
                "age": None if age is None else round(age, 3),
                "stale": stale,
                "last_error": error,
                "usable": ks is not None
                and not (stale and age is not None and age > st.settings.jwks_stale_window),
            }
        return out

    def discovery(self, name: str) -> dict[str, Any]:
        """The discovery document of issuer ``name``, for the login doors (cached once fetched).

        Raises BridgeError: 404 for an unknown name, 503 when the IdP cannot be reached.
        """
        st = next((st for st in self._states if st.settings.name == name), None)
        if st is None:
            raise BridgeError("invalid_request", f"no issuer is named {_clip(name)}", 404)
        doc = st.discovery_doc
        if doc is None:
            with st.fetch_lock:
                doc = st.discovery_doc
                failed = st.discovery_failed_at
                now = self._clock()
                if doc is None and (failed is None or not 0 <= now - failed < NO_KEYS_RETRY):
                    try:
                        doc = self._discover(st)
                    except _FetchError as exc:
                        st.discovery_failed_at = now
                        st.discovery_error = str(exc)
                if doc is None:
                    raise _unavailable(
                        f"discovery document of issuer {name!r} could not be fetched: "
                        f"{st.discovery_error}",
                        "discovery_unavailable",
                    )
        return dict(doc)

    def close(self) -> None:
        """Close the HTTP client if this verifier created it."""
        for st in self._states:
            if st.own_http:
                st.http.close()

    # ------------------------------------------------------------ verification steps

    def _recheck(self, cached: VerifiedToken, expected_use: str | None) -> VerifiedToken:
        """A cache hit skips the signature, never the clock."""
        now = self._clock()
        if now > cached.exp + cached.issuer.leeway:
            self._cache.drop(cached.token_hash)
            raise invalid_grant(
                f"token expired {int(now - cached.exp)} s ago; get a new token from issuer "
                f"{cached.issuer.name!r}",
                "expired",
            )
        self._check_use(cached, expected_use)
        return cached

    @staticmethod
    def _check_use(verified: VerifiedToken, expected_use: str | None) -> None:
        s = verified.issuer
        if verified.token_use not in s.token_use:
            raise _wrong_use(
                f"got {_clip(verified.token_use)} token; issuer {s.name!r} accepts "
                f"{' or '.join(s.token_use)} tokens (token_use)"
            )
        if expected_use is not None and verified.token_use != expected_use:
            raise _wrong_use(f"expected an {expected_use} token, got {_clip(verified.token_use)}")

    def _verify_jwt(
        self, token: str, token_hash: str, header: dict[str, Any], payload: dict[str, Any]
    ) -> VerifiedToken:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGS:
            raise invalid_grant(
                f"token alg {_clip(alg)} is not allowed; upstream tokens must be signed with "
                f"one of {', '.join(ALLOWED_ALGS)}",
                "alg_not_allowed",
            )
        if "crit" in header or "b64" in header:
            raise _malformed("critical header extensions (crit/b64) are not supported")
        iss = payload.get("iss")
        if not isinstance(iss, str):
            raise invalid_grant("token has no iss claim", "unknown_issuer")
        candidates = [st for st in self._states if st.matches(iss, payload)]
        if not candidates:
            raise invalid_grant(
                f"token issuer iss={_clip(iss)} is not a configured issuer", "unknown_issuer"
            )
        first: BridgeError | None = None
        for st in candidates:
            try:
                return self._verify_with(st, token, token_hash, alg, header, payload)
            except BridgeError as exc:
                first = first or exc
        assert first is not None
        raise first

    def _verify_with(
        self,
        st: _IssuerState,
        token: str,
        token_hash: str,
        alg: str,
        header: dict[str, Any],
        payload: dict[str, Any],
    ) -> VerifiedToken:
        s = st.settings
        if s.kind == "entra":
            _refuse_graph_token(s, header, payload)
        key = self._signing_key(st, header, alg)
        try:
            _JWS.decode_complete(
                token, key=key, algorithms=[alg], options={"enforce_minimum_key_length": True}
            )
        except jwt.InvalidSignatureError:
            raise invalid_grant(
                f"token signature does not verify with key {_clip(header.get('kid'))} of issuer "
                f"{s.name!r}; the token was altered or not issued by that issuer",
                "bad_signature",
            ) from None
        except jwt.InvalidKeyError as exc:
            raise invalid_grant(
                f"signing key {_clip(header.get('kid'))} of issuer {s.name!r} cannot be used: "
                f"{str(exc)[:CLAIM_CLIP]}",
                "bad_key",
            ) from None
        except jwt.PyJWTError as exc:
            raise _malformed(str(exc)[:CLAIM_CLIP]) from None
        except (ValueError, TypeError):  # a signature of the wrong shape for the key
            raise invalid_grant(
                f"token signature is not a valid {alg} signature", "bad_signature"
            ) from None
        claims = dict(payload)
        exp = _time_checks(s, claims, self._clock())
        if s.kind == "entra" and not _str(claims.get("tid")):
            raise invalid_grant("Entra token has no tid claim", "missing_claim")
        profile = _PROFILES[s.kind](s, claims, header)
        return _build(s, claims, dict(header), profile, exp, token_hash)

    def _signing_key(self, st: _IssuerState, header: dict[str, Any], alg: str) -> jwt.PyJWK:
        """The JWKS key for the header's kid and alg; refetches once per interval if unknown."""
        s = st.settings
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _malformed("the kid header is not a string")
        keyset = self._keys(st)
        found = self._find(keyset, kid)
        if not found:
            self._fetch(st, wait=True, min_gap=s.jwks_refetch_interval)
            keyset = self._keys(st)
            found = self._find(keyset, kid)
        if not found:
            age = int(self._clock() - keyset.fetched_at)
            why = f"; last refresh failed: {st.last_error}" if st.last_error else ""
            what = f"signing key kid={_clip(kid)}" if kid else "a key for a token without kid"
            raise invalid_grant(
                f"{what} is not in the JWKS of issuer {s.name!r} (fetched {age} s ago{why}); "
                f"if the issuer just rotated its keys, retry in {int(s.jwks_refetch_interval)} s",
                "unknown_kid",
            )
        fitting = [k for k in found if k.fits(alg)]
        if len(fitting) != 1:
            if not fitting:
                algs = sorted({k.alg or k.kty for k in found})
                raise invalid_grant(
                    f"token alg {alg} does not fit key {_clip(kid)} of issuer {s.name!r} "
                    f"({', '.join(algs)})",
                    "alg_mismatch",
                )
            raise invalid_grant(
                f"token has no kid and issuer {s.name!r} publishes several {alg} keys",
                "unknown_kid",
            )
        try:
            return fitting[0].for_alg(alg)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise invalid_grant(
                f"signing key {_clip(kid)} of issuer {s.name!r} cannot be used: "
                f"{str(exc)[:CLAIM_CLIP]}",
                "bad_key",
            ) from None

    @staticmethod
    def _find(keyset: _KeySet, kid: str | None) -> list[_Key]:
        if kid is not None:
            return keyset.with_kid(kid)
        return list(keyset.keys)

    # ------------------------------------------------------------ JWKS fetching

    def _keys(self, st: _IssuerState) -> _KeySet:
        """Usable keys of ``st``, refreshed when due; refuses past the stale window."""
        s = st.settings
        keyset = st.keyset
        now = self._clock()
        if keyset is None:
            self._fetch(st, wait=True, min_gap=min(s.jwks_refetch_interval, NO_KEYS_RETRY))
        elif now - keyset.fetched_at >= st.ttl:
            # Threads with keys still inside the stale window do not wait for a running fetch.
            past_window = now - keyset.fetched_at > s.jwks_stale_window
            self._fetch(st, wait=past_window, min_gap=s.jwks_refetch_interval)
        keyset = st.keyset
        if keyset is None:
            raise _unavailable(
                f"JWKS of issuer {s.name!r} could not be fetched: {st.last_error}",
                "jwks_unavailable",
            )
        age = self._clock() - keyset.fetched_at
        if st.last_error is not None and age > s.jwks_stale_window:
            raise _unavailable(
                f"JWKS of issuer {s.name!r} could not be refreshed for {int(age)} s "
                f"(stale window {int(s.jwks_stale_window)} s): {st.last_error}",
                "jwks_unavailable",
            )
        return keyset

    def _fetch(self, st: _IssuerState, *, wait: bool, min_gap: float) -> None:
        """One fetch attempt unless one ran less than ``min_gap`` s ago; never two at once."""
        if not st.fetch_lock.acquire(blocking=wait):
            return
        try:
            now = self._clock()
            if st.last_attempt is not None and 0 <= now - st.last_attempt < min_gap:
                return
            st.last_attempt = now
            try:
                keyset = self._download(st, now)
            except _FetchError as exc:
                st.last_error = str(exc)
                ok = False
                log.warning("issuer %s: %s", st.settings.name, st.last_error)
            else:
                st.keyset = keyset
                st.last_error = None
                ok = True
        finally:
            st.fetch_lock.release()
        if self._on_fetch is not None:
            try:
                self._on_fetch(st.settings.name, ok)
            except Exception:
                log.exception("on_fetch callback failed")

    def _download(self, st: _IssuerState, now: float) -> _KeySet:
        s = st.settings
        uri = st.jwks_uri
        if not uri:
            # A document fetched for a login door is reused, unless the JWKS it named failed.
            doc = st.discovery_doc
            if doc is None or st.rediscover:
                doc = self._discover(st)
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str) or not re.match(r"^https?://", uri):
                raise _FetchError("discovery document has no http(s) jwks_uri")
            if insecure_url(uri) and not s.allow_insecure_http:
                raise _FetchError(
                    f"discovery document names a plain http jwks_uri {_clip(uri)}; refused "
                    "(https, or allow_insecure_http = true for this issuer)"
                )
        try:
            keyset = _parse_jwks(self._get_json(st, uri, "JWKS"), now)
        except _FetchError:
            if not s.jwks_uri:
                st.jwks_uri = None  # discover again next time: the IdP may have moved it
                st.rediscover = True
            raise
        st.jwks_uri = uri
        st.rediscover = False
        return keyset

    def _discover(self, st: _IssuerState) -> dict[str, Any]:
        """Fetch and remember the discovery document (caller holds ``st.fetch_lock``)."""
        s = st.settings
        doc = self._get_json(st, st.discovery_url, "discovery document")
        # An explicit discovery_url may be an internal address whose document names another
        # host; a derived one must name exactly the configured issuer (OIDC Discovery 4.3).
        if not s.discovery_url and s.kind != "entra" and doc.get("issuer") != s.issuer:
            raise _FetchError(
                f"discovery document names issuer {_clip(doc.get('issuer'))}, "
                f"expected {_clip(s.issuer)}"
            )
        st.discovery_doc = doc
        return doc

    def _get_json(self, st: _IssuerState, url: str, what: str) -> dict[str, Any]:
        """GET a JSON object of at most MAX_DOCUMENT_BYTES within ``http_timeout`` s in total."""
        timeout = st.settings.http_timeout
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        try:
            with st.http.stream("GET", url, timeout=timeout) as resp:
                if resp.status_code != 200:
                    raise _FetchError(f"{what} {url}: HTTP {resp.status_code}")
                length = resp.headers.get("content-length", "")
                if length.isdigit() and int(length) > MAX_DOCUMENT_BYTES:
                    raise _FetchError(f"{what} {url}: larger than {MAX_DOCUMENT_BYTES} bytes")
                size = 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOCUMENT_BYTES:
                        raise _FetchError(f"{what} {url}: larger than {MAX_DOCUMENT_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise _FetchError(f"{what} {url}: not received within {timeout} s")
                    chunks.append(chunk)
        except _FetchError:
            raise
        except Exception as exc:  # httpx errors, invalid URLs, decoding: all mean "no document"
            detail = printable(exc) or "no detail"
            raise _FetchError(f"{what} {url}: {type(exc).__name__}: {detail}") from None
        try:
            doc = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
            raise _FetchError(f"{what} {url}: not JSON") from None
        if not isinstance(doc, dict):
            raise _FetchError(f"{what} {url}: not a JSON object")
        return doc

    # ------------------------------------------------------------ Keycloak introspection

    def _introspecting(self) -> bool:
        return any(st.settings.introspection for st in self._states)

    def _introspector(self, st: _IssuerState) -> Any:
        if st.introspector is None:
            from keycloak import KeycloakOpenID  # imported late: only introspection needs it

            s = st.settings
            assert s.introspection is not None
            m = _KEYCLOAK_ISSUER_RE.match(s.issuer)
            assert m is not None
            st.introspector = KeycloakOpenID(
                # The trailing slash keeps a base path (".../auth/") in python-keycloak's urljoin.
                server_url=m["base"] + "/",
                realm_name=m["realm"],
                client_id=s.introspection.client_id,
                client_secret_key=s.introspection.client_secret,
                timeout=s.http_timeout,
                verify=requests_verify(s.ca_file or None),
            )
        return st.introspector

    def _introspect(self, token: str, token_hash: str) -> tuple[VerifiedToken, float]:
        """An opaque token: ask each Keycloak issuer with introspection whether it is active."""
        states = [st for st in self._states if st.settings.introspection]
        failures: list[str] = []
        for st in states:
            s = st.settings
            try:
                result = self._introspector(st).introspect(token)
            except Exception as exc:
                failures.append(f"{s.name}: {type(exc).__name__}: {str(exc)[:CLAIM_CLIP]}")
                log.warning("issuer %s: introspection failed: %s", s.name, failures[-1])
                continue
            if not isinstance(result, dict) or result.get("active") is not True:
                continue
            claims = dict(result)
            iss = claims.get("iss")
            if iss is not None and iss != s.issuer:
                raise invalid_grant(
                    f"introspected token names iss={_clip(iss)}, not {_clip(s.issuer)}",
                    "unknown_issuer",
                )
            now = self._clock()
            exp = _time_checks(s, claims, now)
            profile = _keycloak_profile(s, claims, {}, introspected=True)
            verified = _build(s, claims, {}, profile, exp, token_hash)
            return verified, min(exp + s.leeway, now + INTROSPECTION_CACHE_SECONDS)
        if failures:
            raise _unavailable(
                "token is not a JWT and introspection failed: " + "; ".join(failures),
                "introspection_unavailable",
            )
        names = ", ".join(repr(st.settings.name) for st in states)
        raise invalid_grant(
            f"token is not active at issuer {names} (introspection); sign in again",
            "inactive",
        )


def _refuse_graph_token(s: IssuerSettings, header: dict[str, Any], payload: dict[str, Any]) -> None:
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


def _build(
    s: IssuerSettings,
    claims: dict[str, Any],
    header: dict[str, Any],
    profile: _Profile,
    exp: int,
    token_hash: str,
) -> VerifiedToken:
    sub = _str(claims.get("sub"))
    if sub is None:
        hint = " (add the 'basic' client scope in Keycloak)" if s.kind == "keycloak" else ""
        raise invalid_grant(f"token of issuer {s.name!r} has no sub claim{hint}", "missing_claim")
    return VerifiedToken(
        issuer=s,
        claims=claims,
        header=header,
        subject=sub,
        client_id=profile.client_id,
        token_use=profile.token_use,
        groups=profile.groups,
        roles=profile.roles,
        is_service=profile.is_service,
        exp=exp,
        token_hash=token_hash,
    )
