#!/usr/bin/env python3
"""Use case: submit a batch job; prints its job id.

submit_job.py [--name NAME] [--tasks N] [--script FILE] [--hold]
"""

import argparse

from slurmrest import job_description, submit

SCRIPT = """#!/bin/bash
echo "job $SLURM_JOB_ID runs as $(id -un) on $(hostname)"
sleep 30
"""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--name", default="example-job")
parser.add_argument("--tasks", type=int, default=1)
parser.add_argument("--script", help="batch script file (default: a short sleep)")
parser.add_argument("--hold", action="store_true", help="submit it held (it stays pending)")
args = parser.parse_args()

script = open(args.script).read() if args.script else SCRIPT
job = job_description(name=args.name, tasks=args.tasks, hold=args.hold)
print(submit(script, job=job))
