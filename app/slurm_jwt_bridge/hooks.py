"""The optional hooks the pipeline and the proxy call, as the types they expect.

``metrics.Metrics`` implements both observers; ``ratelimit.SubjectLimiter`` is the subject
limit. Each is optional: ``None`` means the hook is not called.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["DecisionObserver", "ProxyObserver", "SubjectLimit"]


class DecisionObserver(Protocol):
    """Told of every pipeline decision, minted or refused, with its audit fields."""

    def minted(self, fields: dict[str, Any], seconds: float) -> None: ...

    def refused(self, reason: str, fields: dict[str, Any], seconds: float) -> None: ...


class ProxyObserver(Protocol):
    """Told of every answer the proxy relays and every answer to nginx's auth_request."""

    def proxied(self, status: int, seconds: float) -> None: ...

    def auth_answered(self, status: int) -> None: ...


class SubjectLimit(Protocol):
    """Called with the verified (issuer name, subject); raises BridgeError (429) when over."""

    def __call__(self, issuer: str, subject: str) -> None: ...
