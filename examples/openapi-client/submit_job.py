#!/usr/bin/env python3
"""Use case: submit a batch job with the typed client; prints its job id.

submit_job.py [--name NAME] [--tasks N] [--script FILE] [--hold]
"""

import argparse

from bridge_client import bridge, report
from slurmrestd_client.api.slurm import slurm_v0044_post_job_submit
from slurmrestd_client.models import V0044JobDescMsg, V0044JobSubmitReq

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

job = V0044JobDescMsg(
    name=args.name,
    tasks=args.tasks,
    hold=args.hold,
    script=open(args.script).read() if args.script else SCRIPT,
    current_working_directory="/tmp",
    environment=["PATH=/usr/local/bin:/usr/bin:/bin"],
)
answer = slurm_v0044_post_job_submit.sync(client=bridge(), body=V0044JobSubmitReq(job=job))
report(answer)
print(answer.job_id)
