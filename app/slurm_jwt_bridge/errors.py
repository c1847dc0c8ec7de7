"""The one error type every door turns into its own answer (JSON, page, exit code)."""

from __future__ import annotations


class BridgeError(Exception):
    """A refusal: an OAuth 2.0 error code, a reason a person can act on, an HTTP status.

    ``reason`` never contains a secret or a whole token.
    """

    def __init__(self, error: str, reason: str, status: int = 400, *, metric: str = "") -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.status = status
        # A short stable label for metrics and audit ("denied_user", "expired", ...).
        self.metric = metric or error
        # Seconds a client should wait (429, 503): sent as Retry-After.
        self.retry_after: int | None = None

    def oauth_body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.reason}

    def with_status(self, status: int) -> BridgeError:
        """The same refusal answered with another HTTP status (a door's own convention)."""
        copy = BridgeError(self.error, self.reason, status, metric=self.metric)
        copy.retry_after = self.retry_after
        return copy

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401 (RFC 6750 section 3), the same at every
        door: the reason travels in the challenge too, so it survives a front proxy (nginx
        auth_request) that answers with its own body but passes this header on."""
        return (
            f'Bearer realm="slurm-jwt-bridge", error="{quotable(self.error)}", '
            f'error_description="{quotable(self.reason)}"'
        )


def quotable(text: str, limit: int = 300) -> str:
    """``text`` as an RFC 6750 quoted value: printable ASCII without ``"`` and ``\\``."""
    out = "".join(
        c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?" for c in text
    )
    return out[:limit]


def invalid_request(reason: str, metric: str = "invalid_request") -> BridgeError:
    return BridgeError("invalid_request", reason, 400, metric=metric)


def invalid_grant(reason: str, metric: str = "invalid_grant") -> BridgeError:
    return BridgeError("invalid_grant", reason, 400, metric=metric)


def access_denied(reason: str, metric: str = "access_denied") -> BridgeError:
    return BridgeError("access_denied", reason, 403, metric=metric)


def unauthorized_client(reason: str, metric: str = "unauthorized_client") -> BridgeError:
    return BridgeError("unauthorized_client", reason, 400, metric=metric)


def malformed_body(exc: Exception) -> BridgeError:
    """A request body the WSGI server could not read as framed (gunicorn raises its own parse
    errors from the body stream for a bad chunk): a 400, never a 500."""
    return BridgeError(
        "invalid_request",
        f"the request body is malformed ({type(exc).__name__})",
        400,
        metric="malformed_body",
    )
