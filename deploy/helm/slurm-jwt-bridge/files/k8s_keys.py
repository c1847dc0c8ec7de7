#!/usr/bin/env python3
"""Key-ring plumbing for the slurm-jwt-bridge Helm chart (standard library only).

copy    Copy the keys Secret volume into the bridge's key directory as files only the bridge's
        user can read (0600; ring.json 0644). The kubelet makes Secret files group-readable when
        the pod has an fsGroup, and root-owned (unreadable for a non-root user) when it has
        none; the bridge refuses a private key that group or other can read. With --watch it
        keeps the copy current, so a rotated Secret reaches the running bridge, which reloads
        a changed key directory by itself.

rotate  (the rotation CronJob) Read the keys Secret through the Kubernetes API, run
        `slurm-jwt-bridge keys rotate` and `keys prune` on a private copy, write the new JWKS to
        the JWKS ConfigMap (key jwks.json) and then the new key ring to the Secret. The Secret is
        replaced with the resourceVersion it was read at, so a concurrent change makes the run
        fail instead of being overwritten. The ConfigMap goes first: it then lists every key the
        new ring can sign with (the next key included) before any pod holds that ring.

Exit status: 0 success, 1 failure (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
RING = "ring.json"
KEY_FILES = (RING, "jwt_hs256.key")


class Failure(Exception):
    """A step failed; the message is one line."""


def log(message: str) -> None:
    print(f"k8s_keys: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- files


def snapshot_dir(src: str) -> str:
    """The directory to read a consistent snapshot from.

    The kubelet writes a Secret volume as a timestamped directory plus a ``..data`` symlink that
    it swaps atomically; reading through ``..data`` resolved once never mixes two versions.
    """
    data = os.path.join(src, "..data")
    return os.path.realpath(data) if os.path.isdir(data) else src


def read_dir(src: str) -> dict[str, bytes]:
    """Regular files (symlinks followed) of ``src``, without dot files (locks, temporaries)."""
    files: dict[str, bytes] = {}
    base = snapshot_dir(src)
    for name in sorted(os.listdir(base)):
        path = os.path.join(base, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        with open(path, "rb") as fh:
            files[name] = fh.read()
    return files


def file_mode(name: str) -> int:
    return 0o644 if name == RING else 0o600


def write_atomic(path: str, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def mirror(files: dict[str, bytes], dest: str) -> list[str]:
    """Make ``dest`` hold exactly ``files``; return a line per change.

    Order keeps every intermediate state loadable or refused as a whole by the bridge: new key
    files first, then ring.json (which names them), then files no longer in the ring.
    """
    changes = []
    for name in sorted(files, key=lambda n: (n == RING, n)):
        path = os.path.join(dest, name)
        mode = file_mode(name)
        try:
            with open(path, "rb") as fh:
                same = fh.read() == files[name]
            same = same and stat.S_IMODE(os.lstat(path).st_mode) == mode
        except FileNotFoundError:
            same = False
        if not same:
            write_atomic(path, files[name], mode)
            changes.append(f"wrote {name} ({mode:04o})")
    for name in sorted(os.listdir(dest)):
        path = os.path.join(dest, name)
        if name.startswith(".") or name in files or not os.path.isfile(path):
            continue
        os.unlink(path)
        changes.append(f"removed {name}")
    return changes


def check_keys(files: dict[str, bytes], where: str) -> None:
    if not any(name in files for name in KEY_FILES):
        raise Failure(
            f"{where} holds no key ring ({' or '.join(KEY_FILES)}); create it from "
            "`slurm-jwt-bridge keys init` (see docs/deploy.md)"
        )


def copy_once(src: str, dest: str) -> list[str]:
    files = read_dir(src)
    check_keys(files, src)
    return mirror(files, dest)


def cmd_copy(args: argparse.Namespace) -> int:
    os.makedirs(args.dest, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(args.dest, 0o700)  # only possible when this user owns it
    if not args.watch:
        try:
            changes = copy_once(args.src, args.dest)
        except (OSError, Failure) as exc:
            log(f"copy failed: {exc}")
            return 1
        log(f"copied {args.src} to {args.dest}: " + ("; ".join(changes) or "up to date"))
        return 0
    while True:
        try:
            for line in copy_once(args.src, args.dest):
                log(line)
        except (OSError, Failure) as exc:
            log(f"copy failed (keeping the previous copy): {exc}")
        time.sleep(args.watch)


# ---------------------------------------------------------------- Kubernetes API


class Api:
    """The few Kubernetes API calls the rotation needs, with the pod's service account."""

    def __init__(self, url: str, token_file: str, ca_file: str | None, timeout: float) -> None:
        if not url.startswith(("https://", "http://")):
            raise Failure(f"API URL must be http(s): {url!r}")
        self.url = url.rstrip("/")
        self.token_file = token_file
        self.timeout = timeout
        self.context = None
        if self.url.startswith("https://"):
            self.context = ssl.create_default_context(cafile=ca_file)

    def call(self, method: str, path: str, body: Any = None, ctype: str = "") -> Any:
        with open(self.token_file) as fh:
            token = fh.read().strip()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = ctype or "application/json"
        # Only http(s): the URL is https://$KUBERNETES_SERVICE_HOST or --api-url.
        url = self.url + path
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(  # noqa: S310
                req, timeout=self.timeout, context=self.context
            ) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("message", detail)
            raise Failure(f"{method} {path}: HTTP {exc.code}: {detail[:300]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise Failure(f"{method} {path}: {exc}") from None


def default_api_url() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return ""
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


def run_bridge(bridge: list[str], *argv: str) -> str:
    cmd = [*bridge, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Failure(f"{shlex.join(cmd)} exited {proc.returncode}: {detail[0]}")
    return proc.stdout


def check_jwks(doc: Any) -> None:
    """The shape slurmctld needs; a private member would publish a private key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise Failure('exported JWKS has no "keys"')
    for key in doc["keys"]:
        missing = [m for m in ("kty", "alg", "kid", "n", "e") if not key.get(m)]
        if missing or key["kty"] != "RSA" or key["alg"] != "RS256" or "d" in key:
            raise Failure(f"exported JWKS key {str(key)[:60]} has not the shape Slurm needs")


def cmd_rotate(args: argparse.Namespace) -> int:
    try:
        return rotate(args)
    except (OSError, Failure) as exc:
        log(f"rotation failed: {exc}")
        return 1


def rotate(args: argparse.Namespace) -> int:
    api_url = args.api_url or default_api_url()
    if not api_url:
        raise Failure("no Kubernetes API URL (KUBERNETES_SERVICE_HOST unset; use --api-url)")
    namespace = args.namespace
    if not namespace:
        with open(os.path.join(SA_DIR, "namespace")) as fh:
            namespace = fh.read().strip()
    api = Api(api_url, args.token_file, args.ca_file, args.timeout)
    bridge = shlex.split(args.bridge_command)
    ns = urllib.parse.quote(namespace, safe="")
    secret_path = f"/api/v1/namespaces/{ns}/secrets/{urllib.parse.quote(args.secret, safe='')}"
    cm_path = f"/api/v1/namespaces/{ns}/configmaps/{urllib.parse.quote(args.configmap, safe='')}"

    secret = api.call("GET", secret_path)
    old = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    check_keys(old, f"Secret {namespace}/{args.secret}")

    with tempfile.TemporaryDirectory(prefix="rotate-", dir=args.workdir) as tmp:
        keys_dir = os.path.join(tmp, "keys")
        os.mkdir(keys_dir, 0o700)
        mirror(old, keys_dir)
        steps = [("keys", "prune")] if args.prune_only else [("keys", "rotate"), ("keys", "prune")]
        for step in steps:
            for line in run_bridge(bridge, *step, "--keys-dir", keys_dir).splitlines():
                log(f"{' '.join(step)}: {line}")
        jwks_file = os.path.join(tmp, "jwks.json")
        run_bridge(bridge, "jwks", "export", "--keys-dir", keys_dir, "--out", jwks_file)
        with open(jwks_file) as fh:
            jwks_text = fh.read()
        check_jwks(json.loads(jwks_text))
        new = read_dir(keys_dir)
    check_keys(new, "the rotated key ring")

    # 1. The JWKS ConfigMap: from now on it lists every key the new ring signs with.
    cm = api.call("GET", cm_path)
    if (cm.get("data") or {}).get(args.configmap_key) != jwks_text:
        api.call(
            "PATCH",
            cm_path,
            {"data": {args.configmap_key: jwks_text}},
            "application/merge-patch+json",
        )
        kids = [k["kid"] for k in json.loads(jwks_text)["keys"]]
        log(f"updated ConfigMap {namespace}/{args.configmap} ({', '.join(kids)})")
    else:
        log(f"ConfigMap {namespace}/{args.configmap} already current")

    # 2. The Secret, at the resourceVersion it was read at (HTTP 409 on a concurrent change).
    if new == old:
        log(f"Secret {namespace}/{args.secret} unchanged")
        return 0
    meta = {k: v for k, v in secret.get("metadata", {}).items() if k != "managedFields"}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": secret.get("type", "Opaque"),
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(new.items())},
    }
    api.call("PUT", secret_path, body)
    gone = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    log(
        f"updated Secret {namespace}/{args.secret}: added {', '.join(added) or 'nothing'}; "
        f"removed {', '.join(gone) or 'nothing'}"
    )
    return 0


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("copy", help="copy the keys Secret volume into a private directory")
    p.add_argument("--src", required=True, help="the Secret volume's mount path")
    p.add_argument("--dest", required=True, help="the bridge's keys directory")
    p.add_argument("--watch", type=float, default=0, help="repeat every SECONDS (sidecar)")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("rotate", help="rotate the key ring held in the keys Secret")
    p.add_argument("--secret", required=True, help="the keys Secret's name")
    p.add_argument("--configmap", required=True, help="the JWKS ConfigMap's name")
    p.add_argument("--configmap-key", default="jwks.json")
    p.add_argument("--namespace", default="", help="default: the service account's namespace")
    p.add_argument("--api-url", default="", help="default: from KUBERNETES_SERVICE_HOST/PORT")
    p.add_argument("--token-file", default=os.path.join(SA_DIR, "token"))
    p.add_argument("--ca-file", default=os.path.join(SA_DIR, "ca.crt"))
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--bridge-command", default="slurm-jwt-bridge")
    p.add_argument("--workdir", default=None, help="where the private copy goes (default $TMPDIR)")
    p.add_argument("--prune-only", action="store_true", help="prune and publish; no rotation")
    p.set_defaults(func=cmd_rotate)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
