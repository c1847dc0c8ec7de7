"""Drive real Slurm clusters with bridge-minted tokens: the bridge CLI, slurmrestd calls, jobs.

Why: every integration test that asks "does Slurm accept what the bridge mints?" needs the same
pieces: a cluster started with the bridge's own keys (the HS256 key file and the exported JWKS),
the real console script, slurmrestd requests with the right auth headers and job bodies for each
OpenAPI version, and the exact way each Slurm version refuses a token. They live here so the
foundation, proxy and exchange tests share one definition. Fixtures are in
tests/integration/conftest.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .slurm import SlurmCluster, start_cluster

VERSIONS = ("22.05", "24.11", "26.05")
CONFIG_ENV = "SLURM_JWT_BRIDGE_CONFIG"

# How slurmrestd answers a request whose token slurmctld refuses (bad signature, unknown kid,
# expired, unknown user): see /work/shared/SLURM-JWT.md, table "slurmrestd".
AUTH_FAILURE_STATUS = {"22.05": 500, "24.11": 511, "26.05": 511}
AUTH_FAILURE_ERROR = "Protocol authentication error"
AUTH_FAILURE_ERROR_NUMBER = 1007

_TOKEN_LINE = re.compile(r"SLURM_JWT=([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)\n")


# --------------------------------------------------------------------------------------------
# the bridge's console script


def bridge_executable() -> str:
    """The installed ``slurm-jwt-bridge`` console script of the interpreter running the tests."""
    candidate = Path(sys.executable).with_name("slurm-jwt-bridge")
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("slurm-jwt-bridge")
    if found is None:
        raise RuntimeError(
            "slurm-jwt-bridge console script not found next to "
            f"{sys.executable} nor on PATH (pip install -e .)"
        )
    return found


def bridge_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without a config file leaking in from outside."""
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    env.update(extra or {})
    return env


