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


def _locked(name: str) -> dict[str, list[tuple[Requirement, list[str]]]]:
    """A lock file: each pin (with its marker) and its hashes, by package name."""
    pins: dict[str, list[tuple[Requirement, list[str]]]] = {}
    current: list[str] = []
    for line in (REPO / name).read_text().splitlines():
        text = line.split("#", 1)[0].strip().removesuffix("\\").strip()
        if not text:
            continue
        if text.startswith("--hash="):
            current.append(text.removeprefix("--hash="))
            continue
        req, current = Requirement(text), []
        pins.setdefault(req.name.lower(), []).append((req, current))
    return pins


def _pin_here(pins: dict[str, list[tuple[Requirement, list[str]]]], name: str) -> Requirement:
    """The one pin of ``name`` whose marker holds on this interpreter, with hashes."""
    found = [(p, h) for p, h in pins.get(name, []) if p.marker is None or p.marker.evaluate()]
    assert len(found) == 1, f"{len(found)} pins for {name} apply here"
    pin, hashes = found[0]
    assert hashes and all(h.startswith("sha256:") for h in hashes), f"{pin} has no hashes"
    (spec,) = pin.specifier
    assert spec.operator == "==", f"{pin} is no exact pin"
    return pin


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("requirements.lock", ("test", "redis")), ("requirements-deploy.lock", ("redis",))],
)
def test_lock_pins_every_declared_requirement_inside_its_range(
    lock: str, extras: tuple[str, ...]
) -> None:
    """make and CI install requirements.lock, a site requirements-deploy.lock (`make lock`
    writes both): each holds a hashed pin inside the declared range for every dependency of
    the service and of its extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    pins = _locked(lock)
    for text in declared:
        want = Requirement(text)
        pin = _pin_here(pins, want.name.lower())
        assert Version(next(iter(pin.specifier)).version) in want.specifier, f"{pin} not {want}"


def test_deploy_lock_has_the_versions_the_suite_ran_with() -> None:
    full, deploy = _locked("requirements.lock"), _locked("requirements-deploy.lock")
    for name, pins in deploy.items():
        for pin, hashes in pins:
            assert (str(pin), hashes) in [(str(p), h) for p, h in full.get(name, [])], pin
