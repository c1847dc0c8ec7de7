"""The typed client of these examples, pointed at the bridge with your identity-provider token.

Environment:
    BRIDGE_URL             the bridge (its proxy serves /slurm/...), e.g. https://slurm.example.org
    IDP_TOKEN              an access token from your identity provider: NOT a Slurm token
    SLURM_API_VERSION      must be v0.0.44 here: the scripts use the typed v0.0.44 endpoints
    SLURMRESTD_CLIENT_DIR  where generate.sh wrote slurmrestd_client (default: ./generated)

``AuthenticatedClient(token=...)`` sends ``Authorization: Bearer <token>``, which is exactly what
the bridge wants; the bridge swaps it for a Slurm token of your own cluster account.

Two adjustments for slurmrestd's answers, both here rather than in the generated code:
- slurmrestd writes ``null`` for some absent values (e.g. ``job_resources`` of a pending job,
  ``results`` of a job update) where its schema promises an object or a list; the generated
  parsers expect the key to be missing instead, so nulls are dropped before parsing;
- an answer other than 200 (a refusal of the bridge, an error of slurmrestd) ends the script with
  a readable message instead of a parse error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

API_VERSION = os.environ.get("SLURM_API_VERSION", "v0.0.44")
if API_VERSION != "v0.0.44":
    sys.exit(
        f"SLURM_API_VERSION={API_VERSION}: these scripts use the generated v0.0.44 endpoints; "
        "for another version import its slurm_v00XX_* modules instead"
    )

_generated = Path(os.environ.get("SLURMRESTD_CLIENT_DIR") or Path(__file__).parent / "generated")
sys.path.insert(0, str(_generated))
try:
    from slurmrestd_client import AuthenticatedClient
except ImportError:
    sys.exit(f"no slurmrestd_client in {_generated}: run generate.sh first")


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value if v is not None]
    return value


def _describe(body: Any) -> str:
    if isinstance(body, dict) and "error" in body:  # the bridge: {"error", "error_description"}
        return f"{body['error']}: {body.get('error_description', '')}"
    if isinstance(body, dict):  # slurmrestd: {"errors": [{"description", "error", ...}]}
        return "; ".join(
            str(e.get("description") or e.get("error")) for e in body.get("errors") or []
        )
    return ""


class SlurmrestdTransport(httpx.HTTPTransport):
    """Exit on non-200 answers; drop JSON nulls so the generated models can parse the rest."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if response.status_code != 200:
            sys.exit(
                f"{request.method} {request.url}: HTTP {response.status_code}: "
                f"{_describe(body) or response.text}"
            )
        if body is None:
            return response
        headers = [
            (k, v)
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
        ]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=json.dumps(_drop_nulls(body)).encode(),
            request=request,
        )


def bridge() -> AuthenticatedClient:
    """The generated client for the bridge at BRIDGE_URL, authenticated with IDP_TOKEN."""
    token = os.environ.get("IDP_TOKEN", "")
    if not token:
        sys.exit("set IDP_TOKEN to an access token from your identity provider")
    return AuthenticatedClient(
        base_url=os.environ.get("BRIDGE_URL", "http://127.0.0.1:8000").rstrip("/"),
        token=token,
        timeout=httpx.Timeout(60.0),
        httpx_args={"transport": SlurmrestdTransport()},
    )


def report(answer: Any) -> None:
    """Print slurmrestd's warnings (and non-fatal errors) of a parsed answer to stderr."""
    for item in [*(answer.warnings or []), *(answer.errors or [])]:
        print(f"slurmrestd: {item.description or getattr(item, 'error', '')}", file=sys.stderr)
