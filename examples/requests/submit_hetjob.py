#!/usr/bin/env python3
"""Use case: submit a heterogeneous job of two components; prints its job id.

    submit_hetjob.py [--hold]

Like ``sbatch --ntasks=1 : --ntasks=1``: one job description per component, the batch script
runs in the first one.
"""

import argparse

from slurmrest import job_description, submit

SCRIPT = """#!/bin/bash
echo "heterogeneous job $SLURM_JOB_ID, components: $SLURM_HET_SIZE"
sleep 1
"""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--hold", action="store_true", help="submit it held (it stays pending)")
args = parser.parse_args()

components = [
    job_description(name="example-hetjob", tasks=1, hold=args.hold),
    job_description(name="example-hetjob", tasks=1, hold=args.hold),
]
print(submit(SCRIPT, jobs=components))
