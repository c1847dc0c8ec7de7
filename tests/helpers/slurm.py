"""Start real Slurm clusters for integration tests.

Why: the bridge is only correct if a real slurmctld accepts the tokens it mints, so the tests run
real daemons: Slurm 22.05 from the host's Debian bookworm packages, Slurm 24.11 from a cached
Debian trixie chroot and Slurm 26.05 from a cached Debian sid chroot. All can run at once (own
ports, ClusterName, state and munged socket).

Standard library only at import time, so `python3 tests/helpers/slurm.py --ensure-chroot` works
without the project's virtualenv (scripts/install-system-deps.sh calls it).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

try:
    from tests.helpers.ports import free_port
except ModuleNotFoundError:  # run as a script (scripts/install-system-deps.sh)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.helpers.ports import free_port

CACHE_ROOT = Path("/var/cache/slurm-jwt-bridge")
DEFAULT_SID_CHROOT = CACHE_ROOT / "sid-chroot"
SID_CHROOT_ENV = "SLURM_JWT_BRIDGE_SID_CHROOT"
SID_SUITE = "sid"
TRIXIE_CHROOT_ENV = "SLURM_JWT_BRIDGE_TRIXIE_CHROOT"
# The Debian suite whose packages give each chrooted Slurm version (22.05 runs on the host).
CHROOT_SUITES = {"24.11": "trixie", "26.05": SID_SUITE}
CHROOT_ENVS = {"trixie": TRIXIE_CHROOT_ENV, SID_SUITE: SID_CHROOT_ENV}
CHROOT_PACKAGES = (
    "slurmctld",
    "slurmd",
    "slurmrestd",
    "slurm-client",
    "slurm-wlm-jwt-plugin",
    "munge",
    "procps",
)
# Files whose presence (plus the marker) tells a finished chroot from a half-built one.
CHROOT_REQUIRED_FILES = (
    "usr/sbin/slurmctld",
    "usr/sbin/slurmd",
    "usr/sbin/slurmrestd",
    "usr/bin/scontrol",
    "usr/bin/sinfo",
    "usr/sbin/munged",
    "usr/bin/setpriv",
    "usr/sbin/useradd",
)
COMPLETE_MARKER = ".slurm-jwt-bridge-complete"

REST_USER = "slurmrest"
# Per-run directories live here, as seen by the daemons (inside the chroot for 26.05). /run is
# root-owned and world-traversable, unlike pytest's 0700 tmp dirs, so munge/slurmrest can use it.
RUN_BASE = "/run/slurm-jwt-bridge"

API_VERSIONS = {"22.05": "v0.0.38", "24.11": "v0.0.42", "26.05": "v0.0.44"}
# Without slurmdbd, slurmrestd must only load the slurmctld-side OpenAPI plugins.
RESTD_PLUGINS = {
    "22.05": "openapi/v0.0.38",
    "24.11": "openapi/slurmctld",
    "26.05": "openapi/slurmctld",
}

TERMINAL_JOB_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)

_DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SlurmStartError(RuntimeError):
    """A Slurm daemon failed to start or become ready; the message carries the log tails."""


# --------------------------------------------------------------------------------------------
# small utilities


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Serialise chroot builds, mounts and user edits across processes (pytest-xdist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_token(
    key: bytes, username: str, lifespan: int = 300, extra: dict[str, Any] | None = None
) -> str:
    """Mint an scontrol-style HS256 token with the stdlib (readiness probe only); ``extra``
    claims (identity claims for use_jwt_client_ids_only) follow ``sun``."""
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"exp": now + lifespan, "iat": now, "sun": username, **(extra or {})}
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = _b64url(hmac.new(key, signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{sig}"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<unreadable: {exc}>"
    return "\n".join(data[-lines:])


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (zombies of non-children are reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stat_field(pid: int, index: int) -> int | None:
    """Field of /proc/PID/stat counted after the ')' of comm (0 = state, 3 = session, 19 =
    starttime)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[index])
    except (OSError, ValueError, IndexError):
        return None


def _session_of(pid: int) -> int | None:
    return _stat_field(pid, 3)


def _start_time(pid: int) -> int | None:
    """Process start time in clock ticks: tells a recorded pid from a reused one."""
    return _stat_field(pid, 19)


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pids_rooted_in(root: Path) -> list[int]:
    """Processes whose root directory is `root` or below (i.e. running in that chroot)."""
    prefix = str(root)
    found = []
    for pid in _all_pids():
        try:
            r = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if (r == prefix or r.startswith(prefix + "/")) and _pid_alive(pid):
            found.append(pid)
    return found


def _terminate_pid(pid: int, popen: subprocess.Popen | None = None, timeout: float = 10) -> None:
    """SIGTERM one pid we started, then SIGKILL after `timeout`; reap it if it is our child."""

    def gone() -> bool:
        if popen is not None and popen.pid == pid:
            return popen.poll() is not None
        return not _pid_alive(pid)

    if gone():
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if gone():
                return
            time.sleep(0.05)


