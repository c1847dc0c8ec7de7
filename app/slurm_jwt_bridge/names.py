"""Names the configuration and the code that enforces it share: one spelling each.

A leaf module (it imports nothing of the package), so settings, policy, minting and the
verifier can all take their rule from here.
"""

from __future__ import annotations

import re

# The signing algorithms of the Slurm tokens the bridge mints (what slurmctld verifies).
RS256 = "RS256"
HS256 = "HS256"
SIGNING_ALGS = (RS256, HS256)

# Identity-provider kinds of an [[issuers]] entry.
KEYCLOAK = "keycloak"
COGNITO = "cognito"
ENTRA = "entra"
OIDC = "oidc"
ISSUER_KINDS = (KEYCLOAK, COGNITO, ENTRA, OIDC)

# A Keycloak realm's issuer, <base>/realms/<realm> (its tokens' iss has no trailing slash):
# the shape introspection needs to find the realm's endpoints.
KEYCLOAK_ISSUER_RE = re.compile(r"^(?P<base>https?://\S+?)/realms/(?P<realm>[^/\s]+)$")

# POSIX portable user names: the portable filename characters, not starting with '-'.
USERNAME_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$")


def username_problem(name: str) -> str | None:
    """Why ``name`` cannot be a cluster user name, or None when it is well-formed."""
    if not USERNAME_RE.fullmatch(name):
        shown = name.encode("unicode_escape").decode()[:64]
        return (
            f"{shown!r} is not a POSIX portable user name "
            "(letters, digits, '.', '_', '-'; at most 32; not starting with '-')"
        )
    if name.isdigit():
        # Slurm reads an all-digit name as a uid: "0" would be root.
        return f"{name!r} is all digits, which Slurm would read as a numeric uid"
    if name in (".", ".."):
        return f"{name!r} is not a user name"
    return None
