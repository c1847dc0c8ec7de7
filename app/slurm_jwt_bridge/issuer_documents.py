"""The discovery document and JWKS of one issuer: fetched, refreshed, and kept through outages.

Availability rules: a JWKS is fetched lazily, refreshed every few minutes, refetched on an
unknown ``kid`` at most once per ``jwks_refetch_interval``, and kept in use while the IdP is
unreachable for up to ``jwks_stale_window`` so an IdP outage does not stop the cluster. Only one
fetch per issuer runs at a time; a thread that holds usable keys never waits for it.

Transport rules: https trusting the system store or the issuer's ``ca_file`` (outbound.py); plain
http only to this machine or with ``allow_insecure_http``; no redirects; at most
MAX_DOCUMENT_BYTES within ``http_timeout`` seconds.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from .outbound import http_client
from .settings import TENANT_PLACEHOLDER, IssuerSettings
from .token_claims import clip, unavailable
from .untrusted import insecure_url, printable

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1024 * 1024
# A fetched JWKS is refreshed after this long (never sooner than the refetch interval, never later
# than half the stale window), so a key removed upstream stops being trusted within minutes.
JWKS_TTL = 300.0
# While no keys were ever fetched, a failed first fetch is retried this soon (an IdP that starts
# together with the bridge should not lock it out for a whole refetch interval).
NO_KEYS_RETRY = 5.0

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


def discovery_url(s: IssuerSettings) -> str:
    """Where issuer ``s`` publishes its discovery document, for the verifier and the login
    doors alike: Entra's ``{tenantid}`` issuers publish theirs under ``organizations``."""
    if s.discovery_url:
        return s.discovery_url
    base = s.issuer.replace(TENANT_PLACEHOLDER, "organizations").rstrip("/")
    return base + "/.well-known/openid-configuration"


class FetchError(Exception):
    """Discovery or JWKS could not be fetched; the message goes to health() and logs."""


@dataclass
class Key:
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
class Document:
    """A document fetched from an issuer: its discovery document, or its JWKS with the usable
    signing keys read from it."""

    url: str
    body: dict[str, Any]
    fetched_at: float
    keys: tuple[Key, ...] = ()

    def with_kid(self, kid: str | None) -> list[Key]:
        """The keys for a token's ``kid``; every key for a token without one."""
        if kid is None:
            return list(self.keys)
        return [k for k in self.keys if k.kid == kid]


def signing_keys(body: dict[str, Any]) -> tuple[Key, ...]:
    """The asymmetric signing keys of a JWKS; a JWKS without any is an error, not an empty set.

    A key without ``alg`` gets the one PyJWK infers from its type and curve (RS256, ES256/384/
    512, EdDSA); a token may still use another algorithm the key fits (PS256 with an RSA key).
    """
    raw = body.get("keys")
    if not isinstance(raw, list):
        raise FetchError("JWKS has no 'keys' list")
    keys: list[Key] = []
    for jwk in raw:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
            continue
        kty, kid, alg, crv = jwk.get("kty"), jwk.get("kid"), jwk.get("alg"), jwk.get("crv")
        if kty not in ("RSA", "EC", "OKP") or (kid is not None and not isinstance(kid, str)):
            continue
        if alg is not None and alg not in ALLOWED_ALGS:
            continue  # e.g. RSA-OAEP, HS256 or none: never a signing key we accept
        try:
            parsed = jwt.PyJWK(jwk)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        probe = parsed.algorithm_name
        if probe not in ALLOWED_ALGS:
            continue
        key = Key(kid, kty, crv if isinstance(crv, str) else None, alg, dict(jwk))
        if not key.fits(probe):
            continue
        key.parsed[probe] = parsed
        keys.append(key)
    if not keys:
        raise FetchError("JWKS holds no usable asymmetric signing key")
    return tuple(keys)


