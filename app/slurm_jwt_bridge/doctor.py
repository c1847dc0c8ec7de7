"""``slurm-jwt-bridge doctor``: why does Slurm refuse this token?

Run on the controller host. It reads slurm.conf the way slurmctld does for auth/jwt, checks the
JWKS and HS256 key files with Slurm's own rules (per version), compares the JWKS file with what
the bridge publishes, and, given a token, explains what slurmctld will say about it. Every
finding is one line with what to do; nothing here changes a file.

The rules are those of /src/plugins/auth/jwt/auth_jwt.c per release (see docs/slurm.md):
- header ``alg`` HS256 → ``jwt_key`` file, RS256 → ``jwks`` file with the exact ``kid``;
- only an integer ``exp`` is checked, without leeway;
- the user comes from ``sun``, else ``username``, else (23.02+) ``userclaimfield``;
- 22.05 (libjwt 1.10) refuses a header ``typ`` other than ``JWT``;
- 22.05 reads the JWKS only at start, 23.11+ also at ``scontrol reconfigure``;
- 23.11+ refuses to start with a ``jwt_key`` file that has any "other" permission bit, or a
  ``jwks`` file writable by other;
- 26.05 ``use_jwt_client_ids[_only]`` take ``uid``, ``gid`` and ``id`` from the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm

from .jwks_file import slurm_jwks_problems
from .names import HS256, RS256

OK, WARN, FAIL = "ok", "warn", "FAIL"
DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
MASTER_KEY = "a token for root or the SlurmUser may act as any user through slurmrestd"


@dataclass(frozen=True)
class Finding:
    level: str
    subject: str
    message: str

    def line(self) -> str:
        return f"{self.level:<4} {self.subject}: {self.message}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: str, subject: str, message: str) -> None:
        self.findings.append(Finding(level, subject, _printable(message)))

    @property
    def failed(self) -> bool:
        return any(f.level == FAIL for f in self.findings)


def _printable(text: str) -> str:
    """Text from files and tokens, safe to print on a terminal (no control characters)."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


# ---------------------------------------------------------------- slurm.conf


@dataclass(frozen=True)
class SlurmVersion:
    major: int
    minor: int
    text: str

    @classmethod
    def parse(cls, text: str) -> SlurmVersion:
        m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
        if not m:
            raise ValueError(f"not a Slurm version: {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), m.group(0))

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)


@dataclass(frozen=True)
class JwtConf:
    """What slurm.conf says about auth/jwt (paths as slurmctld sees them)."""

    conf_path: Path
    conf_inside: str
    alt_types: tuple[str, ...]
    params: dict[str, str]
    slurm_user: str
    state_save: str

    @property
    def enabled(self) -> bool:
        return "auth/jwt" in self.alt_types

    @property
    def jwks(self) -> str | None:
        return self.params.get("jwks")

    @property
    def jwt_key(self) -> str | None:
        """The HS256 key file; Slurm's default when neither key nor JWKS is named."""
        if "jwt_key" in self.params:
            return self.params["jwt_key"]
        if self.jwks is None:
            return f"{self.state_save.rstrip('/')}/jwt_hs256.key"
        return None

    @property
    def userclaimfield(self) -> str | None:
        return self.params.get("userclaimfield")

    @property
    def client_ids(self) -> str | None:
        """``use_jwt_client_ids_only``, ``use_jwt_client_ids`` or None."""
        for name in ("use_jwt_client_ids_only", "use_jwt_client_ids"):
            if name in self.params:
                return name
        return None


_PAIR = re.compile(r"([A-Za-z][A-Za-z0-9_]*)=(\"[^\"]*\"|\S*)")


def read_slurm_conf(path: Path) -> dict[str, str]:
    """Top-level ``Key=Value`` settings of slurm.conf, keys lower-cased (Slurm ignores case).

    Node, partition and similar lines carry several pairs on one line; only the first key of a
    line names a setting that matters here, and later settings replace earlier ones as in Slurm.
    The value is the rest of the line, so that text after a stray space stays visible.
    """
    values: dict[str, str] = {}
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        m = _PAIR.match(line)
        if m:
            values[m.group(1).lower()] = line[m.start(2) :].strip()
    return values


