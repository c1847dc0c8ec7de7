"""Who may get a Slurm token, and for how long.

A token for root or SlurmUser is a master key to the cluster (slurmrestd lets such a token act
as any user), so those names, uid 0, listed names and system accounts are refused unless an
operator names them in ``[policy] allow_users``.
"""

from __future__ import annotations

import pwd
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import BridgeError, access_denied, invalid_grant, invalid_request
from .names import username_problem as username_problem  # one rule, also for its callers
from .settings import PolicySettings, TokenSettings

if TYPE_CHECKING:
    from .accounts import PosixIdentity

# The shortest Slurm token worth minting, requested or left before the upstream token expires.
MIN_LIFETIME = 60
# A number of seconds in a request: ASCII digits only (str.isdigit() also takes "²" and "٣"),
# at most 9 of them.
SECONDS_RE = re.compile(r"[0-9]{1,9}")
NOBODY_UID = 65534


@dataclass(frozen=True)
class AccountCheck:
    """What the policy found out about a cluster user name."""

    name: str
    uid: int | None  # None when the name does not resolve on this host


def check_account(
    name: str, policy: PolicySettings, require_local_account: bool = False
) -> AccountCheck:
    """Raise BridgeError unless a token may be minted for ``name``."""
    problem = username_problem(name)
    if problem:
        raise access_denied(problem, metric="invalid_username")
    if name in policy.deny_users:
        raise access_denied(f"user {name!r} is in policy.deny_users", metric="denied_user")
    uid = _uid(name)
    if uid is None and require_local_account:
        raise access_denied(
            f"user {name!r} has no local account (mapping.require_local_account is on)",
            metric="no_local_account",
        )
    if name not in policy.allow_users:
        if name == "root":
            raise _denied_root(name)
        if name == policy.slurm_user:
            raise _denied_slurm_user(name)
        if name == "nobody":
            raise _denied_nobody(name)
    if uid is not None:
        check_uid(name, uid, policy)
    return AccountCheck(name, uid)


def check_uid(name: str, uid: int, policy: PolicySettings, source: str = "") -> None:
    """Raise BridgeError unless a token for ``name`` may carry (or resolve to) ``uid``.

    The one place the policy looks at uids, whichever authority stated them: this host's
    passwd, or an identity provider's claims (``source`` names it in the reason). A second
    passwd entry with the same uid (an alias, a case-folded name) is the same account to the
    kernel and to slurmctld: deny and protect by uid as well as by name.
    """
    said = f" ({source})" if source else ""
    for denied in policy.deny_users:
        if denied != name and uid == _uid(denied):
            raise access_denied(
                f"user {name!r} has uid {uid}{said}, the uid of {denied!r} in policy.deny_users",
                metric="denied_user",
            )
    if name in policy.allow_users:
        return
    if uid == 0:
        raise _denied_root(name, f" has uid 0{said}")
    if uid == _uid(policy.slurm_user):
        raise _denied_slurm_user(
            name,
            f" has uid {uid}{said}, the uid of the SlurmUser (policy.slurm_user "
            f"{policy.slurm_user!r})",
        )
    if uid == NOBODY_UID:
        raise _denied_nobody(name, f" has uid {uid}{said}")
    if uid < policy.min_uid:
        raise access_denied(
            f"user {name!r} is a system account (uid {uid}{said} < policy.min_uid "
            f"{policy.min_uid})",
            metric="denied_system_account",
        )


def check_identity(identity: PosixIdentity, account: AccountCheck, policy: PolicySettings) -> None:
    """Raise BridgeError unless these identity claims may go into a token for ``account``.

    ``account`` is check_account's answer: its uid, when the name resolves on this host, was
    checked there and must equal the claimed one; otherwise the claimed uid is checked here.
    """
    if account.uid is not None and identity.uid != account.uid:
        raise access_denied(
            f"the identity provider says user {account.name!r} has uid {identity.uid}, "
            f"the bridge's host says {account.uid}",
            metric="identity_mismatch",
        )
    if account.uid is None:
        check_uid(account.name, identity.uid, policy, "identity claim")
    if 0 in identity.all_gids and account.name not in policy.allow_users:
        raise access_denied(
            f"user {account.name!r} would carry gid 0 (root's group) in the identity claims",
            metric="denied_root",
        )


def _denied_root(name: str, how: str = " is root (uid 0)") -> BridgeError:
    return access_denied(
        f"user {name!r}{how}; a root token is a master key to the cluster", metric="denied_root"
    )


def _denied_slurm_user(
    name: str, how: str = " is the SlurmUser (policy.slurm_user)"
) -> BridgeError:
    return access_denied(
        f"user {name!r}{how}; its token can act as anyone", metric="denied_slurm_user"
    )


def _denied_nobody(name: str, how: str = "") -> BridgeError:
    return access_denied(
        f"user {name!r}{how}: the shared unprivileged account (nobody)",
        metric="denied_system_account",
    )


def _uid(name: str) -> int | None:
    """The uid ``name`` resolves to on this host, or None."""
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None


def parse_seconds(value: object, name: str) -> int | None:
    """A number of seconds as a request carries it: None or "" (absent), an integer (JSON), or
    1-9 ASCII digits; anything else is refused naming ``name``. The range is resolve_lifetime's."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and SECONDS_RE.fullmatch(value):
        return int(value)
    raise invalid_request(
        f"{name} must be a whole number of seconds: 1 to 9 ASCII digits", metric="bad_number"
    )


def check_time_left(not_after: int | None, now: float | None = None) -> None:
    """Refuse when the grant ends (the upstream token's exp, the browser session's end) less than
    MIN_LIFETIME seconds from now: such a token would be useless, or already expired."""
    if not_after is None:
        return
    left = int(not_after) - int(time.time() if now is None else now)
    if left < MIN_LIFETIME:
        raise invalid_grant(
            f"the upstream token (or browser session) expires too soon: {left} s left, and a "
            f"Slurm token must live at least {MIN_LIFETIME} s; get a fresh one",
            metric="upstream_expires_too_soon",
        )


def resolve_lifetime(requested: int | None, tokens: TokenSettings, cap: int | None = None) -> int:
    """The lifetime to mint with: the default, or the requested one within the maximum."""
    maximum = tokens.max_lifetime if cap is None else min(cap, tokens.max_lifetime)
    if requested is None:
        return min(tokens.default_lifetime, maximum)
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise invalid_request("lifetime must be an integer number of seconds")
    if requested < MIN_LIFETIME:
        raise invalid_request(f"lifetime {requested} s is below the minimum of {MIN_LIFETIME} s")
    if requested > maximum:
        raise BridgeError(
            "invalid_request",
            f"requested lifetime {requested} s exceeds the maximum of {maximum} s",
            400,
            metric="lifetime_too_long",
        )
    return requested
