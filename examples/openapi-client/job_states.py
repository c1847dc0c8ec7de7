#!/usr/bin/env python3
"""Use case: the state of every job, one "JOB_ID STATE" line each, with the typed client."""

from bridge_client import bridge
from slurmrestd_client.api.slurm import slurm_v0044_get_jobs

answer = slurm_v0044_get_jobs.sync(client=bridge())
for job in answer.jobs:
    # job_state is a list of V0044JobInfoJobStateItem: the state plus flags (e.g. COMPLETING)
    print(job.job_id, "+".join(state.value for state in job.job_state))
