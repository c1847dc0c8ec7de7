"""Claims -> the exact cluster user name, by ordered rules (first match wins).

A wrong name is a security hole, so the mapping never guesses: no Unicode normalisation (a
look-alike must not become a real user), the regex must match the whole value, a lookup command
that hangs refuses the request instead of falling through to a later rule, and whatever comes out
must be a POSIX portable user name.
"""

from __future__ import annotations

import re
import subprocess
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .cache import ExpiringCache
from .errors import BridgeError, access_denied
from .policy import username_problem
from .settings import MappingRule, MappingSettings

Runner = Callable[..., subprocess.CompletedProcess[str]]

# ASCII letters only: str.lower() would fold look-alikes such as KELVIN SIGN (U+212A) into 'k'.
# Lookup-command answers kept (each for its rule's command_cache_ttl): the most recent ones.
LOOKUP_CACHE_SIZE = 10000
_MISS = object()
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class MappedUser:
    """The cluster user a token maps to, and how."""

    name: str
    rule: int
    claim: str


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``realm_access.roles``); a literal key wins over a path."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _show(value: str) -> str:
    return repr(value[:64] + ("..." if len(value) > 64 else ""))


class IdentityMapper:
    """Applies ``[[mapping.rules]]``; shared by every door."""

    def __init__(self, mapping: MappingSettings, runner: Runner = subprocess.run) -> None:
        self.mapping = mapping
        self._compiled = [re.compile(r.regex) if r.regex else None for r in mapping.rules]
        self._runner = runner
        # (rule index, claim value) -> the lookup command's answer, for its command_cache_ttl
        self._cache: ExpiringCache[tuple[int, str], str | None] = ExpiringCache(
            LOOKUP_CACHE_SIZE, timer=time.monotonic
        )

    def map(
        self,
        issuer: str,
        claims: Mapping[str, Any],
        groups: Sequence[str] = (),
        roles: Sequence[str] = (),
    ) -> MappedUser:
        """The user name for a verified token from ``issuer`` (its configured name)."""
        tried: list[str] = []
        for index, rule in enumerate(self.mapping.rules):
            if rule.issuer not in ("*", issuer):
                continue
            if rule.require_groups and not set(rule.require_groups) & set(groups):
                tried.append(f"rule {index + 1} needs a group in {list(rule.require_groups)}")
                continue
            if rule.require_roles and not set(rule.require_roles) & set(roles):
                tried.append(f"rule {index + 1} needs a role in {list(rule.require_roles)}")
                continue
            value = claim_at(claims, rule.claim)
            if not isinstance(value, str) or not value:
                tried.append(f"{rule.claim} absent")
                continue
            if rule.claim == "email" and claims.get("email_verified") in (False, "false"):
                # The identity provider says the person has not proven this address (many let
                # users set their own): it names nobody.
                tried.append("email not verified (email_verified is false)")
                continue
            name = self._apply(index, rule, value)
            if name is None:
                tried.append(f"{rule.claim}={_show(value)}")
                continue
            problem = username_problem(name)
            if problem:
                raise access_denied(
                    f"mapping rule {index + 1} ({rule.claim}) produced {problem}",
                    metric="invalid_username",
                )
            return MappedUser(name, index, rule.claim)
        detail = "; ".join(tried) if tried else f"no rule applies to issuer {issuer!r}"
        raise access_denied(f"no mapping rule matched ({detail})", metric="unmapped")

    def _apply(self, index: int, rule: MappingRule, value: str) -> str | None:
        if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
            # A newline or NUL would change what a lookup command reads, and no user name
            # holds one: such a value never maps.
            return None
        pattern = self._compiled[index]
        if pattern is not None:
            m = pattern.fullmatch(value)
            if m is None or not m.group("user"):
                return None
            value = m.group("user")
        if rule.strip_domain:
            value = value.split("@", 1)[0]
        if rule.lowercase:
            value = value.translate(_ASCII_LOWER)
        if rule.table:
            if value in rule.table:
                value = rule.table[value]
            elif rule.table_only:
                return None
        if rule.command:
            return self._lookup(index, rule, value)
        return value

    def _lookup(self, index: int, rule: MappingRule, value: str) -> str | None:
        """Run the rule's lookup command; its first output line is the user name."""
        if "\x00" in value:
            # No argv or line holds a NUL; the command could only misread it.
            raise access_denied(
                f"mapping rule {index + 1}: {rule.claim} contains a NUL character",
                metric="invalid_claim",
            )
        key = (index, value)
        hit = self._cache.get(key, _MISS)
        if hit is not _MISS:
            return cast("str | None", hit)
        argv = list(rule.command)
        stdin = None
        if rule.command_input == "argv":
            # "--" ends the options: a value such as "-uroot" stays an operand of the script.
            argv += ["--", value]
        else:
            stdin = value + "\n"
        try:
            proc = self._runner(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=rule.command_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BridgeError(
                "temporarily_unavailable",
                f"mapping rule {index + 1}: lookup command timed out after "
                f"{rule.command_timeout:g} s",
                503,
                metric="lookup_timeout",
            ) from None
        except OSError as exc:
            raise BridgeError(
                "server_error",
                f"mapping rule {index + 1}: lookup command failed to start ({exc.strerror})",
                500,
                metric="lookup_error",
            ) from None
        lines = proc.stdout.splitlines()
        result = lines[0].strip() if proc.returncode == 0 and lines else None
        self._cache.put(key, result or None, time.monotonic() + rule.command_cache_ttl)
        return result or None
