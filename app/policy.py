"""Who may get a Slurm token, and for how long.

A token for root or SlurmUser is a master key to the cluster (slurmrestd lets such a token act
as any user), so those names, uid 0, listed names and system accounts are refused unless an
operator names them in ``[policy] allow_users``.
"""

from __future__ import annotations

import pwd
import re
from dataclasses import dataclass

from .errors import BridgeError, access_denied, invalid_request
from .settings import PolicySettings, TokenSettings

# POSIX portable user names: the portable filename characters, not starting with '-'.
USERNAME_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$")
MIN_LIFETIME = 60
NOBODY_UID = 65534


@dataclass(frozen=True)
class AccountCheck:
    """What the policy found out about a cluster user name."""

    name: str
    uid: int | None  # None when the name does not resolve on this host


def username_problem(name: str) -> str | None:
    """Why ``name`` cannot be a cluster user name, or None when it is well-formed."""
    if not USERNAME_RE.fullmatch(name):
        shown = name.encode("unicode_escape").decode()[:64]
        return (
            f"{shown!r} is not a POSIX portable user name "
            "(letters, digits, '.', '_', '-'; at most 32; not starting with '-')"
        )
    if name.isdigit():
        # Slurm reads an all-digit name as a uid: "0" would be root.
        return f"{name!r} is all digits, which Slurm would read as a numeric uid"
    if name in (".", ".."):
        return f"{name!r} is not a user name"
    return None


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
    # A second passwd entry with the same uid (an alias, a case-folded name) is the same
    # account to the kernel and to slurmctld: deny and protect by uid as well as by name.
    if uid is not None:
        for denied in policy.deny_users:
            if _uid(denied) == uid:
                raise access_denied(
                    f"user {name!r} has uid {uid}, the uid of {denied!r} in policy.deny_users",
                    metric="denied_user",
                )
    if name in policy.allow_users:
        return AccountCheck(name, uid)
    if name == "root" or uid == 0:
        raise access_denied(
            f"user {name!r} is root (uid 0); a root token is a master key to the cluster",
            metric="denied_root",
        )
    if name == policy.slurm_user or (uid is not None and uid == _uid(policy.slurm_user)):
        raise access_denied(
            f"user {name!r} is the SlurmUser (policy.slurm_user {policy.slurm_user!r}, uid "
            f"{uid}); its token can act as anyone",
            metric="denied_slurm_user",
        )
    if name == "nobody" or uid == NOBODY_UID:
        raise access_denied(
            f"user {name!r} is the shared unprivileged account (nobody)",
            metric="denied_system_account",
        )
    if uid is not None and uid < policy.min_uid:
        raise access_denied(
            f"user {name!r} is a system account (uid {uid} < policy.min_uid {policy.min_uid})",
            metric="denied_system_account",
        )
    return AccountCheck(name, uid)


def _uid(name: str) -> int | None:
    """The uid ``name`` resolves to on this host, or None."""
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None


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
