"""Prove tests/helpers/slurm.py against real daemons: `python -m tests.helpers.slurm_selfcheck`.

Why: the integration tests trust these clusters to judge the bridge's tokens, so the helper itself
is checked end to end: both Slurm versions at once, HS256 and RS256 tokens through slurmrestd, a
REST job submission that really runs as alice, JWKS reload (reconfigure on 26.05, restart on 22.05)
and a clean stop. Needs root, PyJWT, cryptography and requests.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.helpers.slurm import SlurmCluster, start_cluster

USER = "alice"


def _b64uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return jwt.utils.base64url_encode(raw).decode()


def make_jwks(keys: dict[str, rsa.RSAPrivateKey]) -> str:
    """A JWKS as Slurm wants it: kty RSA, alg RS256, kid, n, e (use is ignored)."""
    out = []
    for kid, key in keys.items():
        pub = key.public_key().public_numbers()
        out.append(
            {
                "kty": "RSA",
                "alg": "RS256",
                "use": "sig",
                "kid": kid,
                "n": _b64uint(pub.n),
                "e": _b64uint(pub.e),
            }
        )
    return json.dumps({"keys": out})


def hs256_token(key: bytes, user: str, lifespan: int = 300) -> str:
    now = int(time.time())
    return jwt.encode(
        {"exp": now + lifespan, "iat": now, "sun": user},
        key,
        algorithm="HS256",
        headers={"typ": "JWT"},
    )


def rs256_token(key: rsa.RSAPrivateKey, kid: str, user: str, lifespan: int = 300) -> str:
    now = int(time.time())
    return jwt.encode(
        {"exp": now + lifespan, "iat": now, "sun": user},
        key,
        algorithm="RS256",
        headers={"kid": kid, "typ": "JWT"},
    )


def get_jobs(cluster: SlurmCluster, token: str, user: str = USER) -> requests.Response:
    return requests.get(
        f"{cluster.restd_url}/slurm/{cluster.api_version}/jobs",
        headers={"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token},
        timeout=30,
    )


def submit_body(api_version: str, script: str, out_path: str) -> dict[str, Any]:
    """Job submission body: v0.0.38 wants script at top level and environment as a dict;
    v0.0.40+ take job.script and environment as a list of NAME=value strings."""
    job: dict[str, Any] = {
        "name": "sjb-selfcheck",
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


def check(cond: bool, what: str, detail: object = "") -> None:
    if not cond:
        raise AssertionError(f"{what}: {detail}")


def check_cluster(cluster: SlurmCluster, hs_key: bytes, rsa_keys: dict[str, Any]) -> list[str]:
    lines = [
        f"Slurm {cluster.slurm_full_version} ({cluster.cluster_name}) {cluster.restd_url} "
        f"api {cluster.api_version}"
    ]
    r = get_jobs(cluster, hs256_token(hs_key, USER))
    check(r.status_code == 200, "HS256 GET /jobs", f"{r.status_code} {r.text[:300]}")
    lines.append("  HS256 token  GET /jobs -> 200")
    r = get_jobs(cluster, rs256_token(rsa_keys["k1"], "k1", USER))
    check(r.status_code == 200, "RS256 GET /jobs", f"{r.status_code} {r.text[:300]}")
    lines.append("  RS256 kid=k1 GET /jobs -> 200")
    r = get_jobs(cluster, rs256_token(rsa_keys["k2"], "k2", USER))
    check(r.status_code != 200, "unknown kid must be refused", r.status_code)
    lines.append(f"  RS256 kid=k2 (not in JWKS) -> {r.status_code}")

    # Real scontrol token vs ours: same header, same claim names, and it is accepted too.
    ref = cluster.scontrol_token(USER, 300)
    ref_header = jwt.get_unverified_header(ref)
    ref_claims = jwt.decode(ref, hs_key, algorithms=["HS256"])
    ours = hs256_token(hs_key, USER)
    check(ref_header == jwt.get_unverified_header(ours), "header differs", ref_header)
    check(
        sorted(ref_claims) == sorted(jwt.decode(ours, hs_key, algorithms=["HS256"])),
        "claims differ",
        ref_claims,
    )
    check(ref.split(".")[0] == ours.split(".")[0], "header bytes differ", ref.split(".")[0])
    r = get_jobs(cluster, ref)
    check(r.status_code == 200, "scontrol token GET /jobs", r.status_code)
    lines.append(
        f"  scontrol token header {ref_header} claims {sorted(ref_claims)} "
        f"lifespan {ref_claims['exp'] - ref_claims['iat']} == ours; GET /jobs -> 200"
    )

    # Submit through slurmrestd with an RS256 token; the job must run as alice.
    tag = secrets.token_hex(4)
    result = f"/tmp/sjb-selfcheck-{cluster.cluster_name}-{tag}.txt"
    out = f"/tmp/sjb-selfcheck-{cluster.cluster_name}-{tag}.out"
    script = f"#!/bin/bash\nid -un > {result}\n"
    body = submit_body(cluster.api_version, script, out)
    r = requests.post(
        f"{cluster.restd_url}/slurm/{cluster.api_version}/job/submit",
        headers={
            "X-SLURM-USER-NAME": USER,
            "X-SLURM-USER-TOKEN": rs256_token(rsa_keys["k1"], "k1", USER),
        },
        json=body,
        timeout=30,
    )
    check(r.status_code == 200, "job submit", f"{r.status_code} {r.text[:500]}")
    job_id = int(r.json()["job_id"])
    state = cluster.wait_job(job_id, timeout=60)
    who = cluster.host_path(result).read_text().strip() if state == "COMPLETED" else ""
    check(state == "COMPLETED" and who == USER, "job result", f"{state} {who!r}")
    lines.append(f"  POST job/submit (RS256) body {json.dumps(body)}")
    lines.append(f"  job {job_id} {state}, id -un -> {who}")
    for p in (result, out):
        cluster.host_path(p).unlink(missing_ok=True)

    # JWKS rotation: 26.05 reloads on reconfigure, 22.05 only on a slurmctld restart.
    cluster.install_jwks(make_jwks({"k1": rsa_keys["k1"], "k2": rsa_keys["k2"]}))
    check(oct(cluster.jwks_path.stat().st_mode & 0o777) == "0o644", "jwks mode")
    t = time.monotonic()
    if cluster.version == "22.05":
        cluster.reconfigure()
        r = get_jobs(cluster, rs256_token(rsa_keys["k2"], "k2", USER))
        lines.append(f"  new kid k2 after reconfigure -> {r.status_code} (22.05 keeps old JWKS)")
        t = time.monotonic()
        cluster.restart_slurmctld()
        how = "restart_slurmctld"
    else:
        cluster.reconfigure()
        how = "reconfigure"
    took = time.monotonic() - t
    r = get_jobs(cluster, rs256_token(rsa_keys["k2"], "k2", USER))
    check(r.status_code == 200, f"kid k2 after {how}", f"{r.status_code} {r.text[:300]}")
    lines.append(f"  new kid k2 after {how} ({took:.2f}s) -> 200")
    r = get_jobs(cluster, hs256_token(hs_key, USER))
    check(r.status_code == 200, f"HS256 after {how}", r.status_code)
    scontrol = subprocess.run(
        [*cluster.scontrol_argv(), "ping"],
        env={**os.environ, **cluster.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    check(
        scontrol.returncode == 0 and "UP" in scontrol.stdout,
        "scontrol_argv ping",
        scontrol.stdout + scontrol.stderr,
    )
    lines.append(f"  scontrol_argv() ping: {scontrol.stdout.strip()}")
    return lines


def daemon_pids(cluster: SlurmCluster) -> list[int]:
    return list(cluster._pids.values())


def main() -> int:
    hs_key = secrets.token_bytes(32)
    rsa_keys = {
        kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")
    }
    jwks = make_jwks({"k1": rsa_keys["k1"]})
    base = Path(tempfile.mkdtemp(prefix="sjb-selfcheck-"))
    clusters: list[SlurmCluster] = []
    report: list[str] = []
    failed = 0
    try:
        for version in ("22.05", "26.05"):
            t = time.monotonic()
            clusters.append(start_cluster(version, base / version, hs_key, jwks))
            report.append(f"start_cluster({version}) took {time.monotonic() - t:.2f}s")
        report.append(f"both running at once: {clusters}")
        for cluster in clusters:
            try:
                report += check_cluster(cluster, hs_key, rsa_keys)
            except Exception as exc:  # report both versions before failing
                failed += 1
                report.append(f"  FAILED on {cluster.version}: {exc}")
                report.append(cluster.logs(20))
    finally:
        pids = [p for c in clusters for p in daemon_pids(c)]
        for cluster in clusters:
            t = time.monotonic()
            cluster.stop()
            report.append(f"stop({cluster.version}) took {time.monotonic() - t:.2f}s")
    alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    report.append(f"daemon pids {pids} alive after stop: {alive}")
    mounts = [
        ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if "sid-chroot" in ln
    ]
    report.append(f"chroot mounts left: {len(mounts)}; daemon logs kept in {base}/<version>/logs")
    print("\n".join(report))
    passed = len(clusters) - failed
    print(f"{passed} passed, {failed + (2 - len(clusters))} failed")
    return 0 if failed == 0 and len(clusters) == 2 and not alive else 1


if __name__ == "__main__":
    sys.exit(main())
