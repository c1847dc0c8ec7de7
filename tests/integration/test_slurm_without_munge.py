"""Slurm's own commands outside the munge perimeter, with a bridge token (docs/slurm.md,
"Slurm commands without munge"), against real Slurm 22.05, 24.11 and 26.05.

Every client command here runs as the token's local user in its own mount namespace, where an
empty tmpfs hides every munge socket (SlurmCluster.without_munge_argv), and reads a client-side
slurm.conf without AuthAltParameters (no key path). The daemons keep munge among themselves.
What is proven, each time by the real daemons:
- without SLURM_JWT, squeue, sinfo, sbatch, scancel and srun fail ("Munge encode failed"): munge
  really is out of reach;
- with a bridge token (RS256 or HS256), squeue, sinfo and scontrol show answer; sbatch --wrap
  'id -un' runs a job as the token's user (the job's environment holds SLURM_JWT on 22.05 and
  24.11, on 26.05 only with an explicit --export=ALL); scancel cancels it; bob's job cannot be
  cancelled with alice's token;
- an expired token and a token signed by a key Slurm never loaded (a foreign bridge) are
  refused with each version's message;
- srun fails as Slurm documents: 26.05 refuses auth/jwt outright; 22.05 and 24.11 get an
  allocation from slurmctld but slurmd refuses the step launch.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from slurm_jwt_bridge.keys import KeyRing, rsa_kid
from slurm_jwt_bridge.minting import mint_slurm_token
from tests.helpers.slurm import SlurmCluster
from tests.helpers.slurm_rest import BridgeCluster

pytestmark = pytest.mark.slurm

USER = "alice"
OTHER = "bob"
MUNGE_UNREACHABLE = "Munge encode failed"
# What the client prints when slurmctld refuses the token (and why, in slurmctld's log).
TOKEN_REFUSED = {
    "22.05": "slurm_load_jobs error: Zero Bytes were transmitted or received",
    "24.11": "slurm_load_jobs error: Protocol authentication error",
    "26.05": "slurm_load_jobs error: Protocol authentication error",
}
REFUSAL_REASON = {
    "expired": "token expired",
    "foreign": "could not find matching kid or decode failed",
}
# Lines `SLURM_JWT=` in a batch job's environment, by version and sbatch's --export option.
JOB_ENV_HAS_TOKEN = {
    ("22.05", ""): "1",
    ("22.05", "--export=ALL"): "1",
    ("24.11", ""): "1",
    ("24.11", "--export=ALL"): "1",
    ("26.05", ""): "0",
    ("26.05", "--export=ALL"): "1",
}
SRUN_STEP_REFUSED = (
    r"Task launch for StepId=\d+\.0 failed on node \S+: Zero Bytes were transmitted or received"
)
SRUN_REFUSED = {
    # src/srun/srun.c (26.05): auth/jwt is refused before anything is sent.
    "26.05": r"srun: fatal: auth/jwt is not supported for use with srun\.",
    # 22.05, 24.11: slurmctld grants the allocation, slurmd cannot authenticate the step launch.
    "22.05": SRUN_STEP_REFUSED,
    "24.11": SRUN_STEP_REFUSED,
}


def _explain(proc: object) -> str:
    return f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"  # type: ignore[attr-defined]


def _job_id(proc: object) -> int:
    m = re.fullmatch(r"Submitted batch job (\d+)\n", proc.stdout)  # type: ignore[attr-defined]
    assert m, _explain(proc)
    return int(m.group(1))


def _job_state(cluster: SlurmCluster, job_id: int) -> str:
    """The job's state as the controller sees it (scontrol inside the munge perimeter)."""
    out = cluster.run(["scontrol", "show", "job", "-o", str(job_id)], timeout=20)
    m = re.search(r"\bJobState=(\S+)", out.stdout)
    assert m, f"{out.stdout}{out.stderr}"
    return m.group(1)


