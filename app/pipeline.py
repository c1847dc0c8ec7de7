"""The one path every Slurm token takes: verify -> map -> authorize -> mint -> audit.

Doors (token API, browser, proxy, CLI) only parse their input and format this module's answer
or its BridgeError.
"""

from __future__ import annotations

from dataclasses import dataclass

from .audit import AuditLog
from .errors import BridgeError
from .keys import KeyRingSource
from .minting import SlurmToken, mint_slurm_token
from .policy import check_account, resolve_lifetime
from .settings import Settings

__all__ = ["BridgeError", "Pipeline", "Request"]


@dataclass(frozen=True)
class Request:
    """Where a request came from, for audit."""

    door: str = "api"
    remote_addr: str | None = None


class Pipeline:
    """Built once per process by ``create_app`` (or by the CLI) and shared by every door."""

    def __init__(self, settings: Settings, keys: KeyRingSource, audit: AuditLog) -> None:
        self.settings = settings
        self.keys = keys
        self.audit = audit

    def _alg(self, alg: str | None) -> str:
        return alg or self.settings.keys.default_alg

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
