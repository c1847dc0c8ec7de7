"""The key ring: RS256 keys with states next -> active -> retired, and Slurm's HS256 key.

Layout of a keys directory (flat, so it can be a Kubernetes Secret):

- ``ring.json``            states and timestamps of the RS256 keys (no secrets)
- ``rs256-<kid>.pem``      one PKCS#8 private key per RS256 key, mode 0600
- ``jwt_hs256.key``        raw bytes of the HS256 key exactly as slurmctld reads them, mode 0600

Rotation keeps the cluster working: the ``next`` key is published in the JWKS before it signs
anything, so slurmctld already knows it when it becomes ``active``; a ``retired`` key stays
published until every token it signed has expired (``publish_until``), then ``prune`` removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey
from jwt.algorithms import RSAAlgorithm

from .names import RS256

log = logging.getLogger(__name__)

HS256_FILE = "jwt_hs256.key"
SESSION_KEY_FILE = "session.key"
SESSION_KEY_BYTES = 32
RING_FILE = "ring.json"
LOCK_FILE = ".lock"
HS256_MIN_BYTES = 32
HS256_DEFAULT_BYTES = 64
STATES = ("next", "active", "retired")

log = logging.getLogger(__name__)


class KeyRingError(Exception):
    """The key directory cannot be used; the message is one line with the reason."""


@dataclass(frozen=True)
class RsaKey:
    """One RS256 key of the ring."""

    kid: str
    state: str
    bits: int
    created: int
    activated: int | None
    retired: int | None
    publish_until: int | None
    private_key: rsa.RSAPrivateKey

    def public_jwk(self) -> dict[str, str]:
        """The JWK slurmctld needs: kty, alg, use, kid, n, e (and nothing it would skip)."""
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {
            "kty": "RSA",
            "alg": RS256,
            "use": "sig",
            "kid": self.kid,
            "n": jwk["n"],
            "e": jwk["e"],
        }

    def published_at(self, now: float) -> bool:
        if self.state in ("next", "active"):
            return True
        return self.publish_until is not None and now < self.publish_until

    def describe(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "state": self.state,
            "bits": self.bits,
            "created": self.created,
            "activated": self.activated,
            "retired": self.retired,
            "publish_until": self.publish_until,
        }


def rsa_kid(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): stable for the key's lifetime."""
    return RSAKey.import_key(public_key).thumbprint()


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owner_problem(path: Path, uid: int) -> str | None:
    """Files and the directory of a key ring belong to the service user (or root): anyone else
    who owns them can change what the bridge signs with and publishes."""
    me = os.geteuid()
    if uid in (me, 0):
        return None
    allowed = "root" if me == 0 else f"{_user_name(me)} (this service's user) or root"
    return (
        f"{path}: owned by {_user_name(uid)}, not by {allowed}; run: chown {_user_name(me)} {path}"
    )


def check_keys_dir(d: Path) -> None:
    """Refuse a keys directory that group/other can write or that another user owns: whoever
    can write it can add a key (and a ring.json naming it) that the JWKS then publishes."""
    try:
        st = os.stat(d)
    except OSError as exc:
        raise KeyRingError(f"{d}: cannot read the keys directory: {exc.strerror}") from None
    if st.st_mode & 0o022:
        raise KeyRingError(
            f"{d}: mode {stat.S_IMODE(st.st_mode):04o} leaves the keys directory writable by "
            f"group/other (anyone who can write it can add a signing key); run: chmod 700 {d}"
        )
    problem = _owner_problem(d, st.st_uid)
    if problem:
        raise KeyRingError(problem)