def _pids_using(path: Path) -> set[int]:
    """Processes with their cwd, executable or an open file under `path` (not ourselves).

    Used to find what a cluster run left behind (slurmstepd, job tasks) without going by name.
    """
    prefix = str(path).rstrip("/") + "/"
    found = set()
    me = os.getpid()
    for pid in _all_pids():
        if pid == me:
            continue
        links = [f"/proc/{pid}/cwd", f"/proc/{pid}/exe"]
        with contextlib.suppress(OSError):
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target.startswith(prefix):
                found.add(pid)
                break
    return {p for p in found if _pid_alive(p)}


def _kill_run_leftovers(run_dir: Path, sessions: Iterable[int] = ()) -> None:
    """Kill processes using `run_dir` and everything in their sessions (a job's tasks share
    slurmstepd's session), plus the given sessions of daemons we started. Never our own."""
    found = _pids_using(run_dir)
    own_session = _session_of(os.getpid())
    sids = {_session_of(p) for p in found} | set(sessions)
    # A live session leader that does not itself use the run dir is somebody else's session.
    sids = {
        sid for sid in sids if sid and sid != own_session and (sid in found or not _pid_alive(sid))
    }
    victims = found | {p for p in _all_pids() if _session_of(p) in sids}
    victims.discard(os.getpid())
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in victims:
        _terminate_pid(pid, timeout=3)


def _mountpoints() -> list[str]:
    """Mount points from /proc/self/mountinfo, octal escapes decoded, in mount order."""
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            field = line.split()[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field))
    return points


def _unmount_under(path: Path) -> None:
    """Unmount everything at or below `path`, deepest first (leftovers of crashed runs)."""
    prefix = str(path)
    for point in reversed(_mountpoints()):
        if point == prefix or point.startswith(prefix + "/"):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], check=True, capture_output=True)


def _remove_tree(path: Path) -> None:
    """Remove a chroot-like tree safely: kill its processes, unmount, never cross filesystems."""
    if not path.exists():
        return
    for pid in _pids_rooted_in(path):
        _terminate_pid(pid, timeout=5)
    _unmount_under(path)
    if any(p == str(path) or p.startswith(str(path) + "/") for p in _mountpoints()):
        raise RuntimeError(f"refusing to delete {path}: something is still mounted below it")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


# --------------------------------------------------------------------------------------------
# users


