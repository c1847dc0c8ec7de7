"""Bridge settings for in-process proxy tests: one issuer, mapping on preferred_username, an
audit file, and the given ``[proxy]`` table; ``browser_proxy_settings_data`` adds browser login
(the issuer becomes a login issuer) behind ``public_url``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers.issuers import bridge_data, oidc_issuer


def proxy_settings_data(
    keys_dir: Path, tmp_path: Path, idp: Any, proxy: dict[str, Any] | None
) -> dict[str, Any]:
    data = bridge_data(keys_dir, [oidc_issuer(idp)], audit=f"file:{tmp_path / 'audit.log'}")
    if proxy is not None:
        data["proxy"] = proxy
    return data


def browser_proxy_settings_data(
    keys_dir: Path, tmp_path: Path, idp: Any, proxy: dict[str, Any], public_url: str
) -> dict[str, Any]:
    """``proxy_settings_data`` with browser login on (plain-http cookies) at ``public_url``."""
    data = proxy_settings_data(keys_dir, tmp_path, idp, proxy)
    data["server"] = {"public_url": public_url}
    data["browser"] = {"enabled": True, "secure_cookies": False}
    data["issuers"][0].update(client_id="bridge", token_use=["access", "id"])
    return data
