"""Shared fixtures. Integration fixtures that start real daemons live in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slurm_jwt_bridge.keys import init_keys
from slurm_jwt_bridge.settings import Settings, parse_settings

# In CI every test must run: a fixture that would skip fails instead.
REQUIRE_ALL = (
    os.environ.get("CI") == "true" or os.environ.get("SLURM_JWT_BRIDGE_REQUIRE_ALL") == "1"
)


def skip_or_fail(reason: str) -> None:
    """Skip with a visible reason on a developer machine; fail in CI."""
    if REQUIRE_ALL:
        pytest.fail(f"required component unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    init_keys(d)
    return d


@pytest.fixture
def settings(keys_dir: Path) -> Settings:
    return parse_settings(
        {"keys": {"dir": str(keys_dir)}, "audit": {"destination": "none"}}, keys_dir.parent
    )
