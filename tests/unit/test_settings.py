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