def _read_checked(path: Path, forbidden: int, what: str) -> bytes:
    """Read ``path`` without following a symlink and refuse it when it is not a regular file of
    this user (or root) or when its mode has bits of ``forbidden``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyRingError(f"{path}: {what} is missing") from None
    except OSError as exc:
        if os.path.islink(path):
            raise KeyRingError(
                f"{path}: is a symlink; {what} must be a regular file in the keys directory"
            ) from None
        try:
            owner = _user_name(os.lstat(path).st_uid)
        except OSError:
            owner = "?"
        me = _user_name(os.geteuid())
        if isinstance(exc, PermissionError) and owner not in (me, "?"):
            raise KeyRingError(
                f"{path}: cannot read {what}: owned by {owner}, read as {me} (create keys as "
                f"the service user: runuser -u {owner} -- slurm-jwt-bridge keys ...)"
            ) from None
        raise KeyRingError(f"{path}: cannot read {what}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyRingError(f"{path}: not a regular file")
        if st.st_mode & forbidden:
            mode = stat.S_IMODE(st.st_mode)
            if forbidden & 0o044:
                raise KeyRingError(
                    f"{path}: mode {mode:04o} lets group/other access a private key; "
                    f"run: chmod 600 {path}"
                )
            raise KeyRingError(
                f"{path}: mode {mode:04o} leaves {what} writable by group/other; "
                f"run: chmod 644 {path}"
            )
        problem = _owner_problem(path, st.st_uid)
        if problem:
            raise KeyRingError(problem)
        try:
            return fh.read()
        except OSError as exc:
            raise KeyRingError(f"{path}: cannot read {what}: {exc.strerror}") from None


def check_private_file(path: Path) -> None:
    """Refuse a key file that is a symlink, not a regular file, group/other-accessible or owned
    by another user."""
    _read_private(path)


def _read_private(path: Path) -> bytes:
    return _read_checked(path, 0o077, "key file")


def session_key_path(secret_key_file: str, keys_dir: Path) -> Path:
    """``[server] secret_key_file`` when set, else ``<keys dir>/session.key``."""
    return Path(secret_key_file or Path(keys_dir) / SESSION_KEY_FILE)


def check_session_key(path: Path) -> bytes:
    """The browser session key's bytes; refused when group/other can read it or when it is
    shorter than 32 bytes."""
    data = _read_private(Path(path))
    if len(data) < SESSION_KEY_BYTES:
        raise KeyRingError(
            f"{path}: session key has {len(data)} bytes, at least {SESSION_KEY_BYTES} are needed; "
            "remove it and run: slurm-jwt-bridge keys init"
        )
    return data


def load_session_key(path: Path) -> bytes:
    """The browser session key, created (0600, 32 random bytes) when missing, then checked."""
    path = Path(path)
    if not path.exists():
        try:
            atomic_write(path, secrets.token_bytes(SESSION_KEY_BYTES), 0o600)
        except OSError as exc:
            raise KeyRingError(
                f"{path}: session key missing and cannot be created ({exc.strerror}); "
                "run: slurm-jwt-bridge keys init"
            ) from None
    return check_session_key(path)


class KeyRing:
    """An immutable snapshot of a keys directory, loaded and checked once."""

    def __init__(self, directory: Path, rsa_keys: list[RsaKey], hs256: bytes | None) -> None:
        self.directory = directory
        self.rsa_keys = tuple(rsa_keys)
        self.hs256 = hs256
        self._jwks_cache: dict[int, tuple[bytes, str]] = {}
        self.active = next((k for k in self.rsa_keys if k.state == "active"), None)
        self.next = next((k for k in self.rsa_keys if k.state == "next"), None)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> KeyRing:
        """Load and check every key file; raise KeyRingError with a one-line reason."""
        d = Path(directory)
        if not d.is_dir():
            raise KeyRingError(
                f"{d}: keys directory does not exist (run: slurm-jwt-bridge keys init)"
            )
        check_keys_dir(d)
        meta = _read_ring(d)
        keys = []
        for entry in meta["keys"]:
            path = d / f"rs256-{entry['kid']}.pem"
            raw = _read_private(path)
            try:
                key = serialization.load_pem_private_key(raw, password=None)
            except (ValueError, TypeError) as exc:
                raise KeyRingError(f"{path}: not a PEM private key ({exc})") from None
            if not isinstance(key, rsa.RSAPrivateKey):
                raise KeyRingError(f"{path}: not an RSA private key")
            if rsa_kid(key.public_key()) != entry["kid"]:
                raise KeyRingError(f"{path}: key does not match its kid {entry['kid']}")
            keys.append(
                RsaKey(
                    kid=entry["kid"],
                    state=entry["state"],
                    bits=key.key_size,
                    created=int(entry["created"]),
                    activated=entry.get("activated"),
                    retired=entry.get("retired"),
                    publish_until=entry.get("publish_until"),
                    private_key=key,
                )
            )
        hs_path = d / HS256_FILE
        hs256 = None
        if hs_path.exists() or hs_path.is_symlink():
            hs256 = _read_private(hs_path)
            if len(hs256) < HS256_MIN_BYTES:
                raise KeyRingError(
                    f"{hs_path}: HS256 key has {len(hs256)} bytes, "
                    f"at least {HS256_MIN_BYTES} needed"
                )
        if not keys and hs256 is None:
            raise KeyRingError(f"{d}: no keys (run: slurm-jwt-bridge keys init --keys-dir {d})")
        return cls(d, keys, hs256)

    def published(self, now: float | None = None) -> list[RsaKey]:
        now = time.time() if now is None else now
        order = {"next": 0, "active": 1, "retired": 2}
        keys = [k for k in self.rsa_keys if k.published_at(now)]
        return sorted(keys, key=lambda k: (order[k.state], -(k.retired or 0)))

    def jwks(self, now: float | None = None) -> dict[str, list[dict[str, str]]]:
        """The JWKS in the shape slurmctld reads: {"keys": [RSA, RS256, kid, n, e, ...]}."""
        return {"keys": [k.public_jwk() for k in self.published(now)]}

    def jwks_document(self, now: float | None = None) -> tuple[bytes, str]:
        """(body, unquoted etag) of the JWKS, cached per published key set."""
        published = self.published(now)
        cache_key = hash(tuple(k.kid for k in published))
        hit = self._jwks_cache.get(cache_key)
        if hit is None:
            body = (
                json.dumps({"keys": [k.public_jwk() for k in published]}, indent=2) + "\n"
            ).encode()
            etag = hashlib.sha256(body).hexdigest()[:32]
            hit = self._jwks_cache[cache_key] = (body, etag)
        return hit

    def fingerprint(self) -> str:
        """Changes whenever the ring's content changes (used to detect reloads)."""
        h = hashlib.sha256()
        for k in self.rsa_keys:
            h.update(f"{k.kid}:{k.state}:{k.publish_until};".encode())
        h.update(hashlib.sha256(self.hs256 or b"").digest())
        return h.hexdigest()


