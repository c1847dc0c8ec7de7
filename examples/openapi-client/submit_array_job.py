#!/usr/bin/env python3
"""Use case: submit an array job (tasks 1-100 by default) with the typed client; prints its id.

submit_array_job.py [--array 1-100] [--hold]
"""

import argparse

from bridge_client import bridge, report
from slurmrestd_client.api.slurm import slurm_v0044_post_job_submit
from slurmrestd_client.models import V0044JobDescMsg, V0044JobSubmitReq

SCRIPT = """#!/bin/bash
echo "array task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID"
sleep 1
"""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--array", default="1-100", help="task ids, like sbatch --array")
parser.add_argument("--hold", action="store_true", help="submit it held (it stays pending)")
args = parser.parse_args()

job = V0044JobDescMsg(
    name="example-array",
    array=args.array,
    hold=args.hold,
    script=SCRIPT,
    current_working_directory="/tmp",
    environment=["PATH=/usr/local/bin:/usr/bin:/bin"],
)
answer = slurm_v0044_post_job_submit.sync(client=bridge(), body=V0044JobSubmitReq(job=job))
report(answer)
print(answer.job_id)
