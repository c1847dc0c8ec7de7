#!/usr/bin/env bash
# `make demo`: see scripts/demo.py. Needs root: it installs Slurm from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
    echo "make demo: needs root (it installs Slurm from Debian's packages, creates the demo accounts alice and bob and runs Slurm's daemons); run it as root" >&2
    exit 1
fi
echo "make demo: checking the system packages (Slurm 22.05, munge, ...); missing ones are installed now"
SLURM_JWT_BRIDGE_SKIP_CHROOT=1 bash scripts/install-system-deps.sh
make -s venv node-deps
exec .venv/bin/python scripts/demo.py