class IssuerDocuments:
    """One issuer's discovery document and JWKS, with the fetch, retry and stale-window state
    and the lock that allows one fetch at a time; thread-safe."""

    def __init__(
        self,
        settings: IssuerSettings,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        on_fetch: Callable[[str, bool], None] | None = None,
    ) -> None:
        s = settings
        for url in (s.issuer, s.discovery_url, s.jwks_uri):
            if insecure_url(url) and not s.allow_insecure_http:
                raise ValueError(
                    f"issuer {s.name!r}: plain http to another machine ({clip(url)}) "
                    "needs allow_insecure_http"
                )
        self.settings = s
        # Each issuer's own client: its ca_file, or the system store, decides whom it trusts.
        self.http = http or http_client(s.ca_file or None, headers={"Accept": "application/json"})
        self._clock = clock
        self._on_fetch = on_fetch
        self._lock = threading.Lock()
        self.jwks: Document | None = None
        self.discovered: Document | None = None
        self.last_error: str | None = None
        self._last_attempt: float | None = None
        self._jwks_uri: str | None = s.jwks_uri or None
        self._rediscover = False
        self._discovery_failed_at: float | None = None
        self._discovery_error: str | None = None
        self._refresher: threading.Thread | None = None
        self._refresher_lock = threading.Lock()
        self.ttl = max(s.jwks_refetch_interval, min(JWKS_TTL, s.jwks_stale_window / 2))

    # ------------------------------------------------------------ for the verifier

    def keys(self) -> Document:
        """The usable JWKS, refreshed when due; refuses (503) past the stale window."""
        s = self.settings
        jwks = self.jwks
        now = self._clock()
        if jwks is None:
            self._fetch(wait=True, min_gap=min(s.jwks_refetch_interval, NO_KEYS_RETRY))
        elif now - jwks.fetched_at >= self.ttl:
            # Threads with keys still inside the stale window do not wait for a running fetch.
            past_window = now - jwks.fetched_at > s.jwks_stale_window
            self._fetch(wait=past_window, min_gap=s.jwks_refetch_interval)
        jwks = self.jwks
        if jwks is None:
            raise unavailable(
                f"JWKS of issuer {s.name!r} could not be fetched: {self.last_error}",
                "jwks_unavailable",
            )
        age = self._clock() - jwks.fetched_at
        if self.last_error is not None and age > s.jwks_stale_window:
            raise unavailable(
                f"JWKS of issuer {s.name!r} could not be refreshed for {int(age)} s "
                f"(stale window {int(s.jwks_stale_window)} s): {self.last_error}",
                "jwks_unavailable",
            )
        return jwks

    def refetch(self) -> None:
        """A token names a key we do not hold: fetch again, at most once per refetch interval."""
        self._fetch(wait=True, min_gap=self.settings.jwks_refetch_interval)

    def refresh_if_due(self, background: bool = False) -> None:
        """Fetch when the keys are missing or older than their refresh time, at most once per
        ``jwks_refetch_interval``; with ``background`` in a thread of its own (at most one)."""
        jwks = self.jwks
        if jwks is not None and self._clock() - jwks.fetched_at < self.ttl:
            return
        if not background:
            self.refetch()
            return
        with self._refresher_lock:
            if self._refresher is not None and self._refresher.is_alive():
                return
            self._refresher = threading.Thread(target=self.refetch, daemon=True)
            self._refresher.start()

    def health(self) -> dict[str, Any]:
        """Keys present, their age in s, whether stale (refresh failed), last error, and whether
        tokens would be accepted (``usable``)."""
        jwks, error = self.jwks, self.last_error
        age = None if jwks is None else max(0.0, self._clock() - jwks.fetched_at)
        stale = jwks is not None and error is not None
        return {
            "jwks_present": jwks is not None,
            "age": None if age is None else round(age, 3),
            "stale": stale,
            "last_error": error,
            "usable": jwks is not None
            and not (stale and age is not None and age > self.settings.jwks_stale_window),
        }

    # ------------------------------------------------------------ for the login doors

    def discovery(self) -> dict[str, Any]:
        """The discovery document (cached once fetched; a failure is retried after
        NO_KEYS_RETRY s). Raises BridgeError 503 when the IdP cannot be reached."""
        doc = self.discovered
        if doc is None:
            with self._lock:
                doc = self.discovered
                failed = self._discovery_failed_at
                now = self._clock()
                if doc is None and (failed is None or not 0 <= now - failed < NO_KEYS_RETRY):
                    try:
                        doc = self._discover()
                    except FetchError as exc:
                        self._discovery_failed_at = now
                        self._discovery_error = str(exc)
                if doc is None:
                    raise unavailable(
                        f"discovery document of issuer {self.settings.name!r} could not be "
                        f"fetched: {self._discovery_error}",
                        "discovery_unavailable",
                    )
        return dict(doc.body)

    # ------------------------------------------------------------ fetching

    def _fetch(self, *, wait: bool, min_gap: float) -> None:
        """One fetch attempt unless one ran less than ``min_gap`` s ago; never two at once."""
        if not self._lock.acquire(blocking=wait):
            return
        try:
            now = self._clock()
            if self._last_attempt is not None and 0 <= now - self._last_attempt < min_gap:
                return
            self._last_attempt = now
            try:
                jwks = self._download(now)
            except FetchError as exc:
                self.last_error = str(exc)
                ok = False
                log.warning("issuer %s: %s", self.settings.name, self.last_error)
            else:
                self.jwks = jwks
                self.last_error = None
                ok = True
        finally:
            self._lock.release()
        if self._on_fetch is not None:
            try:
                self._on_fetch(self.settings.name, ok)
            except Exception:
                log.exception("on_fetch callback failed")

    def _download(self, now: float) -> Document:
        s = self.settings
        uri = self._jwks_uri
        if not uri:
            # A document fetched for a login door is reused, unless the JWKS it named failed.
            doc = self.discovered
            if doc is None or self._rediscover:
                doc = self._discover()
            uri = doc.body.get("jwks_uri")
            if not isinstance(uri, str) or not re.match(r"^https?://", uri):
                raise FetchError("discovery document has no http(s) jwks_uri")
            # An https issuer's keys come over https: a plain-http jwks_uri, even on this
            # machine, is whoever holds that port.
            downgrade = uri.lower().startswith("http://") and s.issuer.lower().startswith(
                "https://"
            )
            if (insecure_url(uri) or downgrade) and not s.allow_insecure_http:
                raise FetchError(
                    f"discovery document names a plain http jwks_uri {clip(uri)}; refused "
                    "(https, or allow_insecure_http = true for this issuer)"
                )
        try:
            body = self._get_json(uri, "JWKS")
            jwks = Document(uri, body, now, signing_keys(body))
        except FetchError:
            if not s.jwks_uri:
                self._jwks_uri = None  # discover again next time: the IdP may have moved it
                self._rediscover = True
            raise
        self._jwks_uri = uri
        self._rediscover = False
        return jwks

    def _discover(self) -> Document:
        """Fetch and remember the discovery document (the caller holds the lock)."""
        s = self.settings
        url = discovery_url(s)
        body = self._get_json(url, "discovery document")
        # An explicit discovery_url may be an internal address whose document names another
        # host; a derived one must name exactly the configured issuer (OIDC Discovery 4.3).
        if not s.discovery_url and s.kind != "entra" and body.get("issuer") != s.issuer:
            raise FetchError(
                f"discovery document names issuer {clip(body.get('issuer'))}, "
                f"expected {clip(s.issuer)}"
            )
        self.discovered = Document(url, body, self._clock())
        return self.discovered

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        """GET a JSON object of at most MAX_DOCUMENT_BYTES within ``http_timeout`` s in total."""
        timeout = self.settings.http_timeout
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        try:
            with self.http.stream("GET", url, timeout=timeout) as resp:
                if resp.status_code != 200:
                    raise FetchError(f"{what} {url}: HTTP {resp.status_code}")
                length = resp.headers.get("content-length", "")
                if length.isdigit() and int(length) > MAX_DOCUMENT_BYTES:
                    raise FetchError(f"{what} {url}: larger than {MAX_DOCUMENT_BYTES} bytes")
                size = 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOCUMENT_BYTES:
                        raise FetchError(f"{what} {url}: larger than {MAX_DOCUMENT_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError(f"{what} {url}: not received within {timeout} s")
                    chunks.append(chunk)
        except FetchError:
            raise
        except Exception as exc:  # httpx errors, invalid URLs, decoding: all mean "no document"
            detail = printable(exc) or "no detail"
            raise FetchError(f"{what} {url}: {type(exc).__name__}: {detail}") from None
        try:
            doc = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
            raise FetchError(f"{what} {url}: not JSON") from None
        if not isinstance(doc, dict):
            raise FetchError(f"{what} {url}: not a JSON object")
        return doc
