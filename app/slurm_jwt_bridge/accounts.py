"""The POSIX identity a Slurm 26.05 token can carry (``use_jwt_client_ids``): uid, gid and ``id``.

Slurm then runs the job with these ids without looking the user up on the controller, so they
come from one of two authorities, chosen by ``[tokens] identity_source``:

- ``nss``: the bridge host's own name service (``getpwnam`` and ``getgrouplist``) at mint time;
- ``claims``: the verified upstream token (e.g. Keycloak's LDAP-federated ``uidNumber``), read
  strictly: JSON integers only, no negatives, every configured part present.

Whichever the source, ``policy.check_identity`` decides whether the uid may get a token.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BridgeError, access_denied
from .identity import claim_at
from .settings import IdentityClaimNames

# uid_t/gid_t are 32-bit; (uid_t)-1 means "no id" to setuid/chown.
MAX_ID = 2**32 - 2
# Bounds that keep a token and a session small; far above what a real account carries.
MAX_GROUPS = 1024
MAX_TEXT = 1024
GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class PosixIdentity:
    """uid, gid and the ``id`` object; exactly one of ``groups`` and ``gids`` is set."""

    name: str
    uid: int
    gid: int
    gecos: str
    dir: str
    shell: str
    groups: tuple[tuple[str, int], ...] | None = None
    gids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.groups is None) == (self.gids is None):
            raise ValueError("PosixIdentity needs exactly one of groups and gids")

    @property
    def all_gids(self) -> tuple[int, ...]:
        """The primary gid first, then every other group id, each once."""
        listed = [g for _, g in self.groups] if self.groups is not None else list(self.gids or ())
        return tuple(dict.fromkeys([self.gid, *listed]))

    def slurm_claims(self) -> dict[str, Any]:
        """``uid``, ``gid`` and ``id`` {name, gecos, dir, shell, groups | gids}, in that order."""
        ident: dict[str, Any] = {
            "name": self.name,
            # Slurm 26.05 refuses an identity whose gecos is empty ("identity validation
            # failed"), and accounts made by useradd have none: the name stands in.
            "gecos": self.gecos or self.name,
            "dir": self.dir,
            "shell": self.shell,
        }
        if self.groups is not None:
            ident["groups"] = dict(self.groups)
        else:
            ident["gids"] = list(self.gids or ())
        return {"uid": self.uid, "gid": self.gid, "id": ident}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (a browser session keeps the grant)."""
        return {
            "name": self.name,
            "uid": self.uid,
            "gid": self.gid,
            "gecos": self.gecos,
            "dir": self.dir,
            "shell": self.shell,
            "groups": [list(p) for p in self.groups] if self.groups is not None else None,
            "gids": list(self.gids) if self.gids is not None else None,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PosixIdentity:
        groups = raw.get("groups")
        gids = raw.get("gids")
        return cls(
            name=raw["name"],
            uid=raw["uid"],
            gid=raw["gid"],
            gecos=raw["gecos"],
            dir=raw["dir"],
            shell=raw["shell"],
            groups=tuple((str(n), int(g)) for n, g in groups) if groups is not None else None,
            gids=tuple(int(g) for g in gids) if gids is not None else None,
        )


def identity_from_nss(name: str) -> PosixIdentity:
    """The account as this host's NSS knows it now; ``groups`` when every gid has a name."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise access_denied(
            f"user {name!r} has no passwd entry on the bridge's host, which "
            'tokens.identity_source = "nss" needs for the identity claims',
            metric="no_identity",
        ) from None
    gids = tuple(dict.fromkeys(os.getgrouplist(name, pw.pw_gid)))
    names: list[str] = []
    for gid in gids:
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            break
    if not pw.pw_dir.startswith("/") or not pw.pw_shell.startswith("/"):
        raise access_denied(
            f"user {name!r} has no absolute home directory or shell in passwd; the identity "
            "claims need both",
            metric="no_identity",
        )
    identity = functools.partial(
        PosixIdentity,
        name=name,
        uid=pw.pw_uid,
        gid=pw.pw_gid,
        gecos=pw.pw_gecos,
        dir=pw.pw_dir,
        shell=pw.pw_shell,
    )
    if len(names) == len(gids) and len(set(names)) == len(names):
        return identity(groups=tuple(zip(names, gids, strict=True)))
    return identity(gids=gids)


def identity_from_claims(
    name: str, claims: Mapping[str, Any], names: IdentityClaimNames
) -> PosixIdentity:
    """The identity the upstream token states; refused when a part is missing or malformed."""
    try:
        return _identity_from_claims(name, claims, names)
    except BridgeError as exc:
        exc.reason = f"user {name!r}: {exc.reason}"  # the audit line then says whose claims
        raise


def _identity_from_claims(
    name: str, claims: Mapping[str, Any], names: IdentityClaimNames
) -> PosixIdentity:
    uid = _posix_id(claims, names.uid, "uid")
    gid = _posix_id(claims, names.gid, "gid")
    home = _path(claims, names.home, "home")
    shell = _path(claims, names.shell, "shell")
    gecos = _text(claims, names.gecos, "gecos") if names.gecos else ""
    identity = functools.partial(
        PosixIdentity, name=name, uid=uid, gid=gid, gecos=gecos, dir=home, shell=shell
    )
    if names.groups:
        return identity(groups=_group_map(claims, names.groups))
    if names.gids:
        return identity(gids=_gid_list(claims, names.gids))
    return identity(gids=(gid,))


# ---------------------------------------------------------------- strict claim readers


def _refuse(claim: str, part: str, problem: str) -> BridgeError:
    return access_denied(
        f"identity claim {claim!r} ({part}) {problem}", metric="invalid_identity_claim"
    )


def _present(claims: Mapping[str, Any], claim: str, part: str) -> Any:
    value = claim_at(claims, claim)
    if value is None:
        raise _refuse(claim, part, "is missing from the identity provider's token")
    return value


def _kind(value: Any) -> str:
    return "a string" if isinstance(value, str) else type(value).__name__


def _id_value(value: Any, claim: str, part: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(claim, part, f"must be a JSON integer, got {_kind(value)}")
    if value < 0:
        raise _refuse(claim, part, f"must not be negative, got {value}")
    if value > MAX_ID:
        raise _refuse(claim, part, f"must be at most {MAX_ID}, got {value}")
    return value


def _posix_id(claims: Mapping[str, Any], claim: str, part: str) -> int:
    return _id_value(_present(claims, claim, part), claim, part)


def _text(claims: Mapping[str, Any], claim: str, part: str) -> str:
    value = _present(claims, claim, part)
    if not isinstance(value, str):
        raise _refuse(claim, part, f"must be a string, got {_kind(value)}")
    if len(value) > MAX_TEXT or _CONTROL_RE.search(value) or ":" in value:
        raise _refuse(claim, part, "must be one line without ':', at most 1024 characters")
    return value


def _path(claims: Mapping[str, Any], claim: str, part: str) -> str:
    value = _text(claims, claim, part)
    if not value.startswith("/"):
        raise _refuse(claim, part, "must be an absolute path")
    return value


def _group_map(claims: Mapping[str, Any], claim: str) -> tuple[tuple[str, int], ...]:
    value = _present(claims, claim, "groups")
    if not isinstance(value, Mapping):
        raise _refuse(claim, "groups", f"must be an object group name -> gid, got {_kind(value)}")
    if len(value) > MAX_GROUPS:
        raise _refuse(claim, "groups", f"holds more than {MAX_GROUPS} groups")
    pairs = []
    for group, gid in value.items():
        if not GROUP_NAME_RE.fullmatch(group):
            raise _refuse(claim, "groups", f"names {group[:40]!r}, not a POSIX group name")
        pairs.append((group, _id_value(gid, claim, "groups")))
    return tuple(pairs)


def _gid_list(claims: Mapping[str, Any], claim: str) -> tuple[int, ...]:
    value = _present(claims, claim, "gids")
    if not isinstance(value, list):
        raise _refuse(claim, "gids", f"must be a list of integers, got {_kind(value)}")
    if len(value) > MAX_GROUPS:
        raise _refuse(claim, "gids", f"holds more than {MAX_GROUPS} gids")
    return tuple(dict.fromkeys(_id_value(g, claim, "gids") for g in value))
