#!/usr/bin/env python3
"""Use case: the total number of tasks of all running jobs, with the typed client."""

from bridge_client import bridge
from slurmrestd_client.api.slurm import slurm_v0044_get_jobs
from slurmrestd_client.models import V0044JobInfoJobStateItem

answer = slurm_v0044_get_jobs.sync(client=bridge())
print(
    sum(
        job.tasks.number  # a V0044Uint32NoValStruct: number, set_ ("set"), infinite
        for job in answer.jobs
        if V0044JobInfoJobStateItem.RUNNING in job.job_state and job.tasks and job.tasks.set_
    )
)