def jwt_conf(path: Path, inside: str | None = None) -> tuple[JwtConf, list[str]]:
    """Parse the auth/jwt part of slurm.conf; the second item lists syntax problems."""
    values = read_slurm_conf(path)
    problems = []
    raw_params = values.get("authaltparameters", "")
    if re.search(r"\s", raw_params):
        problems.append(
            f"AuthAltParameters has a space in {raw_params[:120]!r}: Slurm splits on commas "
            "only and ends the value at the space, so what follows is lost (remove the spaces)"
        )
        raw_params = "".join(raw_params.split())
    params: dict[str, str] = {}
    for item in raw_params.strip('"').split(","):
        if item:
            name, _, value = item.partition("=")
            params[name.lower()] = value

    def first(key: str, default: str) -> str:
        words = values.get(key, "").split()
        return words[0].strip('"') if words else default

    alt_types = tuple(t.strip().lower() for t in first("authalttypes", "").split(",") if t)
    return (
        JwtConf(
            conf_path=path,
            conf_inside=inside or str(path),
            alt_types=alt_types,
            params=params,
            slurm_user=first("slurmuser", "root"),
            state_save=first("statesavelocation", "/var/spool/slurmctld"),
        ),
        problems,
    )


# ---------------------------------------------------------------- the host (or a container root)


@dataclass(frozen=True)
class Host:
    """The controller's filesystem and accounts, optionally under a root directory (chroot,
    container image) whose paths slurm.conf names from inside."""

    root: Path | None = None

    def path(self, inside: str) -> Path:
        if self.root is None:
            return Path(inside)
        return self.root / inside.lstrip("/")

    def getpwnam(self, name: str) -> tuple[int, int] | None:
        """(uid, gid) of ``name``: NSS on this host, or the root's /etc/passwd."""
        if self.root is None:
            import pwd

            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                return None
            return pw.pw_uid, pw.pw_gid
        for entry in self._passwd():
            if entry[0] == name:
                return int(entry[2]), int(entry[3])
        return None

    def getpwuid(self, uid: int) -> str | None:
        if self.root is None:
            import pwd

            try:
                return pwd.getpwuid(uid).pw_name
            except KeyError:
                return None
        return next((e[0] for e in self._passwd() if e[2] == str(uid)), None)

    def _passwd(self) -> Iterable[list[str]]:
        try:
            text = self.path("/etc/passwd").read_text(errors="replace")
        except OSError:
            return []
        return [ln.split(":") for ln in text.splitlines() if ln.count(":") >= 6]

    def slurm_version(self) -> SlurmVersion | None:
        """``slurmctld -V`` (inside the root, if any); None when it cannot be run."""
        prefix = ["chroot", str(self.root)] if self.root is not None else []
        for argv in (["slurmctld", "-V"], ["/usr/sbin/slurmctld", "-V"], ["scontrol", "-V"]):
            try:
                out = subprocess.run(
                    [*prefix, *argv], capture_output=True, text=True, timeout=10, check=False
                ).stdout
                return SlurmVersion.parse(out)
            except (OSError, ValueError, subprocess.SubprocessError):
                continue
        return None

    def slurmctld_boot_time(self, conf: JwtConf) -> float | None:
        """When the running slurmctld last (re)started, from ``scontrol show config``'s
        BOOT_TIME; None when it does not answer. 23.11+ re-executes itself in place (same pid)
        on ``scontrol reconfigure`` and BOOT_TIME moves with it; 22.05's reconfigure leaves
        it, and that version reads the JWKS only at start: either way the JWKS file slurmctld
        has loaded is the one it found at BOOT_TIME."""
        prefix = ["chroot", str(self.root)] if self.root is not None else []
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": conf.conf_inside}
        try:
            out = subprocess.run(
                [*prefix, "scontrol", "show", "config"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
                env=env,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        boot = re.search(r"^BOOT_TIME\s*=\s*(\S+)", out, re.M)
        try:
            return _local_time(boot.group(1)) if boot else None
        except ValueError:
            return None


def _local_time(text: str) -> float:
    return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))


# ---------------------------------------------------------------- checks


