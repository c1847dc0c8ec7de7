#!/usr/bin/env python3
"""Use case: update a job's name, task count and comment with the typed client
(POST /slurm/v0.0.44/job/{job_id})."""

import argparse

from bridge_client import bridge, report
from slurmrestd_client.api.slurm import slurm_v0044_post_job
from slurmrestd_client.models import V0044JobDescMsg
from slurmrestd_client.types import UNSET

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("job_id")
parser.add_argument("--name")
parser.add_argument("--tasks", type=int)
parser.add_argument("--comment")
args = parser.parse_args()

# Fields left UNSET are not sent, so they stay as they are.
changes = V0044JobDescMsg(
    name=UNSET if args.name is None else args.name,
    tasks=UNSET if args.tasks is None else args.tasks,
    comment=UNSET if args.comment is None else args.comment,
)
report(slurm_v0044_post_job.sync(args.job_id, client=bridge(), body=changes))
print(f"updated {args.job_id}: {', '.join(sorted(changes.to_dict()))}")
