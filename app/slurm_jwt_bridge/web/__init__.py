"""Flask blueprints: the doors of the service."""

from __future__ import annotations

from typing import TypeVar

from flask import current_app

from .. import Bridge

__all__ = ["current_bridge", "extension"]

_T = TypeVar("_T")


def extension(name: str, kind: type[_T]) -> _T:
    """``current_app.extensions[name]``, as the ``kind`` the app factory put there."""
    value = current_app.extensions[name]
    if not isinstance(value, kind):
        raise TypeError(f"app.extensions[{name!r}] is a {type(value).__name__}, not a {kind}")
    return value


def current_bridge() -> Bridge:
    """The app's settings, keys and pipeline (``create_app`` builds them once)."""
    return extension("slurm_jwt_bridge", Bridge)
