"""README.md's setup block against real Slurm 22.05: the JWKS it installs is slurmctld's
``jwks=`` file, and the token its ``mint alice`` line prints lets alice run ``squeue`` with
munge out of reach (the command lines are run by tests/unit/test_doc_commands.py)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.slurm import start_cluster
from tests.unit.test_doc_commands import run_setup_block


def test_readme_setup_block_token_is_taken_by_slurmctld(tmp_path: Path) -> None:
    _serve, token = run_setup_block(tmp_path / "root")
    jwks = (tmp_path / "root/etc/slurm/jwks/jwks.json").read_text()
    hs256 = (tmp_path / "root/etc/slurm-jwt-bridge/keys/jwt_hs256.key").read_bytes()
    with start_cluster("22.05", tmp_path / "slurm", hs256, jwks) as cluster:
        refused = cluster.run_without_munge(["squeue"], user="alice", token=None)
        assert refused.returncode != 0, refused.stdout  # without the token, nothing
        r = cluster.run_without_munge(["squeue"], user="alice", token=token)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "JOBID" in r.stdout, r.stdout
