#!/usr/bin/env python3
"""Use case: update a job's name, task count and comment (POST /slurm/{version}/job/{job_id}),
like ``scontrol update JobId=... JobName=... NumTasks=... Comment=...``."""

import argparse

from slurmrest import call

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("job_id")
parser.add_argument("--name")
parser.add_argument("--tasks", type=int)
parser.add_argument("--comment")
args = parser.parse_args()

changes = {"name": args.name, "tasks": args.tasks, "comment": args.comment}
changes = {field: value for field, value in changes.items() if value is not None}
call("POST", f"job/{args.job_id}", json=changes)
print(f"updated {args.job_id}: {', '.join(sorted(changes))}")
