"""Text and URLs that come from elsewhere (an identity provider, a bridge, a network answer)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

# C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def printable(value: Any, limit: int = 200) -> str:
    """``value`` as one line fit for a terminal or a log: controls escaped, at most ``limit``."""
    text = str(value)[:limit]
    return _CONTROL.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (localhost, 127.0.0.0/8, ::1)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_url(url: str) -> bool:
    """A plain-http URL to another machine: anyone on the path can read or change the answer."""
    return url.lower().startswith("http://") and not is_loopback_url(url)


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port filled in; raises ValueError if malformed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port
