"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.stub_http import StubServer
from tests.helpers.test_issuer import TestIssuer


@pytest.fixture
def idp() -> Iterator[Any]:
    """A local HTTP issuer at ``/oidc`` (discovery, JWKS) minting RS256 tokens; test modules
    that need another shape define their own ``idp``."""
    server = TestIssuer().start()
    handle = server.add_issuer("/oidc")
    yield handle
    server.stop()


@pytest.fixture
def upstream(request: pytest.FixtureRequest) -> Iterator[StubServer]:
    """A recording stand-in for slurmrestd answering every request with the test module's
    ``UPSTREAM_BODY`` (default: an empty job list) and ``UPSTREAM_HEADERS`` (default: none)."""
    server = StubServer(
        getattr(request.module, "UPSTREAM_BODY", b'{"jobs": []}'),
        extra_headers=getattr(request.module, "UPSTREAM_HEADERS", ()),
    )
    yield server
    server.close()