def _read_db(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [ln.split(":") for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def _chroot_user(root: Path, name: str) -> tuple[int, int] | None:
    """(uid, gid) of `name` in the chroot's /etc/passwd (ids can differ from the host's)."""
    for fields in _read_db(root / "etc/passwd"):
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    return None


def _host_user(name: str) -> tuple[int, int] | None:
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _atomic_write(path: Path, text: str | bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mirror_user_into_chroot(root: Path, name: str) -> None:
    """Write the host's name/uid/gid for `name` into the chroot's passwd/group (+ home dir)."""
    import grp
    import pwd

    pw = pwd.getpwnam(name)
    gr = grp.getgrgid(pw.pw_gid)
    passwd = root / "etc/passwd"
    group = root / "etc/group"
    rows = _read_db(passwd)
    want = f"{name}:x:{pw.pw_uid}:{pw.pw_gid}::/home/{name}:/bin/bash"
    existing = [r for r in rows if r[0] == name]
    if existing and int(existing[0][2]) == pw.pw_uid and int(existing[0][3]) == pw.pw_gid:
        pass
    else:
        clash = [r for r in rows if r[0] != name and r[2] == str(pw.pw_uid)]
        if clash:
            raise RuntimeError(f"uid {pw.pw_uid} of {name} is {clash[0][0]} in chroot {root}")
        lines = [ln for ln in passwd.read_text().splitlines() if ln.split(":")[0] != name]
        _atomic_write(passwd, "\n".join([*lines, want]) + "\n", 0o644)
    grows = _read_db(group)
    gexisting = [r for r in grows if r[2] == str(gr.gr_gid)]
    if not gexisting:
        glines = [ln for ln in group.read_text().splitlines() if ln.split(":")[0] != gr.gr_name]
        _atomic_write(group, "\n".join([*glines, f"{gr.gr_name}:x:{gr.gr_gid}:"]) + "\n", 0o644)
    home = root / "home" / name
    if not home.exists():
        home.mkdir(parents=True, mode=0o755)
        os.chown(home, pw.pw_uid, pw.pw_gid)


def _ensure_rest_user(root: Path | None) -> tuple[int, int]:
    """Create the unprivileged slurmrestd account (host, or inside the chroot); return ids."""
    lookup = _host_user if root is None else (lambda name: _chroot_user(root, name))
    if lookup(REST_USER) is None:
        prefix = [] if root is None else ["chroot", str(root)]
        argv = ["useradd", "-r", "-M", "-U", "-d", "/nonexistent", "-s", "/usr/sbin/nologin"]
        subprocess.run([*prefix, *argv, REST_USER], check=True, capture_output=True)
    ids = lookup(REST_USER)
    assert ids is not None and ids[0] != 0
    return ids


def _add_host_user(name: str) -> None:
    """useradd a regular account (uid >= 1000, own group, home) unless it exists."""
    if _host_user(name) is None:
        subprocess.run(
            ["useradd", "-m", "-U", "-K", "UID_MIN=1000", "-s", "/bin/bash", name],
            check=True,
            capture_output=True,
        )


def ensure_test_users(users: Iterable[str], chroot: Path | None = None) -> None:
    """Create real local accounts (uid >= 1000) so slurmctld's getpwnam and job launch work.

    Idempotent. With `chroot`, the same name/uid/gid is mirrored into that chroot's passwd/group,
    since the 26.05 controller resolves users there.
    """
    users = tuple(users)
    with _flock(CACHE_ROOT / ".users.lock"):
        for name in users:
            _add_host_user(name)
        if chroot is not None:
            for name in users:
                _mirror_user_into_chroot(chroot, name)


def ensure_host_only_user(name: str, groups: Iterable[str] = ()) -> None:
    """A real account (uid >= 1000) on this host only, member of ``groups`` (created when
    missing): a user the chrooted controllers cannot look up, as with a controller without
    SSSD/LDAP. Idempotent."""
    with _flock(CACHE_ROOT / ".users.lock"):
        _add_host_user(name)
        for group in groups:
            if subprocess.run(["getent", "group", group], capture_output=True).returncode != 0:
                subprocess.run(
                    ["groupadd", "-K", "GID_MIN=1000", group], check=True, capture_output=True
                )
            subprocess.run(["usermod", "-a", "-G", group, name], check=True, capture_output=True)


# --------------------------------------------------------------------------------------------
# Debian chroots (Slurm 24.11 from trixie, 26.05 from sid)


def chroot_path(suite: str) -> Path:
    """Where the cached chroot of a Debian suite lives (env SLURM_JWT_BRIDGE_<SUITE>_CHROOT
    overrides)."""
    return Path(os.environ.get(CHROOT_ENVS[suite]) or CACHE_ROOT / f"{suite}-chroot").absolute()


def sid_chroot_path() -> Path:
    """Where the cached sid chroot lives (env SLURM_JWT_BRIDGE_SID_CHROOT overrides)."""
    return chroot_path(SID_SUITE)


def _chroot_complete(root: Path) -> bool:
    return (root / COMPLETE_MARKER).is_file() and all(
        (root / f).exists() for f in CHROOT_REQUIRED_FILES
    )


def ensure_chroot(suite: str) -> Path:
    """Return the Debian chroot of ``suite`` with Slurm, building it (~40 s, ~300 MB) if needed.

    Built in a temporary sibling directory and renamed into place only when finished, so an
    interrupted build never leaves a tree that looks complete. Incomplete trees are removed.
    """
    root = chroot_path(suite)
    if _chroot_complete(root):
        return root
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _flock(parent / f".{root.name}.lock"):
        if _chroot_complete(root):
            return root
        for stale in parent.glob(f".{root.name}.build-*"):
            if stale.is_dir():
                _remove_tree(stale)
        if root.exists():
            _remove_tree(root)
        tmp = parent / f".{root.name}.build-{os.getpid()}"
        log = parent / f".{root.name}.build.log"
        try:
            with open(log, "wb") as fh:
                proc = subprocess.run(
                    [
                        "debootstrap",
                        "--variant=minbase",
                        f"--include={','.join(CHROOT_PACKAGES)}",
                        suite,
                        str(tmp),  # debootstrap's own default mirror
                    ],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if proc.returncode != 0:
                raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{_tail(log)}")
            _finish_chroot(tmp, suite)
            os.rename(tmp, root)
        except BaseException:
            with contextlib.suppress(Exception):
                _remove_tree(tmp)
            raise
    return root


def ensure_sid_chroot() -> Path:
    """Return the Debian sid chroot with Slurm 26.05, building it if needed."""
    return ensure_chroot(SID_SUITE)


def _finish_chroot(tmp: Path, suite: str) -> None:
    """Post-debootstrap fixes shared by every run, then the completeness marker."""
    # Package scripts must not leave daemons running inside the build tree.
    for pid in _pids_rooted_in(tmp):
        _terminate_pid(pid, timeout=5)
    _unmount_under(tmp)
    (tmp / "etc/slurm").mkdir(parents=True, exist_ok=True)
    (tmp / "etc/slurm/cgroup.conf").write_text("CgroupPlugin=disabled\n")
    shutil.copyfile("/etc/hosts", tmp / "etc/hosts")
    with contextlib.suppress(subprocess.CalledProcessError):
        subprocess.run(["chroot", str(tmp), "apt-get", "clean"], check=True, capture_output=True)
    missing = [f for f in CHROOT_REQUIRED_FILES if not (tmp / f).exists()]
    if missing:
        raise RuntimeError(f"{suite} chroot lacks {missing}")
    version = subprocess.run(
        ["chroot", str(tmp), "dpkg-query", "-W", "-f=${Version}", "slurmctld"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    marker = {"suite": suite, "slurmctld": version, "built": int(time.time())}
    (tmp / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n")


def _mount_chroot(root: Path) -> None:
    """Bind /proc, /sys, /dev into the chroot unless already there (e.g. from a crashed run)."""
    shutil.copyfile("/etc/hosts", root / "etc/hosts")
    mounted = set(_mountpoints())
    for sub in ("proc", "sys", "dev"):
        target = root / sub
        target.mkdir(exist_ok=True)
        if str(target) not in mounted:
            subprocess.run(
                ["mount", "--bind", f"/{sub}", str(target)], check=True, capture_output=True
            )


def _unmount_chroot_if_idle(root: Path) -> None:
    """Unmount the chroot's binds once no process runs inside it (another cluster may)."""
    if _pids_rooted_in(root):
        return
    for sub in ("dev", "sys", "proc"):
        target = root / sub
        if str(target) in _mountpoints():
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _reap_stale_runs(run_base: Path) -> None:
    """Stop daemons of runs whose test process died without stop() (SIGKILL, OOM...).

    Each run records its owner and daemon pids with their start times in owner.json; only
    processes whose pid AND start time match the record are killed, then the run dir goes.
    """
    if not run_base.is_dir():
        return
    for run_dir in run_base.iterdir():
        record = run_dir / "owner.json"
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            if run_dir.is_dir() and time.time() - run_dir.stat().st_mtime > 300:
                shutil.rmtree(run_dir, ignore_errors=True)
            continue
        owner_pid, owner_start = info["owner"]
        if _pid_alive(owner_pid) and _start_time(owner_pid) == owner_start:
            continue
        for pid, start in info.get("daemons", {}).values():
            if _pid_alive(pid) and _start_time(pid) == start:
                _terminate_pid(pid, timeout=5)
        _kill_run_leftovers(run_dir, [pid for pid, _ in info.get("daemons", {}).values()])
        shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the cluster


def _slurm_version(prefix: list[str]) -> str:
    out = subprocess.run(
        [*prefix, "/usr/sbin/slurmctld", "-V"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot parse slurmctld -V output: {out!r}")
    return m.group(0)


class SlurmCluster:
    """One running Slurm cluster: munged, slurmctld, slurmd and slurmrestd started by us."""

    version: str
    api_version: str
    restd_url: str
    jwks_path: Path
    hs256_key_path: Path
    env: dict[str, str]

    def __init__(
        self,
        version: str,
        workdir: Path,
        chroot: Path | None,
        name: str,
        auth_alt_parameters: tuple[str, ...] = (),
    ) -> None:
        self.version = version
        # Extra AuthAltParameters after jwt_key and jwks (e.g. use_jwt_client_ids_only).
        self.auth_alt_parameters = auth_alt_parameters
        self.api_version = API_VERSIONS[version]
        self.workdir = Path(workdir)
        self.chroot = chroot
        self.cluster_name = name
        self.slurm_full_version = ""
        self.run_dir_in_cluster = f"{RUN_BASE}/{name}"
        self.run_dir = self.host_path(self.run_dir_in_cluster)
        self.conf_in_cluster = f"{self.run_dir_in_cluster}/slurm.conf"
        self.hs256_key_path = self.run_dir / "jwt_hs256.key"
        self.jwks_path = self.run_dir / "jwks.json"
        self.log_dir = self.run_dir / "log"
        self.env = {"SLURM_CONF": self.conf_in_cluster}
        self.ctld_port = free_port()
        self.slurmd_port = free_port()
        self.restd_port = free_port()
        self.restd_url = f"http://127.0.0.1:{self.restd_port}"
        self.hostname = socket.gethostname()
        self._procs: dict[str, subprocess.Popen] = {}
        self._pids: dict[str, int] = {}
        self._sessions: set[int] = set()
        self._hs256_key = b""
        self._stopped = False
        self._mounted = False
        self._restd_last = ""
        self._rest_ids: tuple[int, int] | None = None

    # ---- paths and command prefixes ----

    def host_path(self, path_in_cluster: str) -> Path:
        """Host path of a file as the daemons/jobs see it (inside the chroot for 26.05)."""
        if self.chroot is None:
            return Path(path_in_cluster)
        return self.chroot / str(path_in_cluster).lstrip("/")

    def _in(self, host: Path) -> str:
        """Inverse of host_path for paths under the run dir."""
        if self.chroot is None:
            return str(host)
        return "/" + str(host.relative_to(self.chroot))

    def _prefix(self, ids: tuple[int, int] | None = None, init_groups: bool = False) -> list[str]:
        """argv prefix: enter the chroot (26.05) and/or drop to uid/gid.

        Daemons get no supplementary groups; users get theirs (--init-groups), as on login.
        """
        prefix = ["chroot", str(self.chroot)] if self.chroot is not None else []
        if ids is not None:
            groups = "--init-groups" if init_groups else "--clear-groups"
            prefix += ["setpriv", f"--reuid={ids[0]}", f"--regid={ids[1]}", groups, "--"]
        return prefix

    def scontrol_argv(self) -> list[str]:
        """argv prefix running scontrol against this cluster; SLURM_CONF is in argv itself."""
        return [*self._prefix(), "/usr/bin/env", f"SLURM_CONF={self.conf_in_cluster}", "scontrol"]

    def run(
        self, argv: list[str], *, user: str | None = None, **kw: Any
    ) -> subprocess.CompletedProcess:
        """Run a Slurm client command (scontrol, sinfo, sbatch...) for this cluster.

        `user` runs it as that local account (via setpriv), e.g. sbatch as alice. The command
        gets a minimal environment (PATH, SLURM_CONF) so host SLURM_* variables cannot leak in;
        `env=` adds to it. Defaults: capture_output, text, timeout 60 s; check=True raises.
        """
        env = {"PATH": _DAEMON_PATH, "LANG": "C.UTF-8", **self.env}
        env.update(kw.pop("env", {}) or {})
        prefix = self._prefix()
        if user is not None:
            prefix = self._prefix(self._user_ids(user), init_groups=True)
            env.update({"USER": user, "LOGNAME": user, "HOME": f"/home/{user}"})
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run([*prefix, *argv], env=env, **kw)

    # ---- a client outside the munge perimeter ----

    def client_conf(self) -> str:
        """A client-side slurm.conf (path as the commands see it): the cluster's file without
        the AuthAltParameters line, so no key path reaches the client, made the way
        docs/slurm.md tells a site to (``grep -v '^AuthAltParameters='``)."""
        conf = (self.run_dir / "slurm.conf").read_text()
        lines = [ln for ln in conf.splitlines() if not ln.startswith("AuthAltParameters=")]
        _atomic_write(self.run_dir / "client.conf", "\n".join(lines) + "\n", 0o644)
        return f"{self.run_dir_in_cluster}/client.conf"

    def without_munge_argv(self, user: str) -> list[str]:
        """argv prefix running a Slurm client command as ``user`` where munge is unreachable.

        A new mount namespace (unshare -m) gets an empty tmpfs over this cluster's munge
        directory and over the default socket directories, so no munge socket exists for the
        command, while the daemons outside keep theirs. The command reads client_conf().
        SLURM_JWT, when set, passes through from the caller's environment; the prefix itself
        holds no secret.
        """
        masks = [str(self.run_dir / "munge")]
        for default in ("/run/munge", "/var/run/munge"):
            for where in {Path(default), self.host_path(default)}:
                if where.is_dir() and not where.is_symlink():
                    masks.append(str(where))
        script = (
            'while [ "$1" != -- ]; do mount -t tmpfs -o size=64k,mode=0755 sjb-no-munge "$1"; '
            'shift; done; shift; exec "$@"'
        )
        wrap = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-ec", script]
        return [
            *wrap,
            "sh",
            *masks,
            "--",
            *self._prefix(self._user_ids(user), init_groups=True),
            "/usr/bin/env",
            f"SLURM_CONF={self.client_conf()}",
            f"USER={user}",
            f"LOGNAME={user}",
            f"HOME=/home/{user}",
        ]

    def run_without_munge(
        self, argv: list[str], *, user: str, token: str | None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a Slurm client command as ``user`` with munge unreachable (without_munge_argv),
        with ``SLURM_JWT=token`` in its environment (none when ``token`` is None)."""
        env = {"PATH": _DAEMON_PATH, "LANG": "C.UTF-8"}
        if token is not None:
            env["SLURM_JWT"] = token
        return subprocess.run(
            [*self.without_munge_argv(user), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def _user_ids(self, name: str) -> tuple[int, int]:
        ids = _chroot_user(self.chroot, name) if self.chroot else _host_user(name)
        if ids is None:
            raise KeyError(f"no such user {name!r} for cluster {self.cluster_name}")
        return ids

    # ---- daemons ----

    def _spawn(
        self,
        name: str,
        argv: list[str],
        ids: tuple[int, int] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        env = {"PATH": _DAEMON_PATH, "LANG": "C.UTF-8", **self.env, **(extra_env or {})}
        with open(self.log_dir / f"{name}.stdout", "ab") as out:
            proc = subprocess.Popen(
                [*self._prefix(ids), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        self._procs[name] = proc
        self._pids[name] = proc.pid
        self._sessions.add(proc.pid)
        self._record_owner()

    def _record_owner(self) -> None:
        """Write owner.json so a later run can clean up after a crashed test process."""
        me = os.getpid()
        daemons = {n: [pid, _start_time(pid)] for n, pid in self._pids.items()}
        info = {"owner": [me, _start_time(me)], "daemons": daemons}
        with contextlib.suppress(OSError):
            _atomic_write(self.run_dir / "owner.json", json.dumps(info), 0o644)

    def _alive(self, name: str) -> bool:
        pid = self._pids.get(name)
        if pid is None:
            return False
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None
        return _pid_alive(pid)

    def _refresh_pid(self, name: str, pidfile: Path) -> None:
        """Follow a daemon that re-exec'd/forked itself (26.05 reconfigure) via its pidfile."""
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return
        # The pidfile may be stale after a crash: only follow it to a live daemon of that name.
        if _pid_alive(pid) and argv0.decode(errors="replace").endswith(name):
            if self._pids.get(name) != pid:
                self._pids[name] = pid
                self._record_owner()

    def _stop_daemon(self, name: str, timeout: float = 5) -> None:
        pid = self._pids.pop(name, None)
        proc = self._procs.pop(name, None)
        if pid is not None:
            _terminate_pid(pid, proc, timeout)
        if proc is not None and proc.pid != pid:
            _terminate_pid(proc.pid, proc, timeout)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)

    def logs(self, lines: int = 40) -> str:
        """Tails of every daemon log, for error messages.

        With -D, slurmctld/slurmd copy their log to stdout: only stdout lines missing from the
        log file (errors before it was opened) are shown.
        """
        files = [*sorted(self.log_dir.glob("*")), self.run_dir / "munge/munged.log"]
        parts = []
        for f in files:
            if not f.is_file():
                continue
            text = _tail(f, lines)
            twin = f.with_suffix(".log")
            if f.suffix == ".stdout" and twin.is_file():
                seen = set(twin.read_text(errors="replace").splitlines())
                text = "\n".join(ln for ln in text.splitlines() if ln not in seen)
            if text.strip():
                parts.append(f"----- {f.name} -----\n{text}")
        return "\n".join(parts)

    def _fail(self, what: str) -> SlurmStartError:
        return SlurmStartError(
            f"Slurm {self.version} cluster {self.cluster_name}: {what}\n{self.logs()}"
        )

    def _wait_for(
        self, what: str, check: Callable[[], bool], timeout: float, daemons: Iterable[str]
    ) -> None:
        daemons = tuple(daemons)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            dead = [d for d in daemons if not self._alive(d)]
            if dead:
                raise self._fail(f"{', '.join(dead)} exited while waiting for {what}")
            if check():
                return
            if time.monotonic() > deadline:
                raise self._fail(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _write_files(self, hs256_key: bytes, jwks_json: str) -> tuple[int, int]:
        """Fresh run dir: slurm.conf, key files (right owners/modes), munge key and dirs."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, mode=0o755)
        # munge, slurmrest and job users must traverse these (the files inside keep tight modes).
        os.chmod(self.run_dir, 0o755)  # noqa: S103
        os.chmod(self.run_dir.parent, 0o755)  # noqa: S103
        self._record_owner()
        for sub in ("state", "spool", "log"):
            (self.run_dir / sub).mkdir(mode=0o755)
        # jwt_key: raw bytes are the HMAC key; 0600 owned by SlurmUser (root).
        _atomic_write(self.hs256_key_path, hs256_key, 0o600)
        self.install_jwks(jwks_json)

        munge_ids = _chroot_user(self.chroot, "munge") if self.chroot else _host_user("munge")
        if munge_ids is None:
            raise self._fail("no munge account")
        mdir = self.run_dir / "munge"
        mdir.mkdir(mode=0o755)
        _atomic_write(mdir / "munge.key", secrets.token_bytes(1024), 0o400)
        for p in (mdir, mdir / "munge.key"):
            os.chown(p, *munge_ids)

        run = self.run_dir_in_cluster
        jwt_params = ",".join(
            [
                f"jwt_key={self._in(self.hs256_key_path)}",
                f"jwks={self._in(self.jwks_path)}",
                *self.auth_alt_parameters,
            ]
        )
        conf = f"""\
ClusterName={self.cluster_name}
SlurmctldHost={self.hostname}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={run}/munge/munge.socket.2
AuthAltTypes=auth/jwt
AuthAltParameters={jwt_params}
CredType=cred/munge
StateSaveLocation={run}/state
SlurmdSpoolDir={run}/spool
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd.pid
SlurmctldLogFile={run}/log/slurmctld.log
SlurmdLogFile={run}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
KillWait=2
InactiveLimit=0
MinJobAge=600
NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP
"""
        (self.run_dir / "slurm.conf").write_text(conf)
        os.chmod(self.run_dir / "slurm.conf", 0o644)
        # cgroup.conf is read from slurm.conf's directory; slurmd in a sandbox needs it disabled.
        if self.version != "22.05":
            (self.run_dir / "cgroup.conf").write_text("CgroupPlugin=disabled\n")
        return munge_ids

    def _start_munged(self, munge_ids: tuple[int, int]) -> None:
        m = f"{self.run_dir_in_cluster}/munge"
        self._spawn(
            "munged",
            [
                "/usr/sbin/munged",
                "-F",
                f"--key-file={m}/munge.key",
                f"--socket={m}/munge.socket.2",
                f"--pid-file={m}/munged.pid",
                f"--log-file={m}/munged.log",
                f"--seed-file={m}/munged.seed",
                "--num-threads=2",
            ],
            ids=munge_ids,
        )
        sock = self.run_dir / "munge/munge.socket.2"
        self._wait_for("munged socket", sock.exists, 15, ["munged"])

    def _start_slurmctld(self) -> None:
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i"])

    def _node_state(self) -> str:
        """Node state from sinfo, "" if the controller does not answer (yet)."""
        # sinfo itself retries for ~10 s against a dead port; a TCP probe answers at once.
        if not self._port_open(self.ctld_port):
            return ""
        try:
            out = self.run(["sinfo", "-h", "-N", "-o", "%T"], timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    def _restd_ready(self) -> bool:
        req = urllib.request.Request(
            f"{self.restd_url}/slurm/{self.api_version}/jobs",
            headers={
                "X-SLURM-USER-NAME": REST_USER,
                "X-SLURM-USER-TOKEN": _hs256_token(
                    self._hs256_key, REST_USER, extra=self._probe_identity()
                ),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                self._restd_last = f"{resp.status}"
                return resp.status == 200
        except urllib.error.HTTPError as exc:
            self._restd_last = f"{exc.code} {exc.read()[:300]!r}"
        except OSError as exc:
            self._restd_last = repr(exc)
        return False

    def _probe_identity(self) -> dict[str, Any]:
        """Identity claims for the readiness probe's user where the controller requires them."""
        if "use_jwt_client_ids_only" not in self.auth_alt_parameters:
            return {}
        uid, gid = self._rest_ids
        # 26.05 refuses an empty gecos.
        ident = {
            "name": REST_USER,
            "gecos": REST_USER,
            "dir": "/nonexistent",
            "shell": "/bin/false",
        }
        return {"uid": uid, "gid": gid, "id": {**ident, "gids": [gid]}}

    def _prepare(self, hs256_key: bytes, jwks_json: str) -> tuple[int, int]:
        """Write the run dir and create the slurmrestd account; return munge's ids."""
        self._hs256_key = hs256_key
        munge_ids = self._write_files(hs256_key, jwks_json)
        self._rest_ids = _ensure_rest_user(self.chroot)
        return munge_ids

    def _start_slurm(self, timeout: float) -> None:
        """Start slurmctld, slurmd, slurmrestd (munged already runs) and wait until usable."""
        self._start_slurmctld()
        self._spawn("slurmd", ["/usr/sbin/slurmd", "-D"])
        restd_argv = [
            "/usr/sbin/slurmrestd",
            "-a",
            "rest_auth/jwt",
            "-s",
            RESTD_PLUGINS[self.version],
            f"127.0.0.1:{self.restd_port}",
        ]
        self._spawn("slurmrestd", restd_argv, ids=self._rest_ids, extra_env={"SLURM_JWT": "daemon"})
        daemons = ("munged", "slurmctld", "slurmd", "slurmrestd")
        self._wait_for("node idle in sinfo", lambda: self._node_state() == "idle", timeout, daemons)
        self._restd_last = ""
        try:
            self._wait_for("slurmrestd to answer 200", self._restd_ready, timeout, daemons)
        except SlurmStartError as exc:
            raise SlurmStartError(f"{exc}\nlast slurmrestd answer: {self._restd_last}") from None
        self._refresh_pid("slurmctld", self.run_dir / "slurmctld.pid")

    # ---- public operations ----

    def scontrol_token(self, username: str, lifespan: int) -> str:
        """Real `scontrol token` (the byte-level reference for what we mint)."""
        out = self.run(
            ["scontrol", "token", f"username={username}", f"lifespan={lifespan}"], check=True
        )
        m = re.search(r"SLURM_JWT=(\S+)", out.stdout)
        if not m:
            raise RuntimeError(f"unexpected scontrol token output: {out.stdout!r} {out.stderr!r}")
        return m.group(1)

    def install_jwks(self, jwks_json: str) -> None:
        """Atomically replace the JWKS file slurmctld reads (0644: 23.11+ rejects o+w)."""
        _atomic_write(self.jwks_path, jwks_json, 0o644)

    def install_hs256_key(self, key: bytes) -> None:
        """Atomically replace the jwt_key file (0600, root); takes effect on restart."""
        _atomic_write(self.hs256_key_path, key, 0o600)
        self._hs256_key = key

    def reconfigure(self) -> None:
        """`scontrol reconfigure`, then wait until the controller answers again.

        26.05 re-execs slurmctld on reconfigure (reloading the JWKS); 22.05 does not reload it.
        """
        out = self.run(["scontrol", "reconfigure"])
        if out.returncode != 0:
            raise self._fail(f"scontrol reconfigure failed: {out.stdout}{out.stderr}")
        time.sleep(0.2)
        self._wait_for("slurmctld after reconfigure", self._ctld_responding, 30, ())
        self._refresh_pid("slurmctld", self.run_dir / "slurmctld.pid")
        self._refresh_pid("slurmd", self.run_dir / "slurmd.pid")

    def _ctld_responding(self) -> bool:
        state = self._node_state()
        return bool(state) and not state.endswith("*") and state not in ("down", "unknown")

    def restart_slurmctld(self) -> None:
        """Stop slurmctld by pid and start it again (22.05 reads the JWKS only at start).

        The restarted controller shows the node as unknown until slurmd re-registers (~3 s);
        a SIGHUP to our slurmd makes it re-register at once.
        """
        self._refresh_pid("slurmctld", self.run_dir / "slurmctld.pid")
        self._stop_daemon("slurmctld")
        self._start_slurmctld()
        self._wait_for(
            "slurmctld port", lambda: self._port_open(self.ctld_port), 30, ("slurmctld",)
        )
        self._wait_for("slurmctld answering", lambda: bool(self._node_state()), 30, ("slurmctld",))
        if not self._ctld_responding() and "slurmd" in self._pids:
            os.kill(self._pids["slurmd"], signal.SIGHUP)
        self._wait_for(
            "node responding after slurmctld restart",
            self._ctld_responding,
            60,
            ("slurmctld", "slurmd"),
        )
        self._refresh_pid("slurmctld", self.run_dir / "slurmctld.pid")

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def wait_job(self, job_id: int, timeout: float = 60) -> str:
        """Poll until the job reaches a terminal state; return it (COMPLETED, FAILED...)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = self.run(["scontrol", "show", "job", "-o", str(job_id)], timeout=10)
            m = re.search(r"\bJobState=(\S+)", out.stdout)
            if m:
                state = m.group(1)
                if state in TERMINAL_JOB_STATES:
                    return state
            elif out.returncode != 0:
                raise RuntimeError(f"job {job_id}: {out.stdout}{out.stderr}")
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} still {state or 'unknown'} after {timeout}s")

    def _cancel_all_jobs(self) -> None:
        out = self.run(["squeue", "-h", "-o", "%A"], timeout=10)
        ids = out.stdout.split() if out.returncode == 0 else []
        if not ids:
            return
        self.run(["scancel", *ids], timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = self.run(["squeue", "-h", "-o", "%A"], timeout=10)
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every process this cluster started (by pid), unmount, keep logs in workdir."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            if self._alive("slurmctld"):
                self._cancel_all_jobs()
        for name in ("slurmctld", "slurmd"):
            self._refresh_pid(name, self.run_dir / f"{name}.pid")
        # slurmd lingers ~10 s on SIGTERM when slurmctld is already gone (failed start).
        ctld_up = self._alive("slurmctld")
        for name in ("slurmrestd", "slurmd", "slurmctld", "munged"):
            self._stop_daemon(name, 5 if ctld_up or name != "slurmd" else 1)
        # Leftovers: slurmstepd and job tasks that outlived scancel, helpers in our sessions.
        _kill_run_leftovers(self.run_dir, self._sessions)
        if self.chroot is not None and self._mounted:
            with _flock(CACHE_ROOT / ".mount.lock"):
                _unmount_chroot_if_idle(self.chroot)
        with contextlib.suppress(OSError):
            keep = self.workdir / "logs"
            keep.mkdir(parents=True, exist_ok=True)
            for f in [
                *self.log_dir.glob("*"),
                self.run_dir / "munge/munged.log",
                self.run_dir / "slurm.conf",
            ]:
                if f.is_file():
                    shutil.copyfile(f, keep / f.name)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        _live_clusters.discard(self)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SlurmCluster {self.version} {self.cluster_name} {self.restd_url}>"


_live_clusters: set[SlurmCluster] = set()


@atexit.register
def _stop_leftover_clusters() -> None:
    """Never leave daemons behind if a test run forgets stop() or dies on an exception."""
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.stop()


def start_cluster(
    version: str,
    workdir: Path,
    hs256_key: bytes,
    jwks_json: str,
    users: tuple[str, ...] = ("alice", "bob"),
    timeout: float = 60,
    auth_alt_parameters: tuple[str, ...] = (),
) -> SlurmCluster:
    """Start a fresh real Slurm cluster ("22.05" native, "24.11" in the trixie chroot or "26.05"
    in the sid chroot).

    Returns once the node is idle and slurmrestd answers an authenticated request with 200.
    On failure every started daemon is stopped and SlurmStartError carries the log tails.
    """
    if version not in API_VERSIONS:
        raise ValueError(f"unsupported Slurm version {version!r}; use one of {list(API_VERSIONS)}")
    suite = CHROOT_SUITES.get(version)
    chroot = ensure_chroot(suite) if suite else None
    full = _slurm_version(["chroot", str(chroot)] if chroot else [])
    if not full.startswith(version + "."):
        raise RuntimeError(f"wanted Slurm {version}, found {full} ({chroot or 'host'})")
    ensure_test_users(users, chroot)
    _reap_stale_runs(Path(chroot or "/") / RUN_BASE.lstrip("/"))
    name = f"sjb{version.replace('.', '')}{secrets.token_hex(4)}"
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = SlurmCluster(version, workdir, chroot, name, auth_alt_parameters)
    cluster.slurm_full_version = full
    _live_clusters.add(cluster)
    try:
        munge_ids = cluster._prepare(hs256_key, jwks_json)
        # Mount and start munged under one lock so a concurrent stop() of another 26.05 cluster
        # never unmounts the chroot between our mount and our first process inside it.
        lock = _flock(CACHE_ROOT / ".mount.lock") if chroot else contextlib.nullcontext()
        with lock:
            if chroot is not None:
                _mount_chroot(chroot)
                cluster._mounted = True
            cluster._start_munged(munge_ids)
        cluster._start_slurm(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main(argv: list[str] | None = None) -> int:
    """CLI for setup scripts that have no virtualenv: build the chroots / create users."""
    suites = sorted(set(CHROOT_SUITES.values()))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ensure-chroot",
        nargs="*",
        choices=suites,
        metavar="SUITE",
        help=f"build the chroots of these suites if needed (default: all of {', '.join(suites)})",
    )
    ap.add_argument("--ensure-users", nargs="*", metavar="USER", help="create test accounts")
    args = ap.parse_args(argv)
    if args.ensure_chroot is not None:
        for suite in args.ensure_chroot or suites:
            root = ensure_chroot(suite)
            print(f"{suite} chroot ready: {root} {(root / COMPLETE_MARKER).read_text().strip()}")
    if args.ensure_users is not None:
        users = tuple(args.ensure_users) or ("alice", "bob")
        ensure_test_users(users)
        for suite in suites:
            if _chroot_complete(chroot_path(suite)):
                ensure_test_users(users, chroot_path(suite))
        print(f"users ready: {', '.join(users)}")
    if args.ensure_chroot is None and args.ensure_users is None:
        ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
