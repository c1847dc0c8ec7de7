"""An upstream token's claims: the verified result, the clock checks, and the readers the
provider profiles share.

Every reason built here goes back to the client, so claim values are clipped and quoted
(``clip``) and a token is never echoed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BridgeError, invalid_grant
from .settings import IssuerSettings

CLAIM_CLIP = 100


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


@dataclass(frozen=True)
class Profile:
    """What a provider profile read from a token whose audience it accepted."""

    client_id: str | None
    token_use: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    is_service: bool


# ---------------------------------------------------------------- reasons


def clip(value: Any) -> str:
    """A claim value fit for a reason: at most CLAIM_CLIP characters, quoted, one line."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    more = "..." if len(text) > CLAIM_CLIP else ""
    return repr(text[:CLAIM_CLIP]) + more


def clip_list(values: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(clip(v) for v in values[:limit])
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def malformed(reason: str) -> BridgeError:
    return invalid_grant(f"malformed token: {reason}", "malformed")


def wrong_audience(reason: str) -> BridgeError:
    return invalid_grant(reason, "wrong_audience")


def wrong_use(reason: str) -> BridgeError:
    return invalid_grant(reason, "wrong_token_use")


def unavailable(reason: str, metric: str) -> BridgeError:
    # The token may be fine: the client should retry later, not throw the token away.
    return BridgeError("temporarily_unavailable", reason, 503, metric=metric)


# ---------------------------------------------------------------- readers


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def strings(value: Any) -> list[str]:
    """A claim that should be a list of strings; anything else counts as empty."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def dedupe(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if aud is None:
        return []
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    raise malformed("the aud claim must be a string or a list of strings")


# ---------------------------------------------------------------- checks


def time_checks(s: IssuerSettings, claims: dict[str, Any], now: float) -> int:
    """exp (required), nbf and iat against the clock with the issuer's leeway; returns exp."""
    exp = claims.get("exp")
    if exp is None:
        raise invalid_grant(
            f"token has no exp claim; issuer {s.name!r} must issue expiring tokens",
            "missing_claim",
        )
    if not is_number(exp):
        raise malformed("the exp claim is not a number")
    if now > exp + s.leeway:
        raise invalid_grant(
            f"token expired {int(now - exp)} s ago; get a new token from issuer {s.name!r}",
            "expired",
        )
    nbf = claims.get("nbf")
    if nbf is not None:
        if not is_number(nbf):
            raise malformed("the nbf claim is not a number")
        if nbf > now + s.leeway:
            raise invalid_grant(
                f"token is not valid for another {int(nbf - now)} s (nbf); "
                "check the clocks of the identity provider and of this host",
                "not_yet_valid",
            )
    iat = claims.get("iat")
    if iat is not None:
        if not is_number(iat):
            raise malformed("the iat claim is not a number")
        if iat > now + s.leeway:
            raise invalid_grant(
                f"token was issued {int(iat - now)} s in the future (iat); "
                "check the clocks of the identity provider and of this host",
                "not_yet_valid",
            )
    return int(exp)


def build(
    s: IssuerSettings,
    claims: dict[str, Any],
    header: dict[str, Any],
    profile: Profile,
    exp: int,
    token_hash: str,
) -> VerifiedToken:
    sub = string(claims.get("sub"))
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
