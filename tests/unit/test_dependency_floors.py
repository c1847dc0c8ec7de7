"""The declared dependency ranges admit no release with a published advisory we know of, and
the installed set (what the tests ran against) is inside them. `make audit` checks the
installed set against PyPI's advisory data; this keeps the floors from sliding back."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
# First release past each advisory (the newest fix we require).
FIXED = {
    "authlib": "1.6.9",
    "gunicorn": "23.0.0",  # HTTP request smuggling, CVE-2024-6827
    "urllib3": "2.6.3",  # CVE-2025-66418, CVE-2025-66471, CVE-2026-21441
    "cryptography": "46.0.5",  # CVE-2026-26007
}


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_floor_excludes_every_release_before_the_fix(name: str) -> None:
    req = requirements()[name]
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", ">", "==")]
    assert floors, f"{name} has no lower bound"
    assert max(floors) >= Version(FIXED[name]), f"{req} admits releases before {FIXED[name]}"


@pytest.mark.parametrize("name", sorted(FIXED))
def test_installed_release_is_inside_the_range(name: str) -> None:
    assert Version(metadata.version(name)) in requirements()[name].specifier
