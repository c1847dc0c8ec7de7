#!/usr/bin/env python3
"""Use case: the state of every job, one "JOB_ID STATE" line each."""

from slurmrest import call, state

for job in call("GET", "jobs")["jobs"]:
    print(job["job_id"], state(job))
