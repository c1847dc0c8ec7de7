"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.test_issuer import TestIssuer


@pytest.fixture
def idp() -> Iterator[Any]:
    """A local HTTP issuer at ``/oidc`` (discovery, JWKS) minting RS256 tokens; test modules
    that need another shape define their own ``idp``."""
    server = TestIssuer().start()
    handle = server.add_issuer("/oidc")
    yield handle
    server.stop()
