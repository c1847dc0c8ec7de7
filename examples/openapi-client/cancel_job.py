#!/usr/bin/env python3
"""Use case: cancel a job with the typed client (DELETE /slurm/v0.0.44/job/{job_id})."""

import argparse

from bridge_client import bridge, report
from slurmrestd_client.api.slurm import slurm_v0044_delete_job

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("job_id")
args = parser.parse_args()

report(slurm_v0044_delete_job.sync(args.job_id, client=bridge()))
print(f"cancelled {args.job_id}")
