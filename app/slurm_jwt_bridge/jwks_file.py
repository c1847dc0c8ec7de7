"""The JWKS file on the slurmctld host: shape checks, export and sync.

slurmctld reads ``jwks=`` only at start (22.05) or at ``scontrol reconfigure`` (23.11+), and
skips keys it cannot use without saying so in a way a user sees; so every key is checked here
for the exact shape it needs before the file is replaced.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .keys import atomic_write
from .names import RS256
from .outbound import TrustError, http_client
from .untrusted import printable

MAX_JWKS_BYTES = 1 << 20
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")

EXIT_UNCHANGED = 0
EXIT_ERROR = 1
EXIT_CHANGED = 3


class JwksError(Exception):
    """The JWKS cannot be used by Slurm, or cannot be fetched/written; one line."""


def slurm_jwks_problems(doc: Any) -> list[str]:
    """Everything in ``doc`` that would stop slurmctld from using a key (empty when fine)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        return ['top level must be an object with a "keys" list']
    if not doc["keys"]:
        return ["no keys: every RS256 token would be refused"]
    problems = []
    kids = set()
    for i, key in enumerate(doc["keys"]):
        where = f"keys[{i}]"
        if not isinstance(key, dict):
            problems.append(f"{where}: not an object")
            continue
        if key.get("kty") != "RSA":
            problems.append(f'{where}: kty must be "RSA"')
        if key.get("alg") != RS256:
            problems.append(f'{where}: alg must be "RS256" (Slurm skips keys without it)')
        kid = key.get("kid")
        if not isinstance(kid, str) or not kid:
            problems.append(f"{where}: kid must be a non-empty string")
        elif kid in kids:
            problems.append(f"{where}: duplicate kid {printable(kid, 64)}")
        else:
            kids.add(kid)
        for part in ("n", "e"):
            value = key.get(part)
            if not isinstance(value, str) or not _B64URL.fullmatch(value):
                problems.append(f"{where}: {part} must be base64url without padding")
            else:
                try:
                    base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
                except ValueError:
                    problems.append(f"{where}: {part} is not valid base64url")
        if any(k in key for k in ("d", "p", "q", "dp", "dq", "qi")):
            problems.append(f"{where}: contains private key material")
    return problems


def render_jwks(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def write_jwks(path: Path, doc: dict[str, Any]) -> None:
    """Atomic write, mode 0644 (23.11+ refuses a jwks file writable by other)."""
    problems = slurm_jwks_problems(doc)
    if problems:
        raise JwksError(f"refusing to write {path}: {problems[0]}")
    atomic_write(Path(path), render_jwks(doc), 0o644)


@dataclass(frozen=True)
class SyncResult:
    changed: bool
    message: str


def check_jwks_url(url: str, allow_http: bool = False) -> None:
    """Only https (certificate verified) unless ``allow_http``: whoever can change what the sync
    receives adds a key that slurmctld then trusts, a master key to the cluster."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "https" or (scheme == "http" and allow_http):
        return
    if scheme == "http":
        raise JwksError(
            f"{url[:200]}: plain http lets anyone on the path add a key slurmctld trusts; use "
            "https (--ca-file for a private CA), or --allow-http for a bridge on this host"
        )
    raise JwksError(f"{url[:200]}: the JWKS URL must be https://")


def fetch_jwks(url: str, timeout: float = 10.0, ca_file: str | None = None) -> Any:
    """The JSON document at ``url``, unchecked: ``slurm_jwks_problems`` says what it lacks;
    https trusts the system store, or ``ca_file`` alone when given."""
    try:
        client = http_client(ca_file, timeout=timeout)
    except TrustError as exc:
        raise JwksError(f"--ca-file {exc}") from None
    try:
        with client:
            with client.stream("GET", url, headers={"Accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise JwksError(f"GET {url}: HTTP {resp.status_code}")
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"GET {url}: document larger than {MAX_JWKS_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise JwksError(f"GET {url}: {type(exc).__name__}: {exc}") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise JwksError(f"GET {url}: not JSON") from None


def sync_jwks(
    url: str,
    out: Path,
    *,
    reconfigure_command: str | None = None,
    timeout: float = 10.0,
    ca_file: str | None = None,
    allow_http: bool = False,
) -> SyncResult:
    """Fetch, check, and replace ``out`` only when its keys changed; then reconfigure.

    When the reconfigure command fails the previous file is put back, so the next run sees
    the change again and retries instead of leaving slurmctld on old keys silently.
    """
    check_jwks_url(url, allow_http)
    doc = fetch_jwks(url, timeout, ca_file)
    problems = slurm_jwks_problems(doc)
    if problems:
        raise JwksError(f"{url}: JWKS not usable by Slurm: {problems[0]}")
    kids = tuple(k["kid"] for k in doc["keys"])
    out = Path(out)
    old: bytes | None = out.read_bytes() if out.exists() else None
    try:
        old_doc = json.loads(old) if old is not None else None
    except ValueError:
        old_doc = None
    argv: list[str] = []
    if reconfigure_command:
        # Parsed before the file changes: an unusable command must not leave a new file behind
        # that the next run would call "unchanged" and never reconfigure for.
        try:
            argv = shlex.split(reconfigure_command)
        except ValueError as exc:
            raise JwksError(f"--reconfigure-command {reconfigure_command!r}: {exc}") from None
        if not argv:
            raise JwksError("--reconfigure-command is empty")
    if old_doc == doc:
        return SyncResult(False, f"{out}: unchanged ({len(kids)} keys)")
    write_jwks(out, doc)
    if argv:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            failed = proc.returncode != 0
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] if failed else []
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            failed, detail = True, [str(exc)]
        if failed:
            if old is None:
                out.unlink()
            else:
                atomic_write(out, old, 0o644)
            raise JwksError(
                f"{reconfigure_command!r} failed ({' '.join(detail)[:200]}); "
                f"{out} restored to its previous content"
            )
    shown = ", ".join(printable(k, 64) for k in kids)
    return SyncResult(True, f"{out}: updated ({len(kids)} keys: {shown})")
