#!/usr/bin/env python3
"""Use case: submit a heterogeneous job of two components with the typed client; prints its id.

    submit_hetjob.py [--hold]

Like ``sbatch --ntasks=1 : --ntasks=1``: ``jobs`` holds one description per component, the
batch script goes in the first one.
"""

import argparse

from bridge_client import bridge, report
from slurmrestd_client.api.slurm import slurm_v0044_post_job_submit
from slurmrestd_client.models import V0044JobDescMsg, V0044JobSubmitReq

SCRIPT = """#!/bin/bash
echo "heterogeneous job $SLURM_JOB_ID, components: $SLURM_HET_SIZE"
sleep 1
"""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--hold", action="store_true", help="submit it held (it stays pending)")
args = parser.parse_args()


def component(**fields) -> V0044JobDescMsg:
    return V0044JobDescMsg(
        name="example-hetjob",
        tasks=1,
        hold=args.hold,
        current_working_directory="/tmp",
        environment=["PATH=/usr/local/bin:/usr/bin:/bin"],
        **fields,
    )


request = V0044JobSubmitReq(jobs=[component(script=SCRIPT), component()])
answer = slurm_v0044_post_job_submit.sync(client=bridge(), body=request)
report(answer)
print(answer.job_id)