@dataclass
class Context:
    conf: JwtConf
    host: Host
    version: SlurmVersion | None
    jwks_doc: dict[str, Any] | None = None
    hs256: bytes | None = None


def check_conf(report: Report, conf: JwtConf, problems: list[str]) -> None:
    subject = str(conf.conf_path)
    if not conf.enabled:
        report.add(
            FAIL,
            subject,
            "AuthAltTypes does not include auth/jwt: slurmctld accepts no JWT at all "
            "(add AuthAltTypes=auth/jwt and restart slurmctld)",
        )
    else:
        report.add(OK, subject, "AuthAltTypes includes auth/jwt")
    for problem in problems:
        report.add(FAIL, subject, problem)
    if conf.jwks is None and conf.jwt_key is not None and "jwt_key" not in conf.params:
        report.add(
            WARN,
            subject,
            f"neither jwks= nor jwt_key= in AuthAltParameters: Slurm uses {conf.jwt_key} "
            "(HS256 only); add jwks=/etc/slurm/jwks/jwks.json for the bridge's RS256 keys",
        )
    if conf.jwks is not None and "jwt_key" not in conf.params:
        report.add(
            OK,
            subject,
            "jwks= without jwt_key=: RS256 only (HS256 tokens and `scontrol token` are refused)",
        )


def _mode_problem(path: Path, kind: str, version: SlurmVersion | None) -> tuple[str, str] | None:
    """Slurm's permission rule for a key file, or None when it passes."""
    mode = stat.S_IMODE(path.stat().st_mode)
    modern = version is None or version.at_least(23, 11)
    fatal = FAIL if modern else WARN
    when = "slurmctld 23.11+ refuses to start" if modern else "23.11+ would refuse to start"
    if kind == "jwt_key" and mode & 0o007:
        return fatal, f"mode {mode:04o} has permission bits for other: {when} (chmod 0600)"
    if kind == "jwks" and mode & 0o002:
        return fatal, f"mode {mode:04o} is writable by other: {when} (chmod 0644)"
    if kind == "jwks" and mode & 0o020:
        return WARN, f"mode {mode:04o} is writable by its group: anyone in it can add a key"
    return None


def check_jwks_file(report: Report, ctx: Context) -> None:
    if ctx.conf.jwks is None:
        return
    path = ctx.host.path(ctx.conf.jwks)
    subject = f"jwks {ctx.conf.jwks}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        report.add(FAIL, subject, f"cannot read: {exc.strerror} (run slurm-jwt-bridge jwks sync)")
        return
    problem = _mode_problem(path, "jwks", ctx.version)
    if problem:
        report.add(problem[0], subject, problem[1])
    try:
        doc = json.loads(raw)
    except ValueError:
        report.add(FAIL, subject, "not JSON: slurmctld loads no RS256 key (run jwks sync)")
        return
    issues = slurm_jwks_problems(doc)
    for issue in issues:
        report.add(FAIL, subject, f"{issue}: Slurm cannot use that key")
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        ctx.jwks_doc = doc
        if not issues:
            kids = [k.get("kid") for k in doc["keys"]]
            report.add(OK, subject, f"{len(kids)} RS256 keys in Slurm's shape")
    check_reload(report, ctx, path)


def check_reload(report: Report, ctx: Context, path: Path) -> None:
    """A JWKS file changed after slurmctld last read it is not loaded yet."""
    read_at = ctx.host.slurmctld_boot_time(ctx.conf)
    if read_at is None:
        report.add(
            WARN,
            "slurmctld",
            "`scontrol show config` did not answer (not running, or no munge here): cannot "
            "tell whether it loaded the current JWKS file",
        )
        return
    old = ctx.version is not None and not ctx.version.at_least(23, 11)
    changed = path.stat().st_mtime
    # slurmctld reports whole seconds.
    if changed < read_at + 1:
        report.add(OK, "slurmctld", "has read the JWKS file since it last changed")
        return
    age = int(changed - read_at)
    if old:
        assert ctx.version is not None
        report.add(
            FAIL,
            "slurmctld",
            f"the JWKS file changed {age} s after slurmctld started and Slurm "
            f"{ctx.version.text} reads it only at start: restart slurmctld "
            "(scontrol reconfigure does not reload it)",
        )
    else:
        report.add(
            FAIL,
            "slurmctld",
            f"the JWKS file changed {age} s after slurmctld last (re)started, so it has not "
            "loaded the new keys: run `scontrol reconfigure`",
        )


