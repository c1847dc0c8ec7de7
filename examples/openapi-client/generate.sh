#!/usr/bin/env bash
# Generate a typed Python client for slurmrestd from slurmrestd's own OpenAPI document,
# fetched THROUGH the bridge (GET $BRIDGE_URL/openapi/v3 with your identity-provider token).
#
#   BRIDGE_URL=https://slurm.example.org IDP_TOKEN=eyJ... ./generate.sh [OUTPUT_DIR]
#
# Writes OUTPUT_DIR/openapi.json and the package OUTPUT_DIR/slurmrestd_client (default
# OUTPUT_DIR: generated/ next to this script, which the example scripts find on their own;
# elsewhere, point SLURMRESTD_CLIENT_DIR at it). Needs openapi-python-client (pip install
# openapi-python-client) and curl or python3.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/generated}
: "${BRIDGE_URL:?set BRIDGE_URL to the bridge, e.g. https://slurm.example.org}"
: "${IDP_TOKEN:?set IDP_TOKEN to an access token from your identity provider}"
generator=${OPENAPI_PYTHON_CLIENT:-openapi-python-client}

mkdir -p "$out"
url="${BRIDGE_URL%/}/openapi/v3"
if command -v curl >/dev/null; then
    # The token on stdin, not in curl's arguments (readable by any local user in /proc).
    printf 'Authorization: Bearer %s\n' "$IDP_TOKEN" | curl -fsS -H @- -o "$out/openapi.json" "$url"
else
    python3 - "$url" "$out/openapi.json" <<'PY'
import os, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + os.environ["IDP_TOKEN"]})
with urllib.request.urlopen(req, timeout=60) as resp, open(sys.argv[2], "wb") as out:
    out.write(resp.read())
PY
fi

"$generator" generate --path "$out/openapi.json" --meta none \
    --output-path "$out/slurmrestd_client" --config "$here/config.yaml" --overwrite
echo "generated $out/slurmrestd_client"
