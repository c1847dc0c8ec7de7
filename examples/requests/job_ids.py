#!/usr/bin/env python3
"""Use case: the job ids of all jobs (GET /slurm/{version}/jobs)."""

from slurmrest import call

for job in call("GET", "jobs")["jobs"]:
    print(job["job_id"])
