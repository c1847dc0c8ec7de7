#!/usr/bin/env python3
"""Use case: send a signal (SIGINT by default) to a job, like ``scancel --signal=INT JOB_ID``."""

import argparse
import sys

from slurmrest import call

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("job_id")
parser.add_argument("--signal", default="SIGINT", help="name (SIGINT, INT) or number")
args = parser.parse_args()

answer = call("DELETE", f"job/{args.job_id}", params={"signal": args.signal})
# v0.0.40 and later report per-job failures (e.g. "Job can not be altered now") in "status".
failed = [s for s in answer.get("status") or [] if (s.get("error") or {}).get("code")]
if failed:
    sys.exit(f"signal {args.signal} to {args.job_id} failed: {failed[0]['error']['message']}")
print(f"sent {args.signal} to {args.job_id}")
