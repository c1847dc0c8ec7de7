"""Whom outbound HTTPS trusts: the system's certificate store, or one CA file.

Every request the bridge and its CLI make to an identity provider or to a bridge (OIDC discovery,
JWKS, introspection, token exchange and revocation, ``jwks sync``, ``keys rotate --jwks-url``,
``login``, ``keycloak setup``) verifies the server's certificate against:

- by default, the system store: OpenSSL's default locations, where the distribution's CA
  certificates and a site's own CA live (``update-ca-certificates`` on Debian,
  ``update-ca-trust`` on RHEL); ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` replace them as OpenSSL
  documents. Not certifi's bundle, which holds only the public web's authorities.
- with a ``ca_file`` (``[[issuers]] ca_file``, ``--ca-file``): that file's certificates only.

The standard library does this on Linux (``ssl.create_default_context()`` reads the OpenSSL
store), so no package is added; httpx takes the context as it is. python-keycloak and authlib
send through requests, which takes a file or directory path, not a context:
``requests_verify`` names the same store for them.

No client follows a redirect: a 3xx is a failure, never a second request carrying a client
secret, a password or a user's token to wherever the answer pointed (plain http included).
requests is also kept from the environment (``trust_env`` off): ``REQUESTS_CA_BUNDLE`` and
``CURL_CA_BUNDLE`` would replace ``ca_file`` or the system store, and ``*_proxy`` variables
would route the request elsewhere; ``requests_options`` says so for authlib (its
``client_kwargs``), ``lock_down`` applies it to a session python-keycloak made.
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

__all__ = [
    "TrustError",
    "http_client",
    "lock_down",
    "requests_options",
    "requests_verify",
    "trust",
]

USER_AGENT = "slurm-jwt-bridge"


class TrustError(ValueError):
    """A CA file that cannot be used; the message is one line naming the file."""


def trust(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client context verifying certificates and host names against the system store, or
    against ``ca_file`` alone when given."""
    if ca_file is None or str(ca_file) == "":
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    except FileNotFoundError:
        raise TrustError(f"{ca_file}: CA file not found") from None
    except ssl.SSLError:  # an OSError too: first
        raise TrustError(f"{ca_file}: holds no PEM CA certificate") from None
    except OSError as exc:
        raise TrustError(f"{ca_file}: cannot read CA file: {exc.strerror or exc}") from None


def requests_verify(ca_file: str | os.PathLike[str] | None = None) -> str | bool:
    """``verify`` for requests-based clients: ``ca_file``, else the system store's file (or its
    directory), honouring ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` as OpenSSL does."""
    if ca_file is not None and str(ca_file) != "":
        trust(ca_file)  # the same one-line refusal as everywhere else
        return os.fspath(ca_file)
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.capath):
        if path and os.path.exists(path):
            return path
    return True


def requests_options(ca_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A requests session's settings: ``ca_file`` or the system store, nothing from the
    environment, no redirect followed (requests raises ``TooManyRedirects`` at the first)."""
    return {"verify": requests_verify(ca_file), "trust_env": False, "max_redirects": 0}


def lock_down(session: Any, ca_file: str | os.PathLike[str] | None = None) -> Any:
    """Apply ``requests_options`` to a ``requests.Session`` (python-keycloak's ``_s``); anything
    else is refused rather than left following redirects."""
    import requests

    if not isinstance(session, requests.Session):
        raise TypeError(f"expected a requests.Session, got {type(session).__name__}")
    for name, value in requests_options(ca_file).items():
        setattr(session, name, value)
    return session


def http_client(
    ca_file: str | os.PathLike[str] | None = None,
    *,
    timeout: float | None = None,
    **kwargs: Any,
) -> httpx.Client:
    """An httpx client trusting the system store (or ``ca_file``), never following redirects."""
    import httpx  # imported late: the settings check CA files without loading httpx

    headers = {"User-Agent": USER_AGENT, **kwargs.pop("headers", {})}
    return httpx.Client(
        verify=trust(ca_file),
        timeout=timeout if timeout is not None else httpx.Timeout(5.0),
        headers=headers,
        follow_redirects=kwargs.pop("follow_redirects", False),
        **kwargs,
    )
