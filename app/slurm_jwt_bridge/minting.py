"""The Slurm claim set and signing, byte-compatible with ``scontrol token``.

Header ``{"alg":"RS256","kid":"...","typ":"JWT"}`` (HS256: no kid) and payload
``{"exp":..,"iat":..,"sun":"alice"}`` in that order, integers for times; with identity claims
(Slurm 26.05 ``use_jwt_client_ids``) ``uid``, ``gid`` and ``id`` follow ``sun``; an optional
``jti`` comes last, for audit correlation (Slurm ignores it).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

from .accounts import PosixIdentity
from .errors import BridgeError
from .keys import KeyRing
from .names import HS256, RS256


@dataclass(frozen=True)
class SlurmToken:
    token: str
    user: str
    alg: str
    kid: str | None
    jti: str | None
    iat: int
    exp: int

    @property
    def lifetime(self) -> int:
        return self.exp - self.iat


def slurm_claims(
    user: str, iat: int, exp: int, jti: str | None, identity: PosixIdentity | None = None
) -> dict[str, object]:
    """The claims slurmctld reads, in scontrol's order: exp, iat, sun (then uid, gid, id; jti)."""
    claims: dict[str, object] = {"exp": exp, "iat": iat, "sun": user}
    if identity is not None:
        if identity.name != user:
            raise ValueError(f"identity for {identity.name!r} in a token for {user!r}")
        claims.update(identity.slurm_claims())
    if jti:
        claims["jti"] = jti
    return claims


def mint_slurm_token(
    ring: KeyRing,
    user: str,
    lifetime: int,
    alg: str = RS256,
    *,
    include_jti: bool = True,
    not_after: int | None = None,
    now: int | None = None,
    identity: PosixIdentity | None = None,
) -> SlurmToken:
    """Sign a Slurm token for ``user``; ``not_after`` caps exp (e.g. the upstream token's exp).

    The caller has already applied the account and lifetime policy.
    """
    iat = int(time.time()) if now is None else now
    exp = iat + lifetime
    if not_after is not None:
        exp = min(exp, int(not_after))
    jti = secrets.token_urlsafe(16) if include_jti else None
    claims = slurm_claims(user, iat, exp, jti, identity)
    if alg == RS256:
        key = ring.active
        if key is None:
            raise BridgeError("server_error", "no active RS256 key in the key ring", 500)
        token = jwt.encode(claims, key.private_key, algorithm=RS256, headers={"kid": key.kid})
        return SlurmToken(token, user, alg, key.kid, jti, iat, exp)
    if alg == HS256:
        if ring.hs256 is None:
            raise BridgeError(
                "invalid_request", f"HS256 is not available: no {ring.directory}/jwt_hs256.key", 400
            )
        token = jwt.encode(claims, ring.hs256, algorithm=HS256)
        return SlurmToken(token, user, alg, None, jti, iat, exp)
    raise BridgeError("invalid_request", f"alg must be RS256 or HS256, got {alg[:16]!r}", 400)