def bridge(
    *args: str | os.PathLike[str],
    check: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``slurm-jwt-bridge ARGS...`` (the real console script); stdout/stderr captured."""
    proc = subprocess.run(
        [bridge_executable(), *map(str, args)],
        capture_output=True,
        text=True,
        env=bridge_env(env),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"slurm-jwt-bridge {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def mint_cli(keys_dir: Path, user: str, *args: str | os.PathLike[str]) -> str:
    """``slurm-jwt-bridge mint USER --keys-dir D ARGS``; checks stdout is exactly one
    ``SLURM_JWT=<token>`` line (like scontrol token) and returns the token."""
    proc = bridge("mint", user, "--keys-dir", keys_dir, *args, check=True)
    m = _TOKEN_LINE.fullmatch(proc.stdout)
    assert m, f"mint printed {proc.stdout!r} (stderr {proc.stderr!r})"
    return m.group(1)


# --------------------------------------------------------------------------------------------
# a cluster that trusts one bridge keys directory


@dataclass
class BridgeCluster:
    """A running Slurm cluster whose jwt_key and jwks files came from ``keys_dir``."""

    cluster: SlurmCluster
    keys_dir: Path
    workdir: Path

    @property
    def version(self) -> str:
        return self.cluster.version

    @property
    def hs256_key(self) -> bytes:
        return (self.keys_dir / "jwt_hs256.key").read_bytes()

    def mint(self, user: str, *args: str | os.PathLike[str]) -> str:
        """A token for ``user`` from the real CLI with this cluster's keys dir."""
        return mint_cli(self.keys_dir, user, *args)

    def jwks_file_kids(self) -> list[str]:
        """kids in the cluster's JWKS file, in file order. What slurmctld has loaded may differ:
        it reads the file at start and (23.11+) at scontrol reconfigure only."""
        return [k["kid"] for k in json.loads(self.cluster.jwks_path.read_text())["keys"]]

    def stop(self) -> None:
        self.cluster.stop()


def start_bridge_cluster(
    version: str,
    workdir: Path,
    users: tuple[str, ...] = ("alice", "bob"),
    auth_alt_parameters: tuple[str, ...] = (),
    *,
    extra_jwks_keys: list[dict[str, Any]] | None = None,
) -> BridgeCluster:
    """``keys init`` and ``jwks export`` with the real CLI, then a cluster trusting them
    (``auth_alt_parameters``: more AuthAltParameters, e.g. ``use_jwt_client_ids_only``;
    ``extra_jwks_keys``: more keys in the same jwks file, e.g. an identity provider's)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    keys_dir = workdir / "keys"
    jwks_file = workdir / "jwks.json"
    bridge("keys", "init", "--keys-dir", keys_dir, check=True)
    bridge("jwks", "export", "--keys-dir", keys_dir, "--out", jwks_file, check=True)
    jwks_text = jwks_file.read_text()
    if extra_jwks_keys:
        jwks = json.loads(jwks_text)
        jwks_text = json.dumps({**jwks, "keys": [*jwks["keys"], *extra_jwks_keys]})
    cluster = start_cluster(
        version,
        workdir / "cluster",
        (keys_dir / "jwt_hs256.key").read_bytes(),
        jwks_text,
        users,
        auth_alt_parameters=auth_alt_parameters,
    )
    return BridgeCluster(cluster, keys_dir, workdir)


# --------------------------------------------------------------------------------------------
# the bridge's HTTP service (for `jwks sync --url`)


def jwks_serving_config(keys_dir: Path) -> str:
    """Config for tests/helpers/bridge.start_bridge (``{port}`` filled in there).

    ``[keys] reload_interval = 0`` makes the served JWKS follow ``keys rotate`` at once (the
    default checks the directory every 2 s, so a sync right after a rotation could miss it).
    """
    return (
        '[server]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f"[keys]\ndir = {json.dumps(str(keys_dir))}\nreload_interval = 0\n\n"
        '[audit]\ndestination = "none"\n'
    )


def jwks_sync(bc: BridgeCluster, server_url: str) -> subprocess.CompletedProcess[str]:
    """``slurm-jwt-bridge jwks sync --reconfigure`` as the controller's timer (or an operator)
    runs it against the bridge at ``server_url``; asserts it exited 0 (unchanged) or 3 (changed)."""
    reconfigure = shlex.join([*bc.cluster.scontrol_argv(), "reconfigure"])
    proc = bridge(
        "jwks",
        "sync",
        "--url",
        jwks_url(server_url),
        "--allow-http",  # the bridge runs on this host
        "--out",
        bc.cluster.jwks_path,
        "--reconfigure",
        "--reconfigure-command",
        reconfigure,
        env=bc.cluster.env,
    )
    assert proc.returncode in (0, 3), f"jwks sync failed: {proc.stdout}{proc.stderr}"
    return proc


def jwks_url(server_url: str) -> str:
    return f"{server_url.rstrip('/')}/.well-known/jwks.json"


# --------------------------------------------------------------------------------------------
# slurmrestd


def auth_headers(
    cluster: SlurmCluster, token: str, user: str | None = None, *, bearer: bool = False
) -> dict[str, str]:
    """slurmrestd auth headers: X-SLURM-USER-TOKEN (+ X-SLURM-USER-NAME when ``user``), or
    ``Authorization: Bearer`` (23.02+; 22.05 answers 401 to it). The header names are the
    same on every supported version; ``cluster`` keeps one signature for all helpers."""
    if bearer:
        headers = {"Authorization": f"Bearer {token}"}
    else:
        headers = {"X-SLURM-USER-TOKEN": token}
    if user is not None:
        headers["X-SLURM-USER-NAME"] = user
    return headers


def rest_url(cluster: SlurmCluster, path: str) -> str:
    """``/slurm/{api_version}/{path}`` on the cluster's slurmrestd."""
    return f"{cluster.restd_url}/slurm/{cluster.api_version}/{path.lstrip('/')}"


def _get_jobs_once(
    cluster: SlurmCluster, token: str, user: str | None, *, bearer: bool = False
) -> requests.Response:
    return requests.get(
        rest_url(cluster, "jobs"),
        headers=auth_headers(cluster, token, user, bearer=bearer),
        timeout=30,
    )


def get_jobs(
    cluster: SlurmCluster, token: str, user: str | None, *, bearer: bool = False
) -> requests.Response:
    """GET /slurm/{v}/jobs: needs slurmctld to accept the token (unlike /ping on 26.05).

    A connection closed without any answer is not an answer to the token: slurmrestd 22.05 reset
    one such GET in a full run under load (once in some 1,300 tests, never alone). The GET is sent
    once more after a reset; a second one fails with the daemons' log tails.
    """
    try:
        return _get_jobs_once(cluster, token, user, bearer=bearer)
    except requests.ConnectionError as first:
        print(f"GET jobs on Slurm {cluster.version}: {first!r}; sent once more", file=sys.stderr)
    try:
        return _get_jobs_once(cluster, token, user, bearer=bearer)
    except requests.ConnectionError as exc:
        raise AssertionError(f"GET jobs failed twice: {exc!r}\n{cluster.logs()}") from exc


def submit_body(api_version: str, script: str, out_path: str, name: str) -> dict[str, Any]:
    """job/submit body: v0.0.38 wants ``script`` at top level and environment as a dict;
    v0.0.40+ take ``job.script`` and environment as a list of NAME=value strings."""
    job: dict[str, Any] = {
        "name": name,
        "current_working_directory": "/tmp",
        "standard_output": out_path,
        "standard_error": out_path,
    }
    if api_version == "v0.0.38":
        job["environment"] = {"PATH": "/usr/bin:/bin"}
        return {"script": script, "job": job}
    job["environment"] = ["PATH=/usr/bin:/bin"]
    job["script"] = script
    return {"job": job}


def submit_job(
    cluster: SlurmCluster,
    token: str,
    user: str,
    script: str,
    *,
    out_path: str | None = None,
    name: str = "sjb-test",
) -> int:
    """POST job/submit through slurmrestd; returns the job id (AssertionError with the body if
    slurmrestd refuses). ``out_path`` is as the job sees it (see cluster.host_path)."""
    out_path = out_path or f"/tmp/sjb-{cluster.cluster_name}-{secrets.token_hex(4)}.out"
    r = requests.post(
        rest_url(cluster, "job/submit"),
        headers=auth_headers(cluster, token, user),
        json=submit_body(cluster.api_version, script, out_path, name),
        timeout=30,
    )
    assert r.status_code == 200, f"job/submit -> {r.status_code} {r.text[:800]}"
    data = r.json()
    assert data.get("job_id"), f"job/submit answered without a job id: {r.text[:800]}"
    return int(data["job_id"])


def run_whoami_job(
    cluster: SlurmCluster, token: str, user: str, timeout: float = 60
) -> tuple[str, str]:
    """Submit ``id -un`` with ``token`` as ``user``; return (final job state, its output)."""
    tag = f"{cluster.cluster_name}-{secrets.token_hex(4)}"
    result = f"/tmp/sjb-whoami-{tag}.txt"
    out = f"/tmp/sjb-whoami-{tag}.out"
    job_id = submit_job(cluster, token, user, f"#!/bin/bash\nid -un > {result}\n", out_path=out)
    try:
        state = cluster.wait_job(job_id, timeout=timeout)
        path = cluster.host_path(result)
        who = path.read_text().strip() if path.exists() else ""
        return state, who
    finally:
        for p in (result, out):
            cluster.host_path(p).unlink(missing_ok=True)


def auth_refusal_problem(cluster: SlurmCluster, resp: requests.Response) -> str | None:
    """Why ``resp`` is not this version's answer to a token slurmctld refused (None if it is).

    22.05: HTTP 500. 24.11 and 26.05: HTTP 511 with errors[] holding "Protocol authentication
    error", error_number 1007.
    """
    want = AUTH_FAILURE_STATUS[cluster.version]
    if resp.status_code != want:
        return f"expected HTTP {want}, got {resp.status_code}: {resp.text[:500]}"
    if cluster.version == "22.05":
        return None
    try:
        errors = resp.json().get("errors") or []
    except ValueError:
        return f"511 without a JSON body: {resp.text[:500]}"
    if not any(
        e.get("error") == AUTH_FAILURE_ERROR and e.get("error_number") == AUTH_FAILURE_ERROR_NUMBER
        for e in errors
    ):
        return f"511 without {AUTH_FAILURE_ERROR!r}/{AUTH_FAILURE_ERROR_NUMBER}: {errors}"
    return None


def wait_rest_accepts(
    cluster: SlurmCluster, token: str, user: str, timeout: float = 30
) -> requests.Response:
    """Poll GET /jobs with a token the controller accepts until it answers 200.

    After a ``scontrol reconfigure`` run outside SlurmCluster.reconfigure() (e.g. by
    ``jwks sync --reconfigure``), 26.05's slurmctld re-execs and is briefly unreachable.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = _get_jobs_once(cluster, token, user)  # polls: a reset is one more try
            if r.status_code == 200:
                return r
            last = f"{r.status_code} {r.text[:300]}"
        except requests.RequestException as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"slurmrestd not answering 200 after {timeout}s: {last}")
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# JWT bytes


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_parts(token: str) -> tuple[bytes, bytes]:
    """(header JSON bytes, payload JSON bytes) exactly as encoded in the token."""
    header, payload, _sig = token.split(".")
    return b64url_decode(header), b64url_decode(payload)


def ordered_claims(token: str) -> list[tuple[str, Any]]:
    """The payload's (name, value) pairs in the order they appear in the token."""
    pairs: list[tuple[str, Any]] = json.loads(jwt_parts(token)[1], object_pairs_hook=list)
    return pairs


def whoami_via(
    cluster: SlurmCluster, base_url: str, headers: dict[str, str], timeout: float = 90.0
) -> tuple[str, str]:
    """Submit ``id -un`` to ``base_url``/slurm/... (a proxy in front of the cluster's slurmrestd)
    with ``headers``; return (final job state, the script's output)."""
    tag = f"{cluster.cluster_name}-{secrets.token_hex(4)}"
    result = f"/tmp/sjb-proxy-whoami-{tag}.txt"
    out = f"/tmp/sjb-proxy-whoami-{tag}.out"
    body = submit_body(cluster.api_version, f"#!/bin/bash\nid -un > {result}\n", out, "whoami")
    r = requests.post(
        f"{base_url}/slurm/{cluster.api_version}/job/submit", headers=headers, json=body, timeout=60
    )
    assert r.status_code == 200, f"job/submit -> {r.status_code} {r.text[:800]}"
    job_id = int(r.json()["job_id"])
    try:
        state = cluster.wait_job(job_id, timeout=timeout)
        path = cluster.host_path(result)
        return state, path.read_text().strip() if path.exists() else ""
    finally:
        for p in (result, out):
            cluster.host_path(p).unlink(missing_ok=True)


def proxy_bridge_config(
    idp: Any,
    keys_dir: Path,
    upstream: str,
    proxy_extra: str = "",
    *,
    issuers_extra: str = "",
    rule_extra: str = "",
) -> str:
    """A bridge with one oidc-provider issuer and the proxy to ``upstream`` (``{port}`` left to
    start_bridge). ``issuers_extra``: more ``[[issuers]]`` tables; ``rule_extra``: more keys of
    the preferred_username mapping rule (e.g. ``lowercase = true``)."""
    return f"""
[server]
host = "127.0.0.1"
port = {{port}}

[keys]
dir = {json.dumps(str(keys_dir))}
reload_interval = 0

[audit]
destination = "stderr"

[browser]
enabled = false

[[issuers]]
name = "op"
kind = "oidc"
issuer = {json.dumps(idp.issuer)}
audiences = [{json.dumps(idp.resource)}]
{issuers_extra}
[[mapping.rules]]
claim = "preferred_username"
{rule_extra}

[proxy]
upstream = {json.dumps(upstream)}
{proxy_extra}
"""
