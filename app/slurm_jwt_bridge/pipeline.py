"""The one path every Slurm token takes: verify -> map -> authorize -> mint -> audit.

Doors (token API, browser, proxy, CLI) only parse their input and format this module's answer
or its BridgeError. Every decision, minted or refused, is one audit line.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import logging
import pwd
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

from .accounts import PosixIdentity, identity_from_claims, identity_from_nss
from .audit import AuditLog
from .errors import BridgeError, access_denied, invalid_request, unauthorized_client
from .identity import IdentityMapper
from .keys import KeyRingSource
from .minting import SlurmToken, mint_slurm_token
from .names import SIGNING_ALGS
from .policy import (
    check_account,
    check_identity,
    check_time_left,
    resolve_lifetime,
    username_problem,
)
from .settings import DelegationActor, ServiceAccount, Settings

if TYPE_CHECKING:
    from .hooks import DecisionObserver, SubjectLimit
    from .upstream import UpstreamVerifier, VerifiedToken

__all__ = ["BridgeError", "Exchange", "Grant", "GrantKind", "Pipeline", "Request"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """Where a request came from, for audit."""

    door: str = "api"
    remote_addr: str | None = None


class GrantKind(StrEnum):
    """Whose token a grant stands for (the ``kind`` of its audit lines)."""

    USER = "user"  # mapped from a user's upstream token
    SERVICE = "service"  # a listed [[service_accounts]] client
    DELEGATED = "delegated"  # a listed portal acting for a user
    OPERATOR = "operator"  # the admin CLI's mint


@dataclass(frozen=True)
class Grant:
    """Who gets a token, as decided by verify + map; what ``_issue`` authorizes and mints.

    Small and plain so the browser door can keep it in a session cookie.
    """

    user: str
    issuer: str | None = None
    subject: str | None = None
    client: str | None = None
    kind: GrantKind = GrantKind.USER
    actor: str | None = None
    max_lifetime: int | None = None
    algs: tuple[str, ...] = SIGNING_ALGS
    not_after: int | None = None
    # identity claims: None follows [tokens] identity_claims (a service account may override);
    # ``identity`` is what the upstream token stated (identity_source = "claims").
    identity_claims: bool | None = None
    identity: PosixIdentity | None = None

    def __post_init__(self) -> None:
        # A grant read back from a session holds the kind's value: ValueError for any other.
        object.__setattr__(self, "kind", GrantKind(self.kind))

    def audit_fields(self) -> dict[str, Any]:
        """The grant's fields of an audit line (those it has)."""
        fields = {
            "issuer": self.issuer,
            "sub": self.subject[:128] if self.subject else None,
            "client": self.client,
            "user": self.user,
            "kind": self.kind,
            "actor": self.actor,
        }
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class Exchange:
    """A minted Slurm token and the grant it was minted for."""

    token: SlurmToken
    grant: Grant


