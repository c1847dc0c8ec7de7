#!/usr/bin/env bash
# `make demo`: development keys in keys/ (when none exist) and the bridge on 127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
mkdir -p var/demo
if [ ! -e keys/ring.json ]; then
  "$BIN/slurm-jwt-bridge" keys init --keys-dir keys
fi
cat > var/demo/bridge.toml <<TOML
[server]
host = "127.0.0.1"
port = ${DEMO_PORT:-8000}

[keys]
dir = "../../keys"

[audit]
destination = "stderr"
TOML
cat <<MSG

  slurm-jwt-bridge demo
  JWKS for slurmctld:  http://127.0.0.1:${DEMO_PORT:-8000}/.well-known/jwks.json
  Mint a token:        $BIN/slurm-jwt-bridge mint \$USER --keys-dir keys
  Stop with Ctrl-C.

MSG
exec "$BIN/slurm-jwt-bridge" serve --config var/demo/bridge.toml
