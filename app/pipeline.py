"""The one path every Slurm token takes: verify -> map -> authorize -> mint -> audit.

Doors (token API, browser, proxy, CLI) only parse their input and format this module's answer
or its BridgeError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .audit import AuditLog
from .errors import BridgeError, invalid_request
from .identity import IdentityMapper
from .keys import KeyRingSource
from .minting import SlurmToken, mint_slurm_token
from .policy import check_account, resolve_lifetime
from .settings import Settings

if TYPE_CHECKING:
    from .upstream import UpstreamVerifier, VerifiedToken

__all__ = ["BridgeError", "Exchange", "Pipeline", "Request"]

SIGNING_ALGS = ("RS256", "HS256")


@dataclass(frozen=True)
class Request:
    """Where a request came from, for audit."""

    door: str = "api"
    remote_addr: str | None = None


@dataclass(frozen=True)
class Exchange:
    """A minted Slurm token and the verified upstream token it came from."""

    token: SlurmToken
    upstream: VerifiedToken


class Pipeline:
    """Built once per process by ``create_app`` (or by the CLI) and shared by every door."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyRingSource,
        audit: AuditLog,
        verifier: UpstreamVerifier | None = None,
        mapper: IdentityMapper | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.audit = audit
        self.verifier = verifier
        self.mapper = mapper or IdentityMapper(settings.mapping)

    def _alg(self, alg: str | None) -> str:
        alg = alg or self.settings.keys.default_alg
        if alg not in SIGNING_ALGS:
            raise invalid_request(f"alg must be RS256 or HS256, got {alg[:16]!r}", "bad_alg")
        return alg

    def exchange(
        self,
        subject_token: str,
        *,
        expected_use: str | None = None,
        lifetime: int | None = None,
        alg: str | None = None,
        request: Request | None = None,
    ) -> Exchange:
        """verify -> map -> authorize -> mint -> audit, for a token from an identity provider."""
        request = request or Request()
        fields: dict[str, Any] = {"door": request.door, "remote_addr": request.remote_addr}
        try:
            if self.verifier is None or not self.settings.issuers:
                raise BridgeError(
                    "invalid_grant",
                    "no identity provider is configured ([[issuers]])",
                    400,
                    metric="no_issuers",
                )
            chosen_alg = self._alg(alg)
            fields["alg"] = chosen_alg
            verified = self.verifier.verify(subject_token, expected_use)
            fields.update(
                issuer=verified.issuer.name,
                sub=verified.subject[:128],
                client=verified.client_id,
            )
            mapped = self.mapper.map(
                verified.issuer.name, verified.claims, verified.groups, verified.roles
            )
            fields["user"] = mapped.name
            check_account(
                mapped.name, self.settings.policy, self.settings.mapping.require_local_account
            )
            seconds = resolve_lifetime(lifetime, self.settings.tokens)
            cap = verified.exp if self.settings.tokens.cap_to_upstream_exp else None
            token = self._mint(mapped.name, seconds, chosen_alg, cap)
        except BridgeError as exc:
            self.audit.record("exchange", "refused", reason=exc.reason, **fields)
            raise
        self.audit.record(
            "exchange", "minted", kid=token.kid, jti=token.jti, exp=token.exp, **fields
        )
        return Exchange(token, verified)

    def _mint(self, user: str, lifetime: int, alg: str, not_after: int | None = None) -> SlurmToken:
        return mint_slurm_token(
            self.keys.current(),
            user,
            lifetime,
            alg,
            include_jti=self.settings.tokens.include_jti,
            not_after=not_after,
        )

    def operator_mint(
        self,
        user: str,
        lifetime: int | None = None,
        alg: str | None = None,
        request: Request | None = None,
    ) -> SlurmToken:
        """The admin CLI door: the operator is trusted, the account policy still applies."""
        request = request or Request(door="cli")
        alg = self._alg(alg)
        try:
            check_account(user, self.settings.policy)
            seconds = resolve_lifetime(lifetime, self.settings.tokens)
            token = self._mint(user, seconds, alg)
        except BridgeError as exc:
            self.audit.record(
                "mint",
                "refused",
                door=request.door,
                user=user[:64],
                alg=alg,
                reason=exc.reason,
                remote_addr=request.remote_addr,
            )
            raise
        self.audit.record(
            "mint",
            "minted",
            door=request.door,
            user=user,
            alg=token.alg,
            kid=token.kid,
            jti=token.jti,
            exp=token.exp,
            remote_addr=request.remote_addr,
        )
        return token
