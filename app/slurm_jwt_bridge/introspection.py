"""Opaque tokens: ask a Keycloak issuer whether the token is active (RFC 7662 introspection).

python-keycloak makes the call (the bridge authenticates as ``[[issuers]] introspection``'s
client), over https trusting the issuer's ``ca_file`` or the system store, following no
redirect (a 3xx is a failure: the token is refused as when the issuer is unreachable). An
active answer goes through the same clock checks and Keycloak profile as a signed token; a yes
is remembered only INTROSPECTION_CACHE_SECONDS, so a revoked token stops working within that
while.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .errors import invalid_grant
from .names import KEYCLOAK_ISSUER_RE
from .outbound import lock_down, requests_verify
from .provider_profiles import keycloak_profile
from .settings import IssuerSettings
from .token_claims import CLAIM_CLIP, VerifiedToken, build, clip, time_checks, unavailable

log = logging.getLogger(__name__)

# Introspection answers "is this token still active": remember a yes only briefly.
INTROSPECTION_CACHE_SECONDS = 60.0


class Introspector:
    """Introspection at one Keycloak issuer; the python-keycloak client is made on first use."""

    def __init__(self, settings: IssuerSettings) -> None:
        if settings.kind != "keycloak" or not KEYCLOAK_ISSUER_RE.match(settings.issuer):
            raise ValueError(
                f"issuer {settings.name!r}: introspection needs kind keycloak and an issuer "
                "<base>/realms/<realm>"
            )
        self.settings = settings
        self._client: Any = None

    def ask(self, token: str) -> Any:
        """Keycloak's answer for ``token``; raises whatever python-keycloak raises."""
        if self._client is None:
            from keycloak import KeycloakOpenID  # imported late: only introspection needs it

            s = self.settings
            assert s.introspection is not None
            m = KEYCLOAK_ISSUER_RE.match(s.issuer)
            assert m is not None
            client = KeycloakOpenID(
                # The trailing slash keeps a base path (".../auth/") in python-keycloak's urljoin.
                server_url=m["base"] + "/",
                realm_name=m["realm"],
                client_id=s.introspection.client_id,
                client_secret_key=s.introspection.client_secret,
                # python-keycloak annotates int but hands it to requests, which takes seconds
                # as a float too: http_timeout keeps its fraction.
                timeout=s.http_timeout,  # type: ignore[arg-type]
                verify=requests_verify(s.ca_file or None),
            )
            # No redirect followed (the secret and the token would be sent again, wherever it
            # points), nothing taken from the environment.
            lock_down(client.connection._s, s.ca_file or None)
            self._client = client
        return self._client.introspect(token)


def introspect(
    introspectors: Sequence[Introspector],
    token: str,
    token_hash: str,
    clock: Callable[[], float],
) -> tuple[VerifiedToken, float]:
    """An opaque token: ask each issuer in turn; the verified token and until when to cache it."""
    failures: list[str] = []
    for intro in introspectors:
        s = intro.settings
        try:
            result = intro.ask(token)
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
                f"introspected token names iss={clip(iss)}, not {clip(s.issuer)}",
                "unknown_issuer",
            )
        now = clock()
        exp = time_checks(s, claims, now)
        profile = keycloak_profile(s, claims, {}, introspected=True)
        verified = build(s, claims, {}, profile, exp, token_hash)
        return verified, min(exp + s.leeway, now + INTROSPECTION_CACHE_SECONDS)
    if failures:
        raise unavailable(
            "token is not a JWT and introspection failed: " + "; ".join(failures),
            "introspection_unavailable",
        )
    names = ", ".join(repr(intro.settings.name) for intro in introspectors)
    raise invalid_grant(
        f"token is not active at issuer {names} (introspection); sign in again",
        "inactive",
    )