def check_jwt_key(report: Report, ctx: Context) -> None:
    name = ctx.conf.jwt_key
    if name is None:
        return
    path = ctx.host.path(name)
    subject = f"jwt_key {name}"
    try:
        key = path.read_bytes()
    except OSError as exc:
        level = FAIL if "jwt_key" in ctx.conf.params else WARN
        report.add(level, subject, f"cannot read: {exc.strerror}")
        return
    problem = _mode_problem(path, "jwt_key", ctx.version)
    if problem:
        report.add(problem[0], subject, problem[1])
    if len(key) < 32:
        report.add(WARN, subject, f"only {len(key)} bytes: a short HMAC key can be guessed")
    ctx.hs256 = key
    report.add(OK, subject, f"{len(key)} bytes, HS256 tokens verifiable")


def check_bridge(
    report: Report,
    ctx: Context,
    published: dict[str, Any] | None,
    states: dict[str, str] | None,
    bridge_hs256: bytes | None,
) -> None:
    """Compare the JWKS file (and HS256 key) with what the bridge signs with."""
    file_kids = {k.get("kid") for k in (ctx.jwks_doc or {}).get("keys", []) if isinstance(k, dict)}
    if published is not None:
        for key in published.get("keys", []):
            kid = key.get("kid")
            state = (states or {}).get(kid, "published")
            if kid in file_kids:
                report.add(OK, "bridge", f"{state} key {kid} is in the JWKS file")
            elif state in ("active", "published"):
                report.add(
                    FAIL,
                    "bridge",
                    f"{state} key {kid} is missing from the JWKS file: Slurm refuses every "
                    "token it signs (run slurm-jwt-bridge jwks sync --reconfigure)",
                )
            else:
                report.add(
                    WARN,
                    "bridge",
                    f"{state} key {kid} is missing from the JWKS file: the next `keys rotate` "
                    "would break tokens (run slurm-jwt-bridge jwks sync)",
                )
        published_kids = {k.get("kid") for k in published.get("keys", [])}
        for kid in sorted(k for k in file_kids - published_kids if isinstance(k, str)):
            report.add(
                WARN,
                "bridge",
                f"the JWKS file trusts {kid}, which the bridge no longer publishes "
                "(pruned or revoked: run jwks sync to drop it)",
            )
    if bridge_hs256 is not None and ctx.hs256 is not None:
        if hmac.compare_digest(bridge_hs256, ctx.hs256):
            report.add(OK, "bridge", "its HS256 key is the jwt_key file, byte for byte")
        else:
            report.add(
                FAIL,
                "bridge",
                "its HS256 key differs from the jwt_key file (a trailing newline counts): "
                "Slurm refuses its HS256 tokens (slurm-jwt-bridge keys import-hs256)",
            )


# ---------------------------------------------------------------- one token


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def explain_token(report: Report, ctx: Context, token: str, now: float | None = None) -> None:
    """What slurmctld will say about ``token``, one finding per rule."""
    now = time.time() if now is None else now
    subject = f"token {hashlib.sha256(token.encode()).hexdigest()[:12]}"
    parts = token.strip().split(".")
    if len(parts) != 3:
        report.add(FAIL, subject, "not a compact JWT (three dot-separated parts)")
        return
    try:
        header, claims = _b64json(parts[0]), _b64json(parts[1])
    except ValueError:
        report.add(FAIL, subject, "header or payload is not base64url JSON")
        return
    if not isinstance(header, dict) or not isinstance(claims, dict):
        report.add(FAIL, subject, "header and payload must be JSON objects")
        return
    _explain_signature(report, ctx, subject, token, header)
    _explain_exp(report, subject, claims, now)
    user = _explain_user(report, ctx, subject, claims)
    _explain_identity(report, ctx, subject, claims, user)