@dataclass
class _Decision:
    fields: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Built once per process by ``create_app`` (or by the CLI) and shared by every door."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyRingSource,
        audit: AuditLog,
        verifier: UpstreamVerifier | None = None,
        mapper: IdentityMapper | None = None,
        observer: DecisionObserver | None = None,
        subject_limiter: SubjectLimit | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.audit = audit
        self.verifier = verifier
        self.mapper = mapper or IdentityMapper(settings.mapping)
        # Optional metrics hook (slurm_jwt_bridge.metrics.Metrics): minted(...) and refused(...).
        self.observer = observer
        # Optional per-subject rate limit: subject_limiter(issuer_name, sub) raises BridgeError.
        self.subject_limiter = subject_limiter
        self._regex = {
            a: re.compile(a.subject_regex) for a in settings.delegation if a.subject_regex
        }

    # ------------------------------------------------------------ public doors

    def exchange(
        self,
        subject_token: str | None,
        *,
        expected_use: str | None = None,
        lifetime: int | None = None,
        alg: str | None = None,
        request: Request | None = None,
        actor_token: str | None = None,
        requested_subject: str | None = None,
    ) -> Exchange:
        """An identity-provider token (and optionally a portal's actor token) -> Slurm token."""
        request = request or Request()
        with self._audited("exchange", request) as decision:
            if actor_token:
                grant = self._delegated_grant(
                    actor_token, subject_token, requested_subject, expected_use, decision
                )
            else:
                if requested_subject:
                    raise invalid_request(
                        "requested_subject needs an actor_token from a listed delegation actor"
                    )
                if not subject_token:
                    raise invalid_request("subject_token is missing")
                verified = self._verify(subject_token, expected_use)
                decision.fields.update(_verified_fields(verified))
                grant = self._grant_for(verified)
            return self._issue(grant, lifetime=lifetime, alg=alg, decision=decision)

    def operator_mint(
        self,
        user: str,
        lifetime: int | None = None,
        alg: str | None = None,
        request: Request | None = None,
    ) -> SlurmToken:
        """The admin CLI door: the operator is trusted, the account policy still applies."""
        request = request or Request(door="cli")
        with self._audited("mint", request) as decision:
            grant = Grant(user=user, kind=GrantKind.OPERATOR)
            return self._issue(grant, lifetime=lifetime, alg=alg, decision=decision).token

    def login(
        self,
        id_token: str,
        not_after: int,
        request: Request,
        lifetime: int | None = None,
        event: str = "login",
        access_token: str | None = None,
    ) -> Exchange:
        """The browser door: an ID token from the login (or from a refresh at the IdP, event
        "remint"); tokens live at most as the session and never past the ID token's exp.

        Claims are mapped from the access token the login returned when it is one for this
        bridge (it verifies as an access token of the same issuer, for the same subject):
        identity providers such as Keycloak put roles and groups there, not in the ID token.
        Otherwise from the ID token. A refusal says which token was checked."""
        with self._audited(event, request) as decision:
            verified = self._verify(id_token, "id")
            decision.fields.update(_verified_fields(verified))
            mapped_from, checked = verified, "ID token"
            if access_token and self.verifier is not None:
                with contextlib.suppress(BridgeError):  # not one for this bridge: ID token
                    candidate = self.verifier.verify(access_token, "access")
                    if (candidate.issuer.name, candidate.subject) == (
                        verified.issuer.name,
                        verified.subject,
                    ):
                        mapped_from, checked = candidate, "access token"
            try:
                grant = self._grant_for(mapped_from)
            except BridgeError as exc:
                exc.reason = f"{exc.reason} (claims of the login's {checked})"
                exc.args = (exc.reason,)
                raise
            grant = replace(grant, not_after=min(not_after, verified.exp, mapped_from.exp))
            return self._issue(grant, lifetime=lifetime, decision=decision)

    def grant_from_token(self, token: str, request: Request) -> tuple[Grant, int]:
        """verify -> map only (the proxy mints later, per user); a refusal is audited.

        Returns the grant and the upstream token's exp (how long the grant may be cached)."""
        with self._audited("exchange", request, record_success=False) as decision:
            verified = self._verify(token)
            decision.fields.update(_verified_fields(verified))
            until = verified.exp
            if token.count(".") not in (2, 4):
                from .introspection import INTROSPECTION_CACHE_SECONDS

                # An opaque token was introspected: the identity provider may revoke it at any
                # time, so the grant is asked for again once the introspection answer is stale.
                until = min(until, int(time.time() + INTROSPECTION_CACHE_SECONDS))
            return self._grant_for(verified), until

    def remint(
        self,
        grant: Grant,
        lifetime: int | None,
        alg: str | None,
        request: Request,
        event: str = "remint",
        *,
        count_subject: bool = True,
    ) -> Exchange:
        """A new token for a grant decided earlier (the browser session, a device code approved
        in it, the proxy's cached grant); policy re-applies. With ``count_subject`` the grant's
        subject is counted against ``[rate_limit] per_subject`` as an exchange would be (the
        proxy's grants were counted when their upstream token was verified)."""
        with self._audited(event, request) as decision:
            limiter = self.subject_limiter if count_subject else None
            if limiter is not None and grant.issuer and grant.subject:
                decision.fields.update(grant.audit_fields())
                limiter(grant.issuer, grant.subject)
            return self._issue(grant, lifetime=lifetime, alg=alg, decision=decision)

    def refuse_input(
        self, event: str, request: Request, exc: BridgeError, **fields: Any
    ) -> NoReturn:
        """A door refused its input before the pipeline ran: audit the refusal (with ``fields``
        the door knows, such as the session's user), count it, raise ``exc``."""
        with self._audited(event, request) as decision:
            decision.fields.update(fields)
            raise exc

    @contextlib.contextmanager
    def parsing(self, event: str, request: Request, **fields: Any) -> Iterator[None]:
        """A door parses its input inside this block: a refusal there is audited and counted
        as ``refuse_input`` does, then raised."""
        try:
            yield
        except BridgeError as exc:
            self.refuse_input(event, request, exc, **fields)

    # ------------------------------------------------------------ steps (private: only the
    # doors above decide, and each decision is one audit line)

    def _verify(self, token: str, expected_use: str | None = None) -> VerifiedToken:
        if self.verifier is None or not self.settings.issuers:
            raise BridgeError(
                "invalid_grant",
                "no identity provider is configured ([[issuers]])",
                400,
                metric="no_issuers",
            )
        verified = self.verifier.verify(token, expected_use)
        if self.subject_limiter is not None:
            self.subject_limiter(verified.issuer.name, verified.subject)
        return verified

    def _grant_for(self, verified: VerifiedToken) -> Grant:
        """Map a verified token to a cluster user: service account or mapping rules."""
        cap = verified.exp if self.settings.tokens.cap_to_upstream_exp else None
        grant = functools.partial(
            Grant,
            issuer=verified.issuer.name,
            subject=verified.subject,
            client=verified.client_id,
            not_after=cap,
        )
        service = self._service_account(verified)
        if service is not None:
            return grant(
                user=service.account,
                kind=GrantKind.SERVICE,
                max_lifetime=service.max_lifetime,
                algs=service.algs,
                identity_claims=service.identity_claims,
                identity=self._claimed_identity(service.account, verified, service.identity_claims),
            )
        if verified.is_service:
            raise unauthorized_client(
                f"service client {(verified.client_id or '?')[:64]!r} of issuer "
                f"{verified.issuer.name!r} is not listed in [[service_accounts]]",
                metric="unknown_service_client",
            )
        mapped = self.mapper.map(
            verified.issuer.name, verified.claims, verified.groups, verified.roles
        )
        return grant(user=mapped.name, identity=self._claimed_identity(mapped.name, verified))

    def _delegated_grant(
        self,
        actor_token: str,
        subject_token: str | None,
        requested_subject: str | None,
        expected_use: str | None,
        decision: _Decision,
    ) -> Grant:
        """RFC 8693 delegation: a listed portal acts for a user."""
        actor_verified = self._verify(actor_token, "access")
        actor_name = f"{actor_verified.issuer.name}:{actor_verified.client_id}"
        decision.fields.update(
            actor=actor_name,
            actor_issuer=actor_verified.issuer.name,
            actor_client=actor_verified.client_id,
            actor_sub=actor_verified.subject[:128],
        )
        actor = self._actor(actor_verified)
        if actor is None:
            raise unauthorized_client(
                f"actor {actor_name[:96]!r} is not listed in [[delegation.actors]]",
                metric="unknown_actor",
            )
        if not actor_verified.is_service:
            # Every user who logs in through the portal holds a token of the portal's client:
            # only the portal's own client-credentials token may act for others.
            raise unauthorized_client(
                f"actor_token of {actor_name[:96]!r} is a user's token (sub "
                f"{actor_verified.subject[:64]!r}), not the client's service token (client "
                "credentials); a user's token cannot act for someone else",
                metric="actor_not_service",
            )
        if requested_subject:
            if subject_token:
                raise invalid_request("send subject_token or requested_subject, not both")
            user = self._requested_subject(actor, requested_subject)
            return Grant(
                user=user,
                kind=GrantKind.DELEGATED,
                actor=actor_name,
                issuer=actor_verified.issuer.name,
                client=actor_verified.client_id,
                max_lifetime=actor.max_lifetime,
                not_after=actor_verified.exp if self.settings.tokens.cap_to_upstream_exp else None,
            )
        if not subject_token:
            raise invalid_request("subject_token is missing")
        verified = self._verify(subject_token, expected_use)
        decision.fields.update(_verified_fields(verified))
        if verified.is_service:
            raise access_denied(
                "delegation yields tokens for users; the subject_token is a service token",
                metric="delegated_service",
            )
        grant = self._grant_for(verified)
        return Grant(
            user=grant.user,
            issuer=grant.issuer,
            subject=grant.subject,
            client=grant.client,
            kind=GrantKind.DELEGATED,
            actor=actor_name,
            max_lifetime=actor.max_lifetime,
            not_after=grant.not_after,
            identity=grant.identity,
        )

    def _issue(
        self,
        grant: Grant,
        *,
        lifetime: int | None = None,
        alg: str | None = None,
        decision: _Decision,
    ) -> Exchange:
        """authorize -> mint: account policy, lifetime policy, allowed algorithms, signature."""
        decision.fields.update(grant.audit_fields())
        chosen = self.settings.keys.default_alg if alg is None else alg
        if chosen not in SIGNING_ALGS:
            raise invalid_request(f"alg must be RS256 or HS256, got {chosen[:16]!r}", "bad_alg")
        decision.fields["alg"] = chosen
        if chosen not in grant.algs:
            raise access_denied(
                f"{chosen} is not allowed for account {grant.user!r} (allowed: "
                f"{', '.join(grant.algs)})",
                metric="alg_not_allowed_for_account",
            )
        if grant.not_after is not None and grant.not_after <= time.time():
            raise BridgeError(
                "invalid_grant",
                "the login this token would come from has expired; log in again",
                401,
                metric="grant_expired",
            )
        account = check_account(
            grant.user, self.settings.policy, self.settings.mapping.require_local_account
        )
        identity = None
        if self._wants_identity(grant.identity_claims):
            # Without an upstream token of the user (admin mint, a portal's requested_subject)
            # there are no claims to read: the identity comes from NSS.
            identity = grant.identity or identity_from_nss(grant.user)
            decision.fields["uid"] = identity.uid
            check_identity(identity, account, self.settings.policy)
        seconds = resolve_lifetime(lifetime, self.settings.tokens, grant.max_lifetime)
        check_time_left(grant.not_after)
        token = mint_slurm_token(
            self.keys.current(),
            grant.user,
            seconds,
            chosen,
            include_jti=self.settings.tokens.include_jti,
            not_after=grant.not_after,
            identity=identity,
        )
        decision.fields.update(kid=token.kid, jti=token.jti, exp=token.exp)
        return Exchange(token, grant)

    # ------------------------------------------------------------ helpers

    def _wants_identity(self, override: bool | None = None) -> bool:
        """Identity claims in this token: a service account's setting, else [tokens]."""
        return self.settings.tokens.identity_claims if override is None else override

    def _claimed_identity(
        self, user: str, verified: VerifiedToken, override: bool | None = None
    ) -> PosixIdentity | None:
        """The identity the upstream token states, when tokens carry identity claims read from
        upstream claims (identity_source = "claims"); None otherwise."""
        tokens = self.settings.tokens
        if tokens.identity_source != "claims" or not self._wants_identity(override):
            return None
        return identity_from_claims(user, verified.claims, tokens.identity_claim_names)

    @contextlib.contextmanager
    def _audited(
        self, event: str, request: Request, record_success: bool = True
    ) -> Iterator[_Decision]:
        decision = _Decision({"door": request.door, "remote_addr": request.remote_addr})
        started = time.perf_counter()
        try:
            yield decision
        except BridgeError as exc:
            self._refused(event, exc, decision, started)
            raise
        except Exception:
            # A bug or an unforeseen input: still one audit line and a metric, and the door
            # answers a plain server_error (the details go to the log, not to the client).
            log.exception("%s: unexpected error", event)
            error = BridgeError("server_error", "internal error", 500, metric="internal_error")
            self._refused(event, error, decision, started)
            raise error from None
        if not record_success:
            return
        self.audit.record(event, "minted", **decision.fields)
        if self.observer is not None:
            self.observer.minted(decision.fields, time.perf_counter() - started)

    def _refused(self, event: str, exc: BridgeError, decision: _Decision, started: float) -> None:
        self.audit.record(event, "refused", reason=exc.reason, **decision.fields)
        if self.observer is not None:
            self.observer.refused(exc.metric, decision.fields, time.perf_counter() - started)

    def _service_account(self, verified: VerifiedToken) -> ServiceAccount | None:
        if not verified.is_service or not verified.client_id:
            return None
        for sa in self.settings.service_accounts:
            if sa.issuer == verified.issuer.name and sa.client_id == verified.client_id:
                return sa
        return None

    def _actor(self, verified: VerifiedToken) -> DelegationActor | None:
        for actor in self.settings.delegation:
            if actor.issuer == verified.issuer.name and actor.client_id == verified.client_id:
                return actor
        return None

    def _requested_subject(self, actor: DelegationActor, name: str) -> str:
        """A named user an actor asks for: only within its configured group or regex."""
        if not actor.allow_requested_subject:
            raise access_denied(
                "this actor may not use requested_subject (allow_requested_subject is off)",
                metric="requested_subject_not_allowed",
            )
        problem = username_problem(name)
        if problem:
            raise access_denied(f"requested_subject: {problem}", metric="invalid_username")
        pattern = self._regex.get(actor)
        in_regex = bool(pattern and pattern.fullmatch(name))
        in_group = bool(actor.subject_groups) and _in_any_group(name, actor.subject_groups)
        if not (in_regex or in_group):
            raise access_denied(
                f"requested_subject {name[:64]!r} is outside the actor's subject_groups/"
                "subject_regex",
                metric="requested_subject_outside_policy",
            )
        return name


def _verified_fields(verified: VerifiedToken) -> dict[str, Any]:
    return {
        "issuer": verified.issuer.name,
        "sub": verified.subject[:128],
        "client": verified.client_id,
    }


def _in_any_group(name: str, groups: tuple[str, ...]) -> bool:
    """Membership in a local group, as a supplementary member or by primary gid."""
    try:
        primary = pwd.getpwnam(name).pw_gid
    except KeyError:
        primary = None
    for group in groups:
        try:
            entry = grp.getgrnam(group)
        except KeyError:
            continue
        if name in entry.gr_mem or entry.gr_gid == primary:
            return True
    return False
