#!/usr/bin/env python3
"""Use case: send a signal (SIGINT by default) to a job with the typed client."""

import argparse
import sys

from bridge_client import bridge, report
from slurmrestd_client.api.slurm import slurm_v0044_delete_job

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("job_id")
parser.add_argument("--signal", default="SIGINT", help="name (SIGINT, INT) or number")
args = parser.parse_args()

answer = slurm_v0044_delete_job.sync(args.job_id, client=bridge(), signal=args.signal)
report(answer)
# Per-job failures (e.g. "Job can not be altered now") come back in "status", with HTTP 200.
for status in answer.status:
    if status.error and status.error.code:
        sys.exit(f"signal {args.signal} to {args.job_id} failed: {status.error.message}")
print(f"sent {args.signal} to {args.job_id}")
