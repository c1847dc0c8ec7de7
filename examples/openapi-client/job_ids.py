#!/usr/bin/env python3
"""Use case: the job ids of all jobs, with the typed client (GET /slurm/v0.0.44/jobs/)."""

from bridge_client import bridge
from slurmrestd_client.api.slurm import slurm_v0044_get_jobs

answer = slurm_v0044_get_jobs.sync(client=bridge())
for job in answer.jobs:
    print(job.job_id)
