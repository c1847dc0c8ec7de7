#!/usr/bin/env python3
"""Use case: the total number of tasks of all running jobs."""

from slurmrest import call, number, state

jobs = call("GET", "jobs")["jobs"]
print(sum(number(job.get("tasks")) for job in jobs if "RUNNING" in state(job).split("+")))
