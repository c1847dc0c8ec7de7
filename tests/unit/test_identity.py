import sys
from pathlib import Path

import pytest

from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.identity import IdentityMapper, claim_at
from slurm_jwt_bridge.settings import MappingSettings, parse_settings

ISSUERS = [
    {"name": "kc", "kind": "keycloak", "issuer": "https://kc/realms/hpc", "allowed_clients": ["a"]},
    {
        "name": "entra",
        "kind": "entra",
        "issuer": "https://login.microsoftonline.com/t/v2.0",
        "audiences": ["api://bridge"],
    },
]


def mapper(*rules: dict, **mapping: object) -> IdentityMapper:
    s = parse_settings({"issuers": ISSUERS, "mapping": {**mapping, "rules": list(rules)}})
    return IdentityMapper(s.mapping)


def refused(m: IdentityMapper, issuer: str, claims: dict, **kw: object) -> BridgeError:
    with pytest.raises(BridgeError) as info:
        m.map(issuer, claims, **kw)
    return info.value


def test_claim_paths() -> None:
    claims = {"a": {"b": {"c": "x"}}, "cognito:username": "u", "x.y": "literal"}
    assert claim_at(claims, "a.b.c") == "x"
    assert claim_at(claims, "cognito:username") == "u"
    assert claim_at(claims, "x.y") == "literal"
    assert claim_at(claims, "a.z") is None


def test_first_matching_rule_wins_and_issuer_scoping() -> None:
    m = mapper(
        {"issuer": "entra", "claim": "upn", "strip_domain": True, "lowercase": True},
        {"claim": "preferred_username"},
    )
    assert m.map("entra", {"upn": "Ada@LAB.example", "preferred_username": "x"}).name == "ada"
    assert m.map("kc", {"upn": "Ada@LAB.example", "preferred_username": "bob"}).name == "bob"


def test_regex_must_match_the_whole_value() -> None:
    m = mapper({"claim": "email", "regex": r"(?P<user>[a-z]+)@lab\.example\.org"})
    assert m.map("kc", {"email": "alice@lab.example.org"}).name == "alice"
    e = refused(m, "kc", {"email": "alice@lab.example.org.evil.com"})
    assert e.error == "access_denied" and e.metric == "unmapped"
    assert "email='alice@lab.example.org.evil.com'" in e.reason


def test_no_rule_names_the_values_tried() -> None:
    m = mapper({"claim": "preferred_username", "regex": "(?P<user>[a-z]+)"}, {"claim": "email"})
    e = refused(m, "kc", {"preferred_username": "Ada@LAB"})
    assert e.reason == "no mapping rule matched (preferred_username='Ada@LAB'; email absent)"


def test_table_and_table_only() -> None:
    m = mapper({"claim": "sub", "table": {"123": "alice"}, "table_only": True}, {"claim": "name"})
    assert m.map("kc", {"sub": "123"}).name == "alice"
    assert m.map("kc", {"sub": "999", "name": "bob"}).name == "bob"
    loose = mapper({"claim": "sub", "table": {"123": "alice"}})
    assert loose.map("kc", {"sub": "carol"}).name == "carol"


def test_group_and_role_conditions() -> None:
    m = mapper(
        {"claim": "preferred_username", "require_groups": ["hpc-users"]},
        {"claim": "preferred_username", "require_roles": ["hpc"]},
    )
    assert m.map("kc", {"preferred_username": "a"}, groups=["hpc-users"]).rule == 0
    assert m.map("kc", {"preferred_username": "a"}, roles=["hpc"]).rule == 1
    e = refused(m, "kc", {"preferred_username": "a"}, groups=["other"])
    assert "needs a group in ['hpc-users']" in e.reason


@pytest.mark.parametrize(
    "value",
    ["\uff41lice", "al ice", "alice\x00", "../etc", "0", "a" * 200, "alice\n", "ali\u0441e"],
)
def test_bad_results_are_refused_not_normalised(value: str) -> None:
    m = mapper({"claim": "preferred_username"})
    e = refused(m, "kc", {"preferred_username": value})
    # A value with a control character never maps at all; others map to a refused name.
    assert e.metric == ("unmapped" if value in ("alice\x00", "alice\n") else "invalid_username")
    assert len(e.reason) < 300


def test_non_string_claims_do_not_map() -> None:
    m = mapper({"claim": "preferred_username"})
    for value in (["alice"], {"a": 1}, 7, None, ""):
        assert refused(m, "kc", {"preferred_username": value}).metric == "unmapped"


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "map.py"
    path.write_text(body)
    return str(path)


def test_lookup_command_argv_stdin_and_cache(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    cmd = script(
        tmp_path,
        f"""
import sys
open({str(log)!r}, "a").write("x")
# argv mode: "--" ends the options, the value follows it
value = sys.argv[2] if sys.argv[1:2] == ["--"] else sys.stdin.read().strip()
table = {{"Ada@LAB": "ada"}}
if value not in table:
    sys.exit(1)
print(table[value])
""",
    )
    m = mapper({"claim": "upn", "command": [sys.executable, cmd]})
    assert m.map("kc", {"upn": "Ada@LAB"}).name == "ada"
    assert m.map("kc", {"upn": "Ada@LAB"}).name == "ada"
    assert log.read_text() == "x"  # cached
    assert refused(m, "kc", {"upn": "nobody"}).metric == "unmapped"
    s = mapper({"claim": "upn", "command": [sys.executable, cmd], "command_input": "stdin"})
    assert s.map("kc", {"upn": "Ada@LAB"}).name == "ada"


def test_lookup_command_timeout_refuses(tmp_path: Path) -> None:
    cmd = script(tmp_path, "import time\ntime.sleep(5)\n")
    m = mapper(
        {"claim": "upn", "command": [sys.executable, cmd], "command_timeout": 0.3}, {"claim": "upn"}
    )
    e = refused(m, "kc", {"upn": "alice"})
    assert e.metric == "lookup_timeout" and "timed out" in e.reason


def test_lookup_command_output_is_validated(tmp_path: Path) -> None:
    cmd = script(tmp_path, "print('root; rm -rf /')\n")
    m = mapper({"claim": "upn", "command": [sys.executable, cmd]})
    assert refused(m, "kc", {"upn": "alice"}).metric == "invalid_username"


def test_empty_mapping_refuses() -> None:
    m = IdentityMapper(MappingSettings())
    assert refused(m, "kc", {"sub": "x"}).metric == "unmapped"


def test_missing_command_is_a_server_error() -> None:
    m = mapper({"claim": "upn", "command": ["/nonexistent/cmd"]})
    assert refused(m, "kc", {"upn": "a"}).status == 500