def _wait_state(cluster: SlurmCluster, job_id: int, wanted: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = _job_state(cluster, job_id)
        if state in wanted or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


@pytest.fixture
def jobs(slurm: BridgeCluster) -> Iterator[list[int]]:
    """Job ids a test submitted; whatever is left is cancelled (as root, with munge) after it."""
    ids: list[int] = []
    yield ids
    if ids:
        slurm.cluster.run(["scancel", *map(str, ids)], timeout=30)
        for job_id in ids:
            _wait_state(slurm.cluster, job_id, {"CANCELLED", "COMPLETED", "FAILED"}, 30)


def _sleep_job(bc: BridgeCluster, user: str, jobs: list[int]) -> int:
    """A job that runs until cancelled, submitted without munge with ``user``'s token."""
    out = f"/tmp/sjb-nomunge-sleep-{secrets.token_hex(4)}.out"
    proc = bc.cluster.run_without_munge(
        ["sbatch", "-o", out, "--wrap", "sleep 600"], user=user, token=bc.mint(user)
    )
    job_id = _job_id(proc)
    jobs.append(job_id)
    assert _wait_state(bc.cluster, job_id, {"RUNNING"}) == "RUNNING"
    return job_id


# ------------------------------------------------------------------------------ munge is gone


def test_without_token_the_commands_fail_for_want_of_munge(
    slurm: BridgeCluster, jobs: list[int]
) -> None:
    cluster = slurm.cluster
    assert "AuthAltParameters" not in cluster.host_path(cluster.client_conf()).read_text()
    job_id = _sleep_job(slurm, USER, jobs)
    argvs = (
        ["squeue"],
        ["sinfo"],
        ["scontrol", "show", "partition"],
        ["sbatch", "--wrap", "id -un"],
        ["scancel", str(job_id)],
        ["srun", "-t", "1", "id", "-un"],
    )
    # Each command retries the munge socket for seconds before it gives up: run them at once.
    with ThreadPoolExecutor(len(argvs)) as pool:
        procs = list(pool.map(lambda a: cluster.run_without_munge(a, user=USER, token=None), argvs))
    for argv, proc in zip(argvs, procs, strict=True):
        assert proc.returncode != 0, f"{argv}: {_explain(proc)}"
        assert MUNGE_UNREACHABLE in proc.stderr, f"{argv}: {_explain(proc)}"
    # The job the token-less scancel aimed at is untouched.
    assert _job_state(cluster, job_id) == "RUNNING"


# ------------------------------------------------------------------------------ with a token


@pytest.mark.parametrize("alg", ["RS256", "HS256"])
def test_squeue_sinfo_scontrol_answer_with_bridge_token(slurm: BridgeCluster, alg: str) -> None:
    cluster = slurm.cluster
    token = slurm.mint(USER, "--alg", alg)
    assert jwt.get_unverified_header(token)["alg"] == alg

    proc = cluster.run_without_munge(["squeue"], user=USER, token=token)
    assert proc.returncode == 0, _explain(proc)
    assert proc.stdout.split()[:4] == ["JOBID", "PARTITION", "NAME", "USER"], _explain(proc)

    proc = cluster.run_without_munge(["sinfo", "-h", "-o", "%P %a"], user=USER, token=token)
    assert proc.returncode == 0, _explain(proc)
    assert proc.stdout.split() == ["debug*", "up"], _explain(proc)

    proc = cluster.run_without_munge(["scontrol", "show", "partition"], user=USER, token=token)
    assert proc.returncode == 0, _explain(proc)
    assert proc.stdout.startswith("PartitionName=debug"), _explain(proc)


@pytest.mark.parametrize("export", ["", "--export=ALL"])
def test_sbatch_runs_as_token_user_and_scancel_cancels(
    slurm: BridgeCluster, jobs: list[int], export: str
) -> None:
    cluster = slurm.cluster
    token = slurm.mint(USER)
    out = f"/tmp/sjb-nomunge-whoami-{secrets.token_hex(4)}.out"
    script = "id -un; env | grep -c '^SLURM_JWT=' || true"
    argv = ["sbatch", *([export] if export else []), "-o", out, "--wrap", script]
    proc = cluster.run_without_munge(argv, user=USER, token=token)
    job_id = _job_id(proc)
    jobs.append(job_id)
    try:
        assert cluster.wait_job(job_id) == "COMPLETED"
        who, tokens_in_job_env = cluster.host_path(out).read_text().split()
        assert who == USER
        # Whether the submitting environment's SLURM_JWT reaches the batch job.
        assert tokens_in_job_env == JOB_ENV_HAS_TOKEN[slurm.version, export]
    finally:
        cluster.host_path(out).unlink(missing_ok=True)

    job_id = _sleep_job(slurm, USER, jobs)
    proc = cluster.run_without_munge(["scancel", str(job_id)], user=USER, token=token)
    assert proc.returncode == 0, _explain(proc)
    assert _wait_state(cluster, job_id, {"CANCELLED"}) == "CANCELLED"


def test_another_users_job_cannot_be_cancelled(slurm: BridgeCluster, jobs: list[int]) -> None:
    cluster = slurm.cluster
    bobs_job = _sleep_job(slurm, OTHER, jobs)
    proc = cluster.run_without_munge(["scancel", str(bobs_job)], user=USER, token=slurm.mint(USER))
    assert proc.returncode != 0, _explain(proc)
    assert f"Kill job error on job id {bobs_job}: Access/permission denied" in proc.stderr
    assert _job_state(cluster, bobs_job) == "RUNNING"


def _bad_token(case: str, bc: BridgeCluster) -> str:
    now = int(time.time())
    if case == "expired":
        expired = mint_slurm_token(KeyRing.load(bc.keys_dir), USER, 300, now=now - 3600)
        assert expired.exp < now
        return expired.token
    # Another bridge's key: well-formed, signed, but its kid is not in this cluster's JWKS.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"exp": now + 300, "iat": now, "sun": USER}
    return jwt.encode(
        claims, stranger, algorithm="RS256", headers={"kid": rsa_kid(stranger.public_key())}
    )


@pytest.mark.parametrize("case", ["expired", "foreign"])
def test_expired_or_foreign_token_is_refused(slurm: BridgeCluster, case: str) -> None:
    cluster = slurm.cluster
    log = cluster.log_dir / "slurmctld.log"
    seen = log.stat().st_size
    proc = cluster.run_without_munge(["squeue"], user=USER, token=_bad_token(case, slurm))
    assert proc.returncode != 0, _explain(proc)
    assert TOKEN_REFUSED[slurm.version] in proc.stderr, _explain(proc)
    with open(log, errors="replace") as fh:
        fh.seek(seen)
        assert REFUSAL_REASON[case] in fh.read()
    # The same command with a good token answers: the refusal was about the token.
    proc = cluster.run_without_munge(["squeue"], user=USER, token=slurm.mint(USER))
    assert proc.returncode == 0, _explain(proc)


def test_srun_fails_as_slurm_documents(slurm: BridgeCluster) -> None:
    cluster = slurm.cluster
    proc = cluster.run_without_munge(
        ["srun", "-t", "1", "id", "-un"], user=USER, token=slurm.mint(USER), timeout=120
    )
    assert proc.returncode != 0, _explain(proc)
    assert re.search(SRUN_REFUSED[slurm.version], proc.stderr), _explain(proc)
    assert USER not in proc.stdout  # `id -un` never ran
    # Nothing of alice's is left queued or running.
    left = cluster.run(["squeue", "-h", "-u", USER, "-o", "%A %T"], timeout=20)
    assert left.returncode == 0 and left.stdout.strip() == "", f"{left.stdout}{left.stderr}"
