"""Bridge settings for in-process proxy tests: one issuer, mapping on preferred_username, an
audit file, and the given ``[proxy]`` table."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def proxy_settings_data(
    keys_dir: Path, tmp_path: Path, idp: Any, proxy: dict[str, Any] | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "keys": {"dir": str(keys_dir)},
        "audit": {"destination": f"file:{tmp_path / 'audit.log'}"},
        "browser": {"enabled": False},
        "issuers": [
            {"name": "oidc", "kind": "oidc", "issuer": idp.issuer, "audiences": ["bridge"]}
        ],
        "mapping": {"require_local_account": False, "rules": [{"claim": "preferred_username"}]},
    }
    if proxy is not None:
        data["proxy"] = proxy
    return data
