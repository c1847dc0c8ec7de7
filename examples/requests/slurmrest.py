"""What every example here shares: where the bridge is, your identity-provider token, and the
few places where slurmrestd's OpenAPI versions differ.

Environment:
    BRIDGE_URL         the bridge (its proxy serves /slurm/...), e.g. https://slurm.example.org
    IDP_TOKEN          an access token from your identity provider: NOT a Slurm token
    SLURM_API_VERSION  slurmrestd's OpenAPI version, default v0.0.44 (Slurm 22.05: v0.0.38)

The bridge checks IDP_TOKEN, maps it to your cluster account and forwards the request to
slurmrestd with a short-lived Slurm token for that account; you never handle a Slurm token.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import requests

BRIDGE_URL = os.environ.get("BRIDGE_URL", "http://127.0.0.1:8000").rstrip("/")
API_VERSION = os.environ.get("SLURM_API_VERSION", "v0.0.44")
OLD_API = API_VERSION in ("v0.0.36", "v0.0.37", "v0.0.38", "v0.0.39")

DEFAULT_ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


def _session() -> requests.Session:
    token = os.environ.get("IDP_TOKEN", "")
    if not token:
        sys.exit("set IDP_TOKEN to an access token from your identity provider")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


_SESSION: requests.Session | None = None


def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """``method`` /slurm/{SLURM_API_VERSION}/``path`` through the bridge; the JSON answer.

    Exits with a readable message on any HTTP status but 200: the bridge's own refusals are
    ``{"error", "error_description"}``, slurmrestd's are ``{"errors": [...]}``.
    """
    global _SESSION
    _SESSION = _SESSION or _session()
    url = f"{BRIDGE_URL}/slurm/{API_VERSION}/{path}"
    response = _SESSION.request(method, url, timeout=60, **kwargs)
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        sys.exit(f"{method} {url}: HTTP {response.status_code}: {describe(body) or response.text}")
    for warning in body.get("warnings") or []:
        print(f"slurmrestd: {warning.get('description')}", file=sys.stderr)
    return body


def describe(body: Any) -> str:
    """One line from an error answer of the bridge or of slurmrestd."""
    if not isinstance(body, dict):
        return ""
    if "error" in body:
        return f"{body['error']}: {body.get('error_description', '')}"
    return "; ".join(
        str(e.get("description") or e.get("error") or e) for e in body.get("errors") or []
    )


def job_description(**fields: Any) -> dict[str, Any]:
    """A job description (sbatch options) with what every job needs: a working directory and
    an environment (v0.0.38 takes a dict, later versions a list of NAME=value strings)."""
    job: dict[str, Any] = {"current_working_directory": "/tmp", **fields}
    if OLD_API:
        job["environment"] = DEFAULT_ENVIRONMENT
    else:
        job["environment"] = [f"{k}={v}" for k, v in DEFAULT_ENVIRONMENT.items()]
    return job


def submit(
    script: str, job: dict[str, Any] | None = None, jobs: list[dict[str, Any]] | None = None
) -> int:
    """POST job/submit: ``job`` for one job (or array), ``jobs`` for a heterogeneous job.

    The batch script goes at the top level, which every version accepts (v0.0.40 and later
    also take it as ``job.script`` / ``jobs[0].script``). Returns the job id.
    """
    body: dict[str, Any] = {"script": script}
    if jobs is not None:
        body["jobs"] = jobs
    else:
        body["job"] = job or job_description()
    answer = call("POST", "job/submit", json=body)
    if not answer.get("job_id"):
        sys.exit(f"job/submit: no job id: {describe(answer)}")
    # A held job is created but v0.0.38 still lists "Job is in held state" under errors.
    for error in answer.get("errors") or []:
        print(f"slurmrestd: {error.get('error') or error.get('description')}", file=sys.stderr)
    return int(answer["job_id"])


def state(job: dict[str, Any]) -> str:
    """A job's state: a string in v0.0.38, a list of flags (["PENDING"]) from v0.0.40 on."""
    value = job.get("job_state")
    return "+".join(value) if isinstance(value, list) else str(value)


def number(value: Any) -> int:
    """An integer field: plain in v0.0.38, ``{"set", "infinite", "number"}`` from v0.0.40 on."""
    if isinstance(value, dict):
        return int(value.get("number") or 0) if value.get("set") else 0
    return int(value or 0)
