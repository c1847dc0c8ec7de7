"""Verify tokens from the upstream identity providers: signature, issuer, key selection, cache.

Why one verifier: every door trusts an upstream token only after ``UpstreamVerifier.verify``, so
the rules that keep a forged, expired or misdirected token out (asymmetric algorithms only, exact
issuer, audience per provider, clock checks with leeway) run in one place. The parts live apart:

- provider_profiles.py: what a token of each issuer kind means (audience, client, service);
- issuer_documents.py: each issuer's discovery document and JWKS (fetch, refresh, outages);
- introspection.py: opaque Keycloak tokens;
- token_claims.py: the result type and the clock checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import jwt

from .errors import BridgeError, invalid_grant, invalid_request
from .introspection import Introspector, introspect
from .issuer_documents import ALLOWED_ALGS, IssuerDocuments, Key
from .provider_profiles import PROFILES, issuer_matches, refuse_graph_token
from .settings import IssuerSettings
from .token_claims import (
    CLAIM_CLIP,
    VerifiedToken,
    build,
    clip,
    malformed,
    string,
    time_checks,
    wrong_use,
)

__all__ = ["MAX_TOKEN_BYTES", "UpstreamVerifier", "VerifiedToken"]

MAX_TOKEN_BYTES = 16 * 1024

_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_JWS = jwt.PyJWS(algorithms=list(ALLOWED_ALGS))


# ---------------------------------------------------------------- parsing


def _b64decode(segment: str, what: str) -> bytes:
    if not _B64URL_RE.match(segment) or len(segment) % 4 == 1:
        raise malformed(f"the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise malformed(f"the {what} is not base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        raise malformed(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise malformed(f"the {what} is not a JSON object")
    return value


def _parse_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a compact JWS, unverified; only used to pick issuer and key."""
    parts = token.split(".")
    if len(parts) == 5:
        raise malformed("encrypted tokens (JWE) are not supported; send a signed JWT")
    if len(parts) != 3:
        raise malformed("expected three base64url parts separated by dots")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    payload = _json_object(_b64decode(parts[1], "payload"), "payload")
    _b64decode(parts[2], "signature")
    return header, payload


