#!/usr/bin/env python3
"""Use case: cancel a job (DELETE /slurm/{version}/job/{job_id}), like ``scancel JOB_ID``."""

import argparse

from slurmrest import call

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("job_id")
args = parser.parse_args()

call("DELETE", f"job/{args.job_id}")
print(f"cancelled {args.job_id}")
