"""Generated claim values through the mapping rules and the account policy.

Whatever a verified token says (look-alike letters, case, whitespace, NUL, path characters,
very long strings, JSON that is not a string), ``IdentityMapper.map`` followed by
``policy.check_account`` either refuses with an OAuth ``access_denied`` (403), or yields a name
that:

- is a POSIX portable user name (ASCII ``[A-Za-z0-9._][A-Za-z0-9._-]{0,31}``, not all digits,
  not ``.``/``..``);
- is not root, not the SlurmUser, not denied, not a uid-0 or system account of this host unless
  ``allow_users`` names it, and resolves locally when ``require_local_account`` is on;
- is exactly what the rule's documented steps make of the value (regex group, then cut at
  ``@``, then lower-case, then table, then command): nothing is normalised or guessed.

The oracle re-derives each of these from the settings and this host's passwd, independently of
the code under test. Several rule sets (plain, regex, strip_domain + lowercase, table, command,
group-gated, nested claim) run against several policies.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurm_jwt_bridge.audit import AuditLog
from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.identity import IdentityMapper, claim_at
from slurm_jwt_bridge.keys import KeyRingSource
from slurm_jwt_bridge.pipeline import Pipeline
from slurm_jwt_bridge.policy import check_account
from slurm_jwt_bridge.settings import MappingRule, Settings, parse_settings
from slurm_jwt_bridge.upstream import VerifiedToken

_ENV_EXAMPLES = int(os.environ.get("SLURM_JWT_BRIDGE_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(
    max_examples=_ENV_EXAMPLES or 100,
    deadline=None,
    derandomize=not _ENV_EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

PORTABLE = re.compile(r"\A[A-Za-z0-9._][A-Za-z0-9._-]{0,31}\Z")
ISSUERS = [
    {
        "name": "kc",
        "kind": "keycloak",
        "issuer": "https://kc.example/realms/hpc",
        "allowed_clients": ["portal"],
    },
]
TABLE = {
    "Ada Lovelace": "ada",
    "Root User": "root",
    "The Scheduler": "slurm",
    "Dots": "..",
    "Path": "../etc/passwd",
    "Zero": "0",
    "Long": "x" * 40,
    "Denied": "mallory",
    "alice": "alice",
}
RULESETS: dict[str, list[dict[str, Any]]] = {
    "plain": [{"claim": "preferred_username"}],
    "regex": [{"claim": "email", "regex": r"(?P<user>[^@]+)@example\.org"}],
    "domain_lower": [{"claim": "upn", "strip_domain": True, "lowercase": True}],
    "table": [{"claim": "name", "table": TABLE}],
    "table_only_lower": [{"claim": "name", "lowercase": True, "table": TABLE, "table_only": True}],
    "groups_then_plain": [
        {"claim": "preferred_username", "require_groups": ["hpc"], "lowercase": True},
        {"claim": "ext.login"},
    ],
    "command": [{"claim": "sub", "command": ["/usr/local/bin/map-user"]}],
}
POLICIES: dict[str, dict[str, Any]] = {
    "default_local": {"policy": {"deny_users": ["mallory"]}, "require_local_account": True},
    "default_no_local": {"policy": {"deny_users": ["mallory"]}, "require_local_account": False},
    "no_local": {
        "policy": {"deny_users": ["mallory", "bob"], "slurm_user": "slurmadm"},
        "require_local_account": False,
    },
    "allow_some": {
        "policy": {"allow_users": ["daemon", "mallory"], "deny_users": ["mallory"]},
        "require_local_account": False,
    },
}

# Values an attacker would try: real names in disguise, privileged names, path tricks.
TRICKS = [
    "alice",
    "ALICE",
    "root",
    "ROOT",
    "Root",
    "r\u200boot",
    "\u0280oot",
    "\uff52\uff4f\uff4f\uff54",
    "slurm",
    "SLURM",
    "slurmadm",
    "mallory",
    "MALLORY",
    "0",
    "00",
    "1000",
    "-1",
    "+0",
    ".",
    "..",
    "../root",
    "alice/..",
    "a:b",
    "alice\x00",
    "\x00root",
    "alice\n",
    " alice",
    "alice ",
    "al ice",
    "al\tice",
    "\u212aevin",
    "\u0130nes",
    "\u0131nes",
    "stra\u00dfe",
    "\u0430lice",
    "\uff41lice",
    "alice\u0301",
    "a" * 32,
    "a" * 33,
    "a" * 5000,
    "root@example.org",
    "ROOT@example.org",
    "alice@example.org",
    "alice@evil@example.org",
    "@example.org",
    "daemon",
    "nobody",
    "Ada Lovelace",
    "Root User",
    "The Scheduler",
    "Path",
    "Dots",
    "Zero",
    "Long",
    "Denied",
]
names = st.one_of(
    st.sampled_from(TRICKS),
    st.builds(
        lambda a, b, c: a + b + c,
        st.sampled_from(TRICKS),
        st.sampled_from(["", "@example.org", "@EXAMPLE.ORG", "\x00", " ", "/", "\u212a"]),
        st.text(max_size=3),
    ),
    st.text(max_size=40),
    st.text(alphabet="abcABC019._-@/ \x00\u212a\u0131\uff41", max_size=40),
)
claim_values = st.one_of(
    names,
    names,
    names,
    st.none(),
    st.integers(),
    st.lists(names, max_size=2),
    st.dictionaries(st.sampled_from(["user", "login"]), names, max_size=2),
)


@dataclass
class FakeRunner:
    """Plays a user_map_cmd: its answer (exit code, stdout) is part of the generated input."""

    returncode: int
    stdout: str
    calls: int = 0

    def __call__(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        return subprocess.CompletedProcess(list(argv), self.returncode, self.stdout, "")


def build(ruleset: str, policy: str) -> Settings:
    p = POLICIES[policy]
    return parse_settings(
        {
            "issuers": ISSUERS,
            "audit": {"destination": "none"},
            "policy": p["policy"],
            "mapping": {
                "require_local_account": p["require_local_account"],
                "rules": RULESETS[ruleset],
            },
        },
        Path.cwd(),
    )


def expected_name(rule: MappingRule, value: str, runner: FakeRunner) -> str | None:
    """What the documented steps make of ``value`` (None: the rule does not apply)."""
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        return None  # documented: such a value never maps
    if rule.regex:
        m = re.fullmatch(rule.regex, value)
        if m is None or not m.group("user"):
            return None
        value = m.group("user")
    if rule.strip_domain:
        value = value.split("@", 1)[0]
    if rule.lowercase:  # ASCII letters only: no look-alike may fold into a real name
        value = "".join(c.lower() if "A" <= c <= "Z" else c for c in value)
    if rule.table:
        if value in rule.table:
            value = rule.table[value]
        elif rule.table_only:
            return None
    if rule.command:
        lines = runner.stdout.splitlines()
        first = lines[0].strip() if runner.returncode == 0 and lines else ""
        return first or None
    return value


def assert_admissible(name: str, s: Settings) -> None:
    """The oracle: what policy allows, derived from settings and passwd, not from app code."""
    assert PORTABLE.fullmatch(name), f"not a portable user name: {name!r}"
    assert not name.isdigit(), name
    assert name not in (".", ".."), name
    assert name not in s.policy.deny_users, name
    try:
        uid: int | None = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None
    if s.mapping.require_local_account:
        assert uid is not None, f"{name!r} has no local account"
    if name not in s.policy.allow_users:
        assert name != "root" and uid != 0, name
        assert name != "nobody" and uid != 65534, name  # one account shared by strangers
        assert name != s.policy.slurm_user, name
        assert uid is None or uid >= s.policy.min_uid, (name, uid)


def run_case(
    ruleset: str, policy: str, claims: dict[str, Any], groups: Sequence[str], runner: FakeRunner
) -> None:
    s = build(ruleset, policy)
    mapper = IdentityMapper(s.mapping, runner=runner)
    try:
        mapped = mapper.map("kc", claims, groups)
        check_account(mapped.name, s.policy, s.mapping.require_local_account)
    except BridgeError as exc:
        assert exc.status == 403 and exc.error == "access_denied", (exc.status, exc.reason)
        assert exc.reason
        return
    assert_admissible(mapped.name, s)
    rule = s.mapping.rules[mapped.rule]
    value = claim_at(claims, rule.claim)
    assert isinstance(value, str) and value, value
    assert mapped.name == expected_name(rule, value, runner), (mapped, value)
    # An earlier rule that applies would have won.
    for earlier in s.mapping.rules[: mapped.rule]:
        gated = earlier.require_groups and not set(earlier.require_groups) & set(groups)
        v = claim_at(claims, earlier.claim)
        assert gated or not isinstance(v, str) or not v or expected_name(earlier, v, runner) is None


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("ruleset", list(RULESETS))
@FUZZ
@given(
    value=claim_values,
    extra=claim_values,
    groups=st.lists(st.sampled_from(["hpc", "HPC", "hpc ", "staff"]), max_size=2),
    command_out=st.tuples(st.sampled_from([0, 0, 0, 1]), names.map(lambda n: n + "\nsecond")),
)
def test_mapping_yields_an_admissible_name_or_a_refusal(
    ruleset: str,
    policy: str,
    value: Any,
    extra: Any,
    groups: list[str],
    command_out: tuple[int, str],
) -> None:
    claim = RULESETS[ruleset][0]["claim"]
    claims: dict[str, Any] = {claim: value, "ext": {"login": extra}, "sub": "s-1"}
    if ruleset == "command":
        claims["sub"] = value
    run_case(ruleset, policy, claims, groups, FakeRunner(*command_out))


@pytest.mark.parametrize(
    ("ruleset", "value", "refused"),
    [
        ("plain", "alice", False),
        ("plain", "root", True),
        ("plain", "\uff41lice", True),
        ("plain", "alice\x00", True),
        ("plain", "a" * 33, True),
        ("domain_lower", "ROOT@example.org", True),
        ("domain_lower", "Alice@Example.org", False),
        ("regex", "../root@example.org", True),
        ("table", "Root User", True),
        ("table", "The Scheduler", True),
        ("table", "Path", True),
        ("table", "Zero", True),
        ("table", "Denied", True),
    ],
)
def test_known_cases(ruleset: str, value: str, refused: bool) -> None:
    """Fixed points of the property above, so a broken oracle cannot pass silently."""
    s = build(ruleset, "default_no_local")
    mapper = IdentityMapper(s.mapping, runner=FakeRunner(0, ""))
    claim = RULESETS[ruleset][0]["claim"]
    try:
        name = mapper.map("kc", {claim: value}).name
        check_account(name, s.policy, s.mapping.require_local_account)
    except BridgeError as exc:
        assert refused, exc.reason
        assert exc.status == 403
        return
    assert not refused, f"{value!r} mapped to {name!r}"
    assert_admissible(name, s)


def test_lowercase_never_turns_a_look_alike_into_an_ascii_name() -> None:
    """KELVIN SIGN U+212A: str.lower() would make it 'k' (fixed in identity.py)."""
    s = build("domain_lower", "no_local")
    mapper = IdentityMapper(s.mapping)
    with pytest.raises(BridgeError):
        mapper.map("kc", {"upn": "\u212aevin@example.org"})


# ---------------------------------------------------------------- delegation: requested_subject


class ActorVerifier:
    """Stands in for UpstreamVerifier: every token is the portal's own service token."""

    def __init__(self, s: Settings) -> None:
        self.issuer = s.issuers[0]

    def verify(self, token: str, expected_use: str | None = None) -> VerifiedToken:
        return VerifiedToken(
            issuer=self.issuer,
            claims={},
            header={},
            subject="service-account-portal",
            client_id="portal",
            token_use="access",
            groups=(),
            roles=(),
            is_service=True,
            exp=int(time.time()) + 600,
            token_hash=token,
        )


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """A listed actor that may name users matching [a-z]+ or in the local group 'hpc'."""
    from slurm_jwt_bridge.keys import init_keys

    keys = tmp_path_factory.mktemp("portal") / "keys"
    init_keys(keys)
    s = parse_settings(
        {
            "keys": {"dir": str(keys)},
            "issuers": ISSUERS,
            "audit": {"destination": "none"},
            "policy": {"deny_users": ["mallory"]},
            "mapping": {"require_local_account": False},
            "delegation": {
                "actors": [
                    {
                        "issuer": "kc",
                        "client_id": "portal",
                        "allow_requested_subject": True,
                        "subject_regex": "[a-z]+",
                        "subject_groups": ["hpc"],
                    }
                ]
            },
        },
        Path.cwd(),
    )
    return Pipeline(s, KeyRingSource(s.keys.dir), AuditLog("none"), ActorVerifier(s))


@FUZZ
@given(subject=names)
def test_requested_subject_is_bounded_by_the_actor_policy(portal: Pipeline, subject: str) -> None:
    """A compromised portal can name only users its regex/groups admit, never root/SlurmUser."""
    try:
        result = portal.exchange(None, actor_token="actor", requested_subject=subject)
    except BridgeError as exc:
        assert exc.status in (400, 403), (exc.status, exc.reason)
        return
    name = result.token.user
    assert name == subject
    assert re.fullmatch("[a-z]+", name) or name in _members("hpc"), name
    assert_admissible(name, portal.settings)


def _members(group: str) -> set[str]:
    import grp

    try:
        return set(grp.getgrnam(group).gr_mem)
    except KeyError:
        return set()


def test_requested_subject_with_nul_is_refused_not_a_crash(portal: Pipeline) -> None:
    """pwd.getpwnam raised ValueError on NUL: a 500 (fixed in pipeline.py)."""
    with pytest.raises(BridgeError):
        portal.exchange(None, actor_token="actor", requested_subject="al\x00ice")