# ---------------------------------------------------------------- verified-token cache


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
        """``http`` (tests) replaces every issuer's own client; ``on_fetch(issuer, ok)`` is
        called after each JWKS fetch attempt (metrics)."""
        introspectors: list[Introspector] = []
        for s in issuers:
            if s.kind not in PROFILES:
                raise ValueError(f"issuer {s.name!r}: unknown kind {s.kind!r}")
            if s.introspection:
                introspectors.append(Introspector(s))
        self._issuers = [
            IssuerDocuments(s, http=http, clock=clock, on_fetch=on_fetch) for s in issuers
        ]
        self._introspectors = introspectors
        self._clock = clock
        self._cache = _TokenCache(cache_size)

    # ------------------------------------------------------------ public API

    def verify(self, token: str, expected_use: str | None = None) -> VerifiedToken:
        """Verify ``token``; raise BridgeError with a reason a person can act on otherwise.

        ``expected_use`` ("access" or "id") additionally requires that kind of token.
        """
        if not isinstance(token, str) or not token:
            raise malformed("empty token")
        if len(token) > MAX_TOKEN_BYTES:
            raise invalid_request(f"token is larger than {MAX_TOKEN_BYTES} bytes", "too_large")
        raw = token.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_TOKEN_BYTES:
            raise invalid_request(f"token is larger than {MAX_TOKEN_BYTES} bytes", "too_large")
        token_hash = hashlib.sha256(raw).hexdigest()

        cached = self._cache.get(token_hash, self._clock())
        if cached is not None:
            return self._recheck(cached, expected_use)

        if token.count(".") not in (2, 4) and self._introspectors:
            verified, until = introspect(self._introspectors, token, token_hash, self._clock)
        else:
            header, payload = _parse_jwt(token)
            verified = self._verify_jwt(token, token_hash, header, payload)
            until = verified.exp + verified.issuer.leeway
        self._check_use(verified, expected_use)
        self._cache.put(token_hash, verified, until)
        return verified

    def refresh_due(self, background: bool = False) -> None:
        """Refresh every issuer whose keys are missing or older than their refresh time, at
        most once per ``jwks_refetch_interval``: readiness probes call this, so an IdP outage
        shows in health() even when no token arrives. With ``background`` the fetches run in
        threads of their own (at most one per issuer) and this returns at once."""
        for docs in self._issuers:
            docs.refresh_if_due(background)

    def health(self) -> dict[str, dict[str, Any]]:
        """Per issuer: keys present, their age in s, whether stale (refresh failed), last error.

        ``usable`` is False when tokens of that issuer would be refused for lack of keys.
        """
        return {docs.settings.name: docs.health() for docs in self._issuers}

    def discovery(self, name: str) -> dict[str, Any]:
        """The discovery document of issuer ``name``, for the login doors (cached once fetched).

        Raises BridgeError: 404 for an unknown name, 503 when the IdP cannot be reached.
        """
        docs = next((d for d in self._issuers if d.settings.name == name), None)
        if docs is None:
            raise BridgeError("invalid_request", f"no issuer is named {clip(name)}", 404)
        return docs.discovery()

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
            raise wrong_use(
                f"got {clip(verified.token_use)} token; issuer {s.name!r} accepts "
                f"{' or '.join(s.token_use)} tokens (token_use)"
            )
        if expected_use is not None and verified.token_use != expected_use:
            raise wrong_use(f"expected an {expected_use} token, got {clip(verified.token_use)}")

    def _verify_jwt(
        self, token: str, token_hash: str, header: dict[str, Any], payload: dict[str, Any]
    ) -> VerifiedToken:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGS:
            raise invalid_grant(
                f"token alg {clip(alg)} is not allowed; upstream tokens must be signed with "
                f"one of {', '.join(ALLOWED_ALGS)}",
                "alg_not_allowed",
            )
        if "crit" in header or "b64" in header:
            raise malformed("critical header extensions (crit/b64) are not supported")
        iss = payload.get("iss")
        if not isinstance(iss, str):
            raise invalid_grant("token has no iss claim", "unknown_issuer")
        candidates = [d for d in self._issuers if issuer_matches(d.settings, iss, payload)]
        if not candidates:
            raise invalid_grant(
                f"token issuer iss={clip(iss)} is not a configured issuer", "unknown_issuer"
            )
        first: BridgeError | None = None
        for docs in candidates:
            try:
                return self._verify_with(docs, token, token_hash, alg, header, payload)
            except BridgeError as exc:
                first = first or exc
        assert first is not None
        raise first

    def _verify_with(
        self,
        docs: IssuerDocuments,
        token: str,
        token_hash: str,
        alg: str,
        header: dict[str, Any],
        payload: dict[str, Any],
    ) -> VerifiedToken:
        s = docs.settings
        if s.kind == "entra":
            refuse_graph_token(s, header, payload)
        key = self._signing_key(docs, header, alg)
        try:
            _JWS.decode_complete(
                token, key=key, algorithms=[alg], options={"enforce_minimum_key_length": True}
            )
        except jwt.InvalidSignatureError:
            raise invalid_grant(
                f"token signature does not verify with key {clip(header.get('kid'))} of issuer "
                f"{s.name!r}; the token was altered or not issued by that issuer",
                "bad_signature",
            ) from None
        except jwt.InvalidKeyError as exc:
            raise invalid_grant(
                f"signing key {clip(header.get('kid'))} of issuer {s.name!r} cannot be used: "
                f"{str(exc)[:CLAIM_CLIP]}",
                "bad_key",
            ) from None
        except jwt.PyJWTError as exc:
            raise malformed(str(exc)[:CLAIM_CLIP]) from None
        except (ValueError, TypeError):  # a signature of the wrong shape for the key
            raise invalid_grant(
                f"token signature is not a valid {alg} signature", "bad_signature"
            ) from None
        claims = dict(payload)
        exp = time_checks(s, claims, self._clock())
        if s.kind == "entra" and not string(claims.get("tid")):
            raise invalid_grant("Entra token has no tid claim", "missing_claim")
        profile = PROFILES[s.kind](s, claims, header)
        return build(s, claims, dict(header), profile, exp, token_hash)

    def _signing_key(self, docs: IssuerDocuments, header: dict[str, Any], alg: str) -> jwt.PyJWK:
        """The JWKS key for the header's kid and alg; refetches once per interval if unknown."""
        s = docs.settings
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise malformed("the kid header is not a string")
        jwks = docs.keys()
        found = jwks.with_kid(kid)
        if not found:
            docs.refetch()
            jwks = docs.keys()
            found = jwks.with_kid(kid)
        if not found:
            age = int(self._clock() - jwks.fetched_at)
            why = f"; last refresh failed: {docs.last_error}" if docs.last_error else ""
            what = f"signing key kid={clip(kid)}" if kid else "a key for a token without kid"
            raise invalid_grant(
                f"{what} is not in the JWKS of issuer {s.name!r} (fetched {age} s ago{why}); "
                f"if the issuer just rotated its keys, retry in {int(s.jwks_refetch_interval)} s",
                "unknown_kid",
            )
        return self._usable(s, found, kid, alg)

    @staticmethod
    def _usable(s: IssuerSettings, found: list[Key], kid: str | None, alg: str) -> jwt.PyJWK:
        """The one key of ``found`` that ``alg`` fits, as a PyJWK for that alg."""
        fitting = [k for k in found if k.fits(alg)]
        if len(fitting) != 1:
            if not fitting:
                algs = sorted({k.alg or k.kty for k in found})
                raise invalid_grant(
                    f"token alg {alg} does not fit key {clip(kid)} of issuer {s.name!r} "
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
                f"signing key {clip(kid)} of issuer {s.name!r} cannot be used: "
                f"{str(exc)[:CLAIM_CLIP]}",
                "bad_key",
            ) from None