# ---------------------------------------------------------------- ring.json


def _read_ring(d: Path) -> dict[str, Any]:
    path = d / RING_FILE
    if not path.exists() and not path.is_symlink():
        return {"version": 1, "keys": []}
    raw = _read_checked(path, 0o022, "the key ring metadata")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise KeyRingError(f"{path}: unreadable key ring metadata ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyRingError(f"{path}: unexpected content (no 'keys' list)")
    for entry in data["keys"]:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("kid"), str)
            or entry.get("state") not in STATES
            or not isinstance(entry.get("created"), int)
        ):
            raise KeyRingError(f"{path}: malformed key entry {str(entry)[:60]}")
    states = [e["state"] for e in data["keys"]]
    if states.count("active") > 1 or states.count("next") > 1:
        raise KeyRingError(f"{path}: more than one active or next key")
    return data


def _write_ring(d: Path, data: dict[str, Any]) -> None:
    atomic_write(d / RING_FILE, (json.dumps(data, indent=2) + "\n").encode(), 0o644)


# atomic_write's temp files: "." + the target's name + "." + mkstemp's random part.
_TEMP_FILE = re.compile(r"\.(rs256-[^/]+\.pem|jwt_hs256\.key|session\.key|ring\.json)\.\w+")


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """Serialize changes to one keys directory between processes.

    Every writer holds this lock, so a temp file found while holding it was left by a writer
    that died mid-write (possibly holding private key material): it is removed first."""
    check_keys_dir(d)
    with open(d / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            for entry in os.scandir(d):
                if _TEMP_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    log.warning("%s: removed %s, left by an interrupted write", d, entry.name)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- changes


def _new_rsa(d: Path, bits: int, state: str, now: int) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    kid = rsa_kid(key.public_key())
    atomic_write(d / f"rs256-{kid}.pem", _private_pem(key), 0o600)
    entry: dict[str, Any] = {"kid": kid, "state": state, "created": now}
    if state == "active":
        entry["activated"] = now
    return entry


def _prepare_dir(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True, mode=0o700)


def init_keys(directory: str | os.PathLike[str], bits: int = 2048) -> list[str]:
    """Create what is missing: an active key, a next key and the HS256 key.

    Never overwrites an existing key. Returns a line per thing created.
    """
    d = Path(directory)
    check_owner(d)
    _prepare_dir(d)
    created: list[str] = []
    with _locked(d):
        ring = _read_ring(d)
        now = int(time.time())
        states = {e["state"] for e in ring["keys"]}
        if "active" not in states:
            entry = _new_rsa(d, bits, "active", now)
            ring["keys"].append(entry)
            created.append(f"created active RS256 key {entry['kid']}")
        if "next" not in states:
            entry = _new_rsa(d, bits, "next", now)
            ring["keys"].append(entry)
            created.append(f"created next RS256 key {entry['kid']}")
        if created:
            _write_ring(d, ring)
        hs = d / HS256_FILE
        if not hs.exists():
            atomic_write(hs, secrets.token_bytes(HS256_DEFAULT_BYTES), 0o600)
            created.append(f"created HS256 key {hs}")
        session = d / SESSION_KEY_FILE
        if not session.exists():
            atomic_write(session, secrets.token_bytes(SESSION_KEY_BYTES), 0o600)
            created.append(f"created browser session key {session}")
    return created


def check_owner(directory: str | os.PathLike[str]) -> None:
    """Refuse to change a keys directory as anyone but its owner.

    A key file written by root (0600) cannot be read by the service: it keeps signing with its
    old ring, and the next rotation would activate a key that was never published.
    """
    d = Path(directory)
    try:
        owner = d.stat().st_uid
    except FileNotFoundError:
        return  # created by this command, owned by its caller
    me = os.geteuid()
    if owner != me:
        raise KeyRingError(
            f"{d}: owned by {_user_name(owner)}, not by {_user_name(me)}: run key commands as "
            f"the owner, e.g. runuser -u {_user_name(owner)} -- slurm-jwt-bridge ..."
        )


def rotate_keys(
    directory: str | os.PathLike[str],
    max_lifetime: int,
    margin: int,
    bits: int = 2048,
    *,
    min_next_age: int = 0,
    force: bool = False,
    published_kids: set[str] | None = None,
) -> list[str]:
    """next -> active, active -> retired (published until its tokens expired), new next.

    The next key becomes active only once it can have reached slurmctld: the whole ring must
    load (every key readable and valid), the next key must have been published for
    ``min_next_age`` seconds, and, when ``published_kids`` is given (the JWKS the bridge
    serves), be among them. ``force`` skips the age rule only.
    """
    d = Path(directory)
    check_owner(d)
    with _locked(d):
        ring = _read_ring(d)
        now = int(time.time())
        nxt = next((e for e in ring["keys"] if e["state"] == "next"), None)
        if nxt is None:
            raise KeyRingError(
                f"{d}: no next key to promote (a next key must be published before it signs; "
                "run: slurm-jwt-bridge keys init)"
            )
        KeyRing.load(d)  # every key file readable and matching its kid, or a one-line error
        age = now - int(nxt["created"])
        if age < min_next_age and not force:
            raise KeyRingError(
                f"next key {nxt['kid']} was published {age} s ago, less than [keys] "
                f"min_next_age = {min_next_age} s: slurmctld may not have it yet (sync the "
                "JWKS to the controller and wait, or rotate --force)"
            )
        if published_kids is not None and nxt["kid"] not in published_kids:
            raise KeyRingError(
                f"next key {nxt['kid']} is not in the JWKS the bridge serves: the service has "
                "not loaded it (check its log and /readyz), so slurmctld cannot have it"
            )
        lines = []
        for e in ring["keys"]:
            if e["state"] == "active":
                e["state"] = "retired"
                e["retired"] = now
                e["publish_until"] = now + max_lifetime + margin
                lines.append(f"retired {e['kid']} (published until {e['publish_until']})")
        nxt["state"] = "active"
        nxt["activated"] = now
        lines.append(
            f"activated {nxt['kid']}"
            + (f" (forced, published {age} s)" if force and age < min_next_age else "")
        )
        new = _new_rsa(d, bits, "next", now)
        ring["keys"].append(new)
        lines.append(f"created next {new['kid']}")
        _write_ring(d, ring)
    return lines


def prune_keys(directory: str | os.PathLike[str], now: float | None = None) -> list[str]:
    """Remove retired keys whose every token has expired."""
    d = Path(directory)
    check_owner(d)
    now = time.time() if now is None else now
    with _locked(d):
        ring = _read_ring(d)
        keep, gone = [], []
        for e in ring["keys"]:
            if e["state"] == "retired" and (e.get("publish_until") or 0) <= now:
                gone.append(e)
            else:
                keep.append(e)
        if gone:
            ring["keys"] = keep
            _write_ring(d, ring)
            for e in gone:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(d / f"rs256-{e['kid']}.pem")
    return [f"pruned {e['kid']}" for e in gone]


def revoke_key(directory: str | os.PathLike[str], kid: str, bits: int = 2048) -> list[str]:
    """Remove an RS256 key at once (after a theft): out of ring.json and the JWKS, pem deleted.

    A revoked active key is replaced by the next key (published already, so slurmctld knows it)
    and a new next key is made; a revoked next key is replaced by a new one. Tokens the key
    signed die when the controller's JWKS drops it (``jwks sync --reconfigure``)."""
    d = Path(directory)
    check_owner(d)
    with _locked(d):
        ring = _read_ring(d)
        entry = next((e for e in ring["keys"] if e["kid"] == kid), None)
        if entry is None:
            known = ", ".join(e["kid"] for e in ring["keys"]) or "none"
            raise KeyRingError(f"{d / RING_FILE}: no key {kid[:64]!r} (keys: {known})")
        now = int(time.time())
        lines = [f"revoked {kid} (was {entry['state']})"]
        ring["keys"].remove(entry)
        if entry["state"] == "active":
            nxt = next((e for e in ring["keys"] if e["state"] == "next"), None)
            if nxt is None:
                nxt = _new_rsa(d, bits, "active", now)
                ring["keys"].append(nxt)
                lines.append(f"created active {nxt['kid']} (not yet in any JWKS: sync now)")
            else:
                nxt["state"], nxt["activated"] = "active", now
                lines.append(f"activated {nxt['kid']}")
        if entry["state"] in ("active", "next"):
            new = _new_rsa(d, bits, "next", now)
            ring["keys"].append(new)
            lines.append(f"created next {new['kid']}")
        _write_ring(d, ring)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(d / f"rs256-{kid}.pem")
    return lines


def import_hs256(source: str | os.PathLike[str], directory: str | os.PathLike[str]) -> str:
    """Copy an existing Slurm jwt_key file byte for byte (trailing newline included)."""
    src = Path(source)
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise KeyRingError(f"{src}: cannot read: {exc.strerror}") from None
    if len(data) < HS256_MIN_BYTES:
        raise KeyRingError(
            f"{src}: {len(data)} bytes; an HS256 key needs at least {HS256_MIN_BYTES}"
        )
    d = Path(directory)
    check_owner(d)
    _prepare_dir(d)
    with _locked(d):
        dest = d / HS256_FILE
        if dest.exists() and dest.read_bytes() != data:
            raise KeyRingError(
                f"{dest}: a different HS256 key already exists; HS256 cannot rotate without "
                "invalidating every token it signed: move it away first if that is intended"
            )
        atomic_write(dest, data, 0o600)
    return f"imported {len(data)}-byte HS256 key into {dest}"


# ---------------------------------------------------------------- live reloading


class KeyRingSource:
    """Hands out the current KeyRing; reloads when the directory changes.

    A reload that fails keeps the last good ring in service (and remembers the error), so a
    half-written Secret update or a bad file never stops token minting.
    """

    def __init__(
        self,
        directory: Path,
        check_interval: float = 2.0,
        on_reload_error: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.check_interval = check_interval
        self.on_reload_error = on_reload_error
        self._lock = threading.Lock()
        self._ring = KeyRing.load(self.directory)
        self._stamp = self._dir_stamp()
        self._checked = time.monotonic()
        self.last_error: str | None = None

    def _dir_stamp(self) -> tuple[Any, ...]:
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
            return tuple(
                (e.name, e.stat().st_mtime_ns, e.stat().st_ctime_ns, e.stat().st_size)
                for e in entries
                if not e.name.startswith(".")
            )
        except OSError:
            return ()

    def current(self) -> KeyRing:
        if time.monotonic() - self._checked >= self.check_interval:
            self.maybe_reload()
        return self._ring

    def maybe_reload(self, force: bool = False) -> bool:
        """Reload if the directory changed; return True when a new ring is in service."""
        with self._lock:
            self._checked = time.monotonic()
            stamp = self._dir_stamp()
            if not force and stamp == self._stamp:
                return False
            try:
                ring = KeyRing.load(self.directory)
            except KeyRingError as exc:
                if str(exc) != self.last_error:
                    log.error("key ring reload failed, still serving the previous ring: %s", exc)
                self.last_error = str(exc)
                if self.on_reload_error is not None:
                    self.on_reload_error(str(exc))
                return False
            self._stamp = stamp
            self.last_error = None
            changed = ring.fingerprint() != self._ring.fingerprint()
            self._ring = ring
            return changed