def _explain_signature(
    report: Report, ctx: Context, subject: str, token: str, header: dict[str, Any]
) -> None:
    alg = str(header.get("alg", ""))
    typ = header.get("typ")
    if typ is not None and typ != "JWT":
        old = ctx.version is None or not ctx.version.at_least(23, 2)
        report.add(
            FAIL if old else WARN,
            subject,
            f"header typ {typ!r}: Slurm 22.05's libjwt refuses any typ but JWT",
        )
    if alg.upper() == HS256:
        if ctx.conf.jwt_key is None or (
            ctx.conf.jwks is not None and "jwt_key" not in ctx.conf.params
        ):
            report.add(FAIL, subject, "HS256, but slurm.conf names no jwt_key: refused")
        elif ctx.hs256 is None:
            report.add(WARN, subject, "HS256: the jwt_key file is not readable here to check it")
        elif _hs256_ok(token, ctx.hs256):
            report.add(OK, subject, "HS256 signature matches the jwt_key file")
        else:
            report.add(
                FAIL,
                subject,
                "HS256 signature does not match the jwt_key file: Slurm says "
                '"could not find matching kid or decode failed"',
            )
        return
    if alg.upper() != RS256:
        report.add(FAIL, subject, f"alg {alg[:16]!r}: Slurm accepts only HS256 and RS256")
        return
    kid = header.get("kid")
    if not isinstance(kid, str):
        report.add(FAIL, subject, "RS256 without a kid: Slurm needs the kid to pick the key")
        return
    if ctx.conf.jwks is None:
        report.add(FAIL, subject, "RS256, but slurm.conf names no jwks file: refused")
        return
    if ctx.jwks_doc is None:
        report.add(FAIL, subject, f"RS256 kid {kid}: the JWKS file could not be read")
        return
    key = next(
        (k for k in ctx.jwks_doc["keys"] if isinstance(k, dict) and k.get("kid") == kid), None
    )
    if key is None:
        report.add(
            FAIL,
            subject,
            f'kid {kid[:64]} is not in the JWKS file: Slurm says "could not find matching kid '
            'or decode failed" (run jwks sync, then reconfigure or restart slurmctld)',
        )
        return
    try:
        jwk = RSAAlgorithm.from_jwk(json.dumps(key))
        # A key with private members (reported above as unusable) still has its public half.
        public = jwk.public_key() if isinstance(jwk, RSAPrivateKey) else jwk
        jwt.decode(
            token,
            public,
            algorithms=[RS256],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_aud": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except (jwt.InvalidTokenError, ValueError, TypeError):
        report.add(FAIL, subject, f"RS256 signature does not verify with key {kid}: refused")
        return
    report.add(OK, subject, f"RS256 signature verifies with key {kid} of the JWKS file")


def _hs256_ok(token: str, key: bytes) -> bool:
    signing_input, _, signature = token.rpartition(".")
    expected = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    try:
        given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except ValueError:
        return False
    return hmac.compare_digest(expected, given)


def _explain_exp(report: Report, subject: str, claims: dict[str, Any], now: float) -> None:
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        report.add(
            FAIL, subject, f"exp {str(exp)[:20]!r} is not an integer: Slurm treats it as expired"
        )
    elif exp < now:
        report.add(
            FAIL,
            subject,
            f"expired {int(now - exp)} s ago by this host's clock (Slurm allows no leeway; "
            "check the clocks of the bridge and the controller)",
        )
    else:
        report.add(OK, subject, f"valid for {int(exp - now)} s more by this host's clock")


def _explain_user(report: Report, ctx: Context, subject: str, claims: dict[str, Any]) -> str | None:
    names = ["sun", "username"]
    if ctx.conf.userclaimfield and (ctx.version is None or ctx.version.at_least(23, 2)):
        names.append(ctx.conf.userclaimfield)
    field_name = next((n for n in names if n in claims), None)
    if field_name is None:
        report.add(FAIL, subject, f"no user claim (looked for {', '.join(names)}): refused")
        return None
    user = claims[field_name]
    if not isinstance(user, str):
        report.add(FAIL, subject, f"{field_name} is not a string: refused")
        return None
    if user in ("root", ctx.conf.slurm_user):
        report.add(WARN, subject, f"{field_name} {user!r}: {MASTER_KEY}")
    ids = ctx.host.getpwnam(user)
    if ids is None and user.isdigit():
        if ctx.host.getpwuid(int(user)) is not None:
            report.add(OK, subject, f"{field_name} {user!r} is a uid known on this host")
            return user
    if ids is None:
        if ctx.conf.client_ids and _identity_complete(claims):
            report.add(
                OK,
                subject,
                f"{field_name} {user!r} is unknown here, but the token carries an "
                f"identity ({ctx.conf.client_ids})",
            )
        else:
            report.add(
                FAIL,
                subject,
                f"{field_name} {user!r} does not resolve with getpwnam on this host: Slurm "
                "refuses it (create the account, or fix the bridge's mapping rules)",
            )
        return user
    report.add(OK, subject, f"{field_name} {user!r} resolves to uid {ids[0]}")
    return user


def _identity_complete(claims: dict[str, Any]) -> bool:
    ident = claims.get("id")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not (is_int(claims.get("uid")) and is_int(claims.get("gid")) and isinstance(ident, dict)):
        return False
    # 26.05.5 refuses an empty one too ("identity validation failed"), gecos included.
    if not all(
        isinstance(ident.get(k), str) and ident[k] for k in ("name", "gecos", "dir", "shell")
    ):
        return False
    return ("groups" in ident) != ("gids" in ident)


def _explain_identity(
    report: Report, ctx: Context, subject: str, claims: dict[str, Any], user: str | None
) -> None:
    present = [k for k in ("uid", "gid", "id") if k in claims]
    mode = ctx.conf.client_ids
    if not present:
        if mode == "use_jwt_client_ids_only":
            report.add(
                FAIL,
                subject,
                "no uid/gid/id claims but slurm.conf has use_jwt_client_ids_only: refused "
                "(set [tokens] identity_claims = true in the bridge)",
            )
        return
    if mode is None or (ctx.version is not None and not ctx.version.at_least(26, 5)):
        report.add(OK, subject, "identity claims present; this Slurm ignores them")
        return
    if not _identity_complete(claims):
        level = FAIL if mode == "use_jwt_client_ids_only" else WARN
        report.add(
            level,
            subject,
            "identity claims incomplete (integer uid and gid, id with non-empty name, gecos, "
            "dir, shell and groups xor gids): Slurm discards them",
        )
        return
    ident = claims["id"]
    if user is not None and ident.get("name") != user:
        report.add(FAIL, subject, "id.name differs from the user claim")
        return
    report.add(OK, subject, f"identity claims complete (uid {claims['uid']}, gid {claims['gid']})")


# ---------------------------------------------------------------- entry point


def run_doctor(
    slurm_conf: Path,
    *,
    host: Host | None = None,
    version: SlurmVersion | None = None,
    published: dict[str, Any] | None = None,
    states: dict[str, str] | None = None,
    bridge_hs256: bytes | None = None,
    token: str | None = None,
    now: float | None = None,
) -> Report:
    """Every check, in the order an administrator would follow them."""
    host = host or Host()
    report = Report()
    conf_file = host.path(str(slurm_conf))
    try:
        conf, problems = jwt_conf(conf_file, str(slurm_conf))
    except OSError as exc:
        report.add(FAIL, str(conf_file), f"cannot read slurm.conf: {exc.strerror} (--slurm-conf)")
        return report
    if version is None:
        version = host.slurm_version()
    if version is None:
        report.add(WARN, "slurm", "version unknown (slurmctld -V failed): give --slurm-version")
    else:
        bearer = "yes" if version.at_least(23, 2) else "no (X-SLURM-USER-TOKEN + X-SLURM-USER-NAME)"
        report.add(OK, "slurm", f"version {version.text}; slurmrestd takes Bearer: {bearer}")
    ctx = Context(conf=conf, host=host, version=version)
    check_conf(report, conf, problems)
    check_jwks_file(report, ctx)
    check_jwt_key(report, ctx)
    if published is not None or bridge_hs256 is not None:
        check_bridge(report, ctx, published, states, bridge_hs256)
    if token is not None:
        explain_token(report, ctx, token, now)
    return report
