from pathlib import Path

import pytest

from slurm_jwt_bridge.settings import SettingsError, load_settings, parse_settings


def test_defaults_are_slurms() -> None:
    s = parse_settings({})
    assert s.tokens.default_lifetime == 1800
    assert s.keys.default_alg == "RS256"
    assert s.policy.min_uid == 1000
    assert s.policy.slurm_user == "slurm"
    assert s.mapping.require_local_account is True  # Slurm maps unknown names to nobody


def test_relative_keys_dir_is_taken_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text('[keys]\ndir = "k"\n')
    assert load_settings(cfg).keys.dir == tmp_path / "k"


def test_every_relative_path_is_taken_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "bridge.toml"
    cfg.parent.mkdir()
    cfg.write_text(
        '[server]\nsecret_key_file = "session.key"\n[audit]\ndestination = "file:log/audit.log"\n'
    )
    s = load_settings(cfg)
    assert s.server.secret_key_file == str(tmp_path / "etc" / "session.key")
    assert s.audit.destination == f"file:{tmp_path / 'etc' / 'log' / 'audit.log'}"
    absolute = parse_settings({"audit": {"destination": "file:/var/log/a.log"}}, tmp_path)
    assert absolute.audit.destination == "file:/var/log/a.log"


def test_env_var_names_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text("[tokens]\ndefault_lifetime = 600\n")
    monkeypatch.setenv("SLURM_JWT_BRIDGE_CONFIG", str(cfg))
    assert load_settings().tokens.default_lifetime == 600


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tokens": {"max_lifetime": "soon"}}, "tokens.max_lifetime: must be an integer"),
        ({"tokens": {"default_lifetime": 10}}, "tokens.default_lifetime: must be >= 60"),
        (
            {"tokens": {"default_lifetime": 7200, "max_lifetime": 3600}},
            "tokens.default_lifetime: 7200 exceeds tokens.max_lifetime",
        ),
        ({"keys": {"default_alg": "none"}}, "keys.default_alg: must be one of RS256, HS256"),
        ({"keys": {"rsa_bits": 1024}}, "keys.rsa_bits: must be 2048, 3072 or 4096"),
        ({"keys": {"colour": "red"}}, "keys.colour: unknown setting"),
        ({"policy": {"deny_users": ["ok", "bad name"]}}, "policy.deny_users: 'bad name'"),
        ({"policy": {"min_uid": -1}}, "policy.min_uid: must be >= 0"),
        ({"audit": {"destination": "syslog"}}, "audit.destination: must be stdout"),
        ({"nonsense": 1}, "nonsense: unknown setting"),
        (
            {"issuers": [{"name": "a", "kind": "saml", "issuer": "https://x"}]},
            "issuers[0].kind: must be one of keycloak, cognito, entra, oidc",
        ),
        (
            {"issuers": [{"name": "a", "kind": "oidc", "issuer": "https://x"}]},
            "issuers[0].audiences: set audiences or allowed_clients",
        ),
        (
            {"issuers": [{"name": "a", "kind": "keycloak", "issuer": "https://kc/realms/x/"}]},
            "issuers[0].issuer: Keycloak's issuer is <base>/realms/<realm> without a trailing",
        ),
        ({"keys": {"min_next_age": -1}}, "keys.min_next_age: must be >= 0"),
        (
            {"mapping": {"rules": [{"claim": "sub", "regex": "^(.*)$"}]}},
            "mapping.rules[0].regex: needs a named group (?P<user>...)",
        ),
        (
            {"mapping": {"rules": [{"claim": "sub", "issuer": "nope"}]}},
            "mapping.rules[0].issuer: no [[issuers]] entry is named 'nope'",
        ),
    ],
)
def test_errors_are_one_line_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings(data)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[keys\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad)


def test_example_configs_parse() -> None:
    root = Path(__file__).resolve().parents[2]
    examples = sorted((root / "examples" / "config").glob("*.toml"))
    assert examples, "examples/config/*.toml are documented and must exist"
    for path in examples:
        load_settings(path)


def test_every_mistake_is_named_one_line_each() -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings(
            {
                "tokens": {"max_lifetime": "soon"},
                "keys": {"colour": "red"},
                "policy": {"min_uid": -1},
                "nonsense": 1,
            }
        )
    lines = str(info.value).splitlines()
    assert lines == [
        "tokens.max_lifetime: must be an integer, got 'soon'",
        "keys.colour: unknown setting",
        "policy.min_uid: must be >= 0, got -1",
        "nonsense: unknown setting",
    ]


def _issuer(**extra: object) -> dict:
    return {"name": "idp", "kind": "keycloak", "issuer": "https://kc.example/realms/hpc", **extra}


