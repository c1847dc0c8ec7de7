#!/usr/bin/env python3
"""Use case: submit an array job (tasks 1-100 by default); prints its job id.

submit_array_job.py [--array 1-100] [--hold]
"""

import argparse

from slurmrest import job_description, submit

SCRIPT = """#!/bin/bash
echo "array task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID"
sleep 1
"""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--array", default="1-100", help="task ids, like sbatch --array")
parser.add_argument("--hold", action="store_true", help="submit it held (it stays pending)")
args = parser.parse_args()

job = job_description(name="example-array", array=args.array, hold=args.hold)
print(submit(SCRIPT, job=job))
