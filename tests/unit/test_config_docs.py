"""docs/configuration.md's key tables and `config schema` say what the settings declare."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from click.testing import CliRunner

from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.settings import json_schema, parse_settings

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_md_is_generated_from_the_schema() -> None:
    """Every table of the schema has its generated table in the docs, and each is current: a
    key added, renamed or given a new default without the docs fails here."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-config-docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def _documented_keys(text: str) -> set[str]:
    keys = set()
    section = ""
    for line in text.splitlines():
        if line.startswith("<!-- config-keys "):
            section = line.split()[2]
        elif line.startswith("| `") and section:
            keys.add(f"{section}.{line.split('`')[1]}")
        elif line.startswith("<!-- /config-keys"):
            section = ""
    return keys


def _schema_keys(schema: dict, path: str = "") -> set[str]:
    keys = set()
    for name, prop in schema["properties"].items():
        sub = f"{path}.{name}" if path else name
        keys.add(sub)
        while prop.get("type") == "array" and "properties" in prop.get("items", {}):
            prop = prop["items"]
        if prop.get("type") == "object" and "properties" in prop:
            keys |= _schema_keys(prop, sub)
    return keys


def test_every_key_is_documented_and_every_documented_key_exists() -> None:
    documented = _documented_keys((ROOT / "docs" / "configuration.md").read_text())
    sections = {k for k in _schema_keys(json_schema()) if "." not in k}
    leaves = {k for k in _schema_keys(json_schema()) if "." in k} | {"delegation.actors"}
    assert documented - leaves == set()
    assert {k for k in leaves if k != "delegation.actors"} - documented == set()
    assert sections == {k.split(".")[0] for k in documented}


def test_config_schema_prints_the_schema() -> None:
    result = CliRunner().invoke(main, ["config", "schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema == json.loads(json.dumps(json_schema()))
    assert schema["additionalProperties"] is False
    max_lifetime = schema["properties"]["tokens"]["properties"]["max_lifetime"]
    assert (max_lifetime["type"], max_lifetime["default"], max_lifetime["minimum"]) == (
        "integer",
        3600,
        60,
    )
    kinds = schema["properties"]["issuers"]["items"]["properties"]["kind"]["enum"]
    assert kinds == ["keycloak", "cognito", "entra", "oidc"]


def test_schema_defaults_are_the_defaults_the_service_uses() -> None:
    """The default each key documents is the one a file without it gets."""
    loaded = parse_settings({}, Path("/base"))
    schema = json_schema()
    for section, table in schema["properties"].items():
        if table.get("type") != "object" or section == "delegation":
            continue
        for key, prop in table["properties"].items():
            if "default" not in prop or key in ("dir", "session_dir"):
                continue
            value = getattr(getattr(loaded, section), key)
            if isinstance(value, tuple):
                value = list(value)
            assert value == prop["default"], f"{section}.{key}"


def test_every_example_config_is_valid_against_the_schema() -> None:
    """What editors and CI check a file with: the shipped examples pass, a mistake does not."""
    import jsonschema_rs  # schemathesis's JSON Schema validator (the test extra)

    validator = jsonschema_rs.Draft202012Validator(json_schema())
    examples = sorted((ROOT / "examples" / "config").glob("*.toml"))
    assert examples
    for path in examples:
        errors = [e.message for e in validator.iter_errors(tomllib.loads(path.read_text()))]
        assert errors == [], path.name
    for wrong in (
        {"tokens": {"max_lifetime": "soon"}},
        {"tokens": {"max_lifetime": 10}},
        {"keys": {"colour": "red"}},
        {"issuers": [{"name": "a", "kind": "saml", "issuer": "https://x"}]},
        {"issuers": [{"name": "a", "kind": "oidc"}]},
        {"delegation": {"actors": [{"issuer": "a"}]}},
    ):
        assert not validator.is_valid(wrong), wrong


def test_config_check_names_every_mistake_one_line_each(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('[tokens]\nmax_lifetime = "soon"\n[keys]\ncolour = "red"\n')
    result = CliRunner().invoke(main, ["config", "check", "--config", str(config)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "slurm-jwt-bridge: error: tokens.max_lifetime: must be an integer, got 'soon'",
        "slurm-jwt-bridge: error: keys.colour: unknown setting",
    ]