@pytest.mark.parametrize("name", ["12345", "0", "a" * 33, ".", ".."])
@pytest.mark.parametrize(
    ("where", "data"),
    [
        (
            "service_accounts[0].account",
            lambda n: {
                "issuers": [_issuer(allowed_clients=["svc"])],
                "service_accounts": [{"issuer": "idp", "client_id": "svc", "account": n}],
            },
        ),
        ("policy.slurm_user", lambda n: {"policy": {"slurm_user": n}}),
        ("policy.allow_users", lambda n: {"policy": {"allow_users": [n]}}),
        ("policy.deny_users", lambda n: {"policy": {"deny_users": [n]}}),
    ],
)
def test_a_user_name_the_policy_refuses_is_refused_at_load(name: str, where: str, data) -> None:
    """One user-name rule: a name no token can ever be minted for (all digits, which Slurm
    reads as a uid; longer than 32) does not load, instead of failing every mint later."""
    from slurm_jwt_bridge.policy import username_problem

    assert username_problem(name)
    with pytest.raises(SettingsError) as info:
        parse_settings(data(name))
    assert str(info.value).startswith(f"{where}: {name!r}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["alice", "a" * 32, "svc.portal", "_x", "a-b"])
def test_a_user_name_the_policy_takes_loads(name: str) -> None:
    s = parse_settings(
        {
            "issuers": [_issuer(allowed_clients=["svc"])],
            "service_accounts": [{"issuer": "idp", "client_id": "svc", "account": name}],
            "policy": {"allow_users": [name], "deny_users": ["mallory"]},
        }
    )
    assert s.service_accounts[0].account == name


@pytest.mark.parametrize(
    "issuer",
    [
        "https://kc.example/realms/hpc",
        "https://kc.example/auth/realms/hpc",
        "https://kc.example/realms/hpc/",
        "https://kc.example/realms/a b",
        "https://kc.example/realms/",
        "https://kc.example/hpc",
    ],
)
def test_introspection_issuer_shape_is_one_rule(issuer: str) -> None:
    """The configuration and the verifier accept the same Keycloak issuers for introspection."""
    from slurm_jwt_bridge.settings import IntrospectionSettings, IssuerSettings
    from slurm_jwt_bridge.upstream import UpstreamVerifier

    data = {"issuers": [_issuer(issuer=issuer, audiences=["bridge"])]}
    data["issuers"][0]["introspection"] = {"client_id": "bridge", "client_secret": "s"}
    try:
        parse_settings(data)
        loads = True
    except SettingsError:
        loads = False
    try:
        UpstreamVerifier(
            [
                IssuerSettings(
                    name="idp",
                    kind="keycloak",
                    issuer=issuer,
                    audiences=("bridge",),
                    introspection=IntrospectionSettings("bridge", "s"),
                )
            ]
        )
        verifies = True
    except ValueError:
        verifies = False
    assert loads == verifies
    assert loads == (
        issuer in ("https://kc.example/realms/hpc", "https://kc.example/auth/realms/hpc")
    )


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        (
            {
                "kind": "entra",
                "issuer": "https://login.microsoftonline.com/t/v2.0",
                "allowed_clients": ["portal"],
            },
            "issuers[0].audiences: issuer 'idp' (kind entra) accepts a token only when its aud "
            "is one of audiences",
        ),
        (
            {
                "kind": "cognito",
                "issuer": "https://cognito-idp.eu-west-1.amazonaws.com/pool",
                "audiences": ["app1"],
            },
            "issuers[0].allowed_clients: issuer 'idp' (kind cognito) accepts an access token only "
            "when its client_id is one of allowed_clients",
        ),
        (
            {
                "kind": "cognito",
                "issuer": "https://cognito-idp.eu-west-1.amazonaws.com/pool",
                "audiences": ["app1"],
                "token_use": ["access", "id"],
            },
            "issuers[0].allowed_clients: issuer 'idp' (kind cognito)",
        ),
    ],
)
def test_an_issuer_that_would_refuse_every_token_is_refused(issuer: dict, message: str) -> None:
    """Per-kind audience rules: a configuration under which every token (of a kind it says it
    accepts) would be refused does not load; the line names the issuer and what is missing."""
    with pytest.raises(SettingsError) as info:
        parse_settings({"issuers": [{"name": "idp", **issuer}]})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "issuer",
    [
        {
            "kind": "entra",
            "issuer": "https://login.microsoftonline.com/t/v2.0",
            "audiences": ["api://bridge"],
        },
        {
            "kind": "entra",
            "issuer": "https://login.microsoftonline.com/t/v2.0",
            "audiences": ["api://bridge"],
            "allowed_clients": ["portal"],
        },
        {
            "kind": "cognito",
            "issuer": "https://cognito-idp.eu-west-1.amazonaws.com/pool",
            "allowed_clients": ["app1"],
        },
        {
            "kind": "cognito",
            "issuer": "https://cognito-idp.eu-west-1.amazonaws.com/pool",
            "audiences": ["app1"],
            "token_use": ["id"],
        },
        {"kind": "keycloak", "issuer": "https://kc.example/realms/hpc", "allowed_clients": ["p"]},
        {"kind": "keycloak", "issuer": "https://kc.example/realms/hpc", "audiences": ["bridge"]},
        {"kind": "oidc", "issuer": "https://op.example", "audiences": ["bridge"]},
        {"kind": "oidc", "issuer": "https://op.example", "allowed_clients": ["portal"]},
    ],
)
def test_issuers_whose_audience_rule_can_accept_load(issuer: dict) -> None:
    parse_settings({"issuers": [{"name": "idp", **issuer}]})


def test_the_source_of_settings_is_not_kept() -> None:
    assert not hasattr(parse_settings({}), "source")
