"""The ``slurm-jwt-bridge`` command: keys, JWKS, minting and serving.

Errors are one line on stderr and a non-zero exit; nothing is printed on stdout on failure.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from limits.errors import ConfigurationError

from . import keys as keyring
from .config_fields import SettingsError
from .errors import BridgeError
from .jwks_file import (
    EXIT_CHANGED,
    EXIT_ERROR,
    EXIT_UNCHANGED,
    JwksError,
    sync_jwks,
    write_jwks,
)
from .names import SIGNING_ALGS
from .settings import CONFIG_ENV, Settings, json_schema, load_settings

if TYPE_CHECKING:
    from .audit import AuditLog


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line per error (a configuration with several mistakes names each)."""
    for line in message.splitlines() or [""]:
        click.echo(f"slurm-jwt-bridge: error: {line}", err=True)
    sys.exit(code)


def _errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the service's own errors into one line on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SettingsError, keyring.KeyRingError, JwksError) as exc:
            _fail(str(exc))
        except BridgeError as exc:
            _fail(f"{exc.error}: {exc.reason}")
        except OSError as exc:  # a file or directory named in the configuration or a flag
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}")
        except ConfigurationError as exc:  # e.g. a redis:// storage_uri without the redis extra
            _fail(f"rate_limit.storage_uri: {exc} (pip install 'slurm-jwt-bridge[redis]')")

    return wrapper


class Seconds(click.ParamType[int]):
    """A number of seconds on the command line: 1-9 ASCII digits (what the service takes)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from .policy import parse_seconds

        try:
            seconds = parse_seconds(value, "the value")
        except BridgeError as exc:
            self.fail(f"{value!r}: {exc.reason}", param, ctx)
        if seconds is None:
            self.fail("a number of seconds is required", param, ctx)
        return seconds


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--config`` (or $SLURM_JWT_BRIDGE_CONFIG) and ``--keys-dir`` on every command."""
    func = click.option(
        "--keys-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Keys directory (overrides [keys] dir).",
    )(func)
    func = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=CONFIG_ENV,
        help=f"TOML configuration file (default: ${CONFIG_ENV}).",
    )(func)
    return func


def _settings(config_path: Path | None, keys_dir: Path | None) -> Settings:
    return load_settings(config_path).with_keys_dir(keys_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slurm-jwt-bridge")
def main() -> None:
    """Mint Slurm JWTs from identity-provider tokens and keep Slurm's JWKS in sync."""


# ---------------------------------------------------------------- keys


@main.group()
def keys() -> None:
    """Manage the key ring (RS256 keys next/active/retired, the HS256 key)."""


def _key_audit(s: Settings) -> AuditLog:
    """The audit log of a key command: stdout carries the command's own lines, so an audit
    destination of stdout becomes stderr."""
    from .audit import AuditLog

    return AuditLog(s.audit.destination if s.audit.destination != "stdout" else "stderr")


@keys.command("init")
@config_options
@click.option("--bits", type=click.Choice(["2048", "3072", "4096"]), help="RSA key size.")
@_errors
def keys_init(config_path: Path | None, keys_dir: Path | None, bits: str | None) -> None:
    """Create an active key, a next key and the HS256 key; never overwrite existing keys."""
    s = _settings(config_path, keys_dir)
    created = keyring.init_keys(s.keys.dir, int(bits) if bits else s.keys.rsa_bits)
    for line in created or [f"{s.keys.dir}: all keys present, nothing created"]:
        click.echo(line)


@keys.command("rotate")
@config_options
@click.option(
    "--force",
    is_flag=True,
    help="Activate the next key even if it was published less than [keys] min_next_age ago.",
)
@click.option(
    "--jwks-url",
    help="The bridge's JWKS URL: refuse unless the running service publishes the next key.",
)
@click.option("--ca-file", type=click.Path(dir_okay=False), help="CA bundle for --jwks-url.")
@click.option(
    "--allow-http",
    is_flag=True,
    help="Accept an http:// --jwks-url (only for a bridge on this host, on loopback).",
)
@_errors
def keys_rotate(
    config_path: Path | None,
    keys_dir: Path | None,
    force: bool,
    jwks_url: str | None,
    ca_file: str | None,
    allow_http: bool,
) -> None:
    """Promote next to active, retire the active key, create a new next key."""
    s = _settings(config_path, keys_dir)
    audit = _key_audit(s)
    try:
        published = None
        if jwks_url:
            from .jwks_file import check_jwks_url, fetch_jwks, slurm_jwks_problems

            check_jwks_url(jwks_url, allow_http)
            doc = fetch_jwks(jwks_url, ca_file=ca_file)
            problems = slurm_jwks_problems(doc)
            if problems:
                raise JwksError(f"{jwks_url}: not a JWKS Slurm can use: {problems[0]}")
            published = {k["kid"] for k in doc["keys"]}
        lines = keyring.rotate_keys(
            s.keys.dir,
            s.tokens.max_lifetime,
            s.keys.retire_margin,
            s.keys.rsa_bits,
            min_next_age=s.keys.min_next_age,
            force=force,
            published_kids=published,
        )
    except (keyring.KeyRingError, JwksError) as exc:
        audit.record("keys.rotate", "refused", reason=str(exc), forced=force or None)
        raise
    audit.record("keys.rotate", "rotated", changes=lines, forced=force or None)
    for line in lines:
        click.echo(line)


@keys.command("prune")
@config_options
@_errors
def keys_prune(config_path: Path | None, keys_dir: Path | None) -> None:
    """Remove retired keys whose tokens have all expired."""
    s = _settings(config_path, keys_dir)
    for line in keyring.prune_keys(s.keys.dir) or ["nothing to prune"]:
        click.echo(line)


@keys.command("revoke")
@click.argument("kid")
@config_options
@_errors
def keys_revoke(kid: str, config_path: Path | None, keys_dir: Path | None) -> None:
    """Remove key KID at once (key theft): out of the JWKS, its file deleted; an active key is
    replaced by the next key. Then run `jwks sync --reconfigure` on every controller."""
    import os

    s = _settings(config_path, keys_dir)
    audit = _key_audit(s)
    fields = {"kid": kid[:64], "keys_dir": str(s.keys.dir), "uid": os.getuid()}
    try:
        lines = keyring.revoke_key(s.keys.dir, kid, s.keys.rsa_bits)
    except keyring.KeyRingError as exc:
        audit.record("keys.revoke", "refused", reason=str(exc), **fields)
        raise
    audit.record("keys.revoke", "revoked", changes=lines, **fields)
    for line in lines:
        click.echo(line)
    click.echo(
        "now run `slurm-jwt-bridge jwks sync --reconfigure` on every slurmctld host "
        "(Slurm 22.05: then restart slurmctld)"
    )


@keys.command("list")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_errors
def keys_list(config_path: Path | None, keys_dir: Path | None, as_json: bool) -> None:
    """Show every key with its state and publication window."""
    s = _settings(config_path, keys_dir)
    ring = keyring.KeyRing.load(s.keys.dir)
    now = time.time()
    rows = [k.describe() | {"published": k.published_at(now)} for k in ring.rsa_keys]
    if as_json:
        click.echo(json.dumps({"rs256": rows, "hs256": ring.hs256 is not None}, indent=2))
        return

    def when(ts: int | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"

    click.echo(f"{'KID':<44} {'STATE':<8} {'BITS':>4} {'CREATED':<19} {'PUBLISHED UNTIL':<19}")
    for r in rows:
        until = (
            when(r["publish_until"]) if r["state"] == "retired" else "(while " + r["state"] + ")"
        )
        click.echo(
            f"{r['kid']:<44} {r['state']:<8} {r['bits']:>4} {when(r['created']):<19} {until}"
        )
    hs = "present" if ring.hs256 is not None else "absent"
    click.echo(f"HS256 key ({keyring.HS256_FILE}): {hs}")


@keys.command("import-hs256")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@config_options
@_errors
def keys_import_hs256(file: Path, config_path: Path | None, keys_dir: Path | None) -> None:
    """Copy an existing Slurm jwt_key file byte for byte into the keys directory."""
    s = _settings(config_path, keys_dir)
    click.echo(keyring.import_hs256(file, s.keys.dir))


# ---------------------------------------------------------------- jwks


@main.group()
def jwks() -> None:
    """Export or sync the JWKS file slurmctld reads (AuthAltParameters=jwks=...)."""


@jwks.command("export")
@config_options
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_errors
def jwks_export(config_path: Path | None, keys_dir: Path | None, out: Path) -> None:
    """Write the published RS256 keys to OUT (atomic, mode 0644)."""
    s = _settings(config_path, keys_dir)
    doc = keyring.KeyRing.load(s.keys.dir).jwks()
    write_jwks(out, doc)
    click.echo(f"wrote {len(doc['keys'])} keys to {out}")


@jwks.command("sync")
@config_options
@click.option("--url", required=True, help="The bridge's JWKS URL.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reconfigure", is_flag=True, help="Run scontrol reconfigure when changed.")
@click.option(
    "--reconfigure-command",
    default="scontrol reconfigure",
    show_default=True,
    help="Command run by --reconfigure.",
)
@click.option("--timeout", type=float, default=10.0, show_default=True)
@click.option("--ca-file", type=click.Path(dir_okay=False), help="CA bundle for https.")
@click.option(
    "--allow-http",
    is_flag=True,
    help="Accept a plain http:// URL (only for a bridge on this host, e.g. http://127.0.0.1).",
)
def jwks_sync(
    config_path: Path | None,
    keys_dir: Path | None,
    url: str,
    out: Path,
    reconfigure: bool,
    reconfigure_command: str,
    timeout: float,
    ca_file: str | None,
    allow_http: bool,
) -> None:
    """Fetch the bridge's JWKS and replace OUT only when it changed.

    Exit 0: unchanged; 3: changed (and reconfigured when asked); 1: error (OUT untouched).
    """
    if config_path is not None:
        try:  # nothing in it is needed here, but a broken file must not pass unnoticed
            _settings(config_path, keys_dir)
        except SettingsError as exc:
            _fail(str(exc), EXIT_ERROR)
    try:
        result = sync_jwks(
            url,
            out,
            reconfigure_command=reconfigure_command if reconfigure else None,
            timeout=timeout,
            ca_file=ca_file,
            allow_http=allow_http,
        )
    except (JwksError, OSError) as exc:
        _fail(str(exc), EXIT_ERROR)
        return
    click.echo(result.message)
    sys.exit(EXIT_CHANGED if result.changed else EXIT_UNCHANGED)


# ---------------------------------------------------------------- mint


@main.command("mint")
@click.argument("user")
@config_options
@click.option("--lifespan", type=Seconds(), help="Seconds (default [tokens] default_lifetime).")
@click.option("--alg", type=click.Choice(SIGNING_ALGS), help="Default [keys] default_alg.")
@_errors
def mint(
    user: str,
    config_path: Path | None,
    keys_dir: Path | None,
    lifespan: int | None,
    alg: str | None,
) -> None:
    """Print SLURM_JWT=<token> for USER, like `scontrol token username=USER`."""
    from . import build_bridge
    from .settings import AuditSettings

    s = _settings(config_path, keys_dir)
    if s.audit.destination == "stdout":
        # stdout carries exactly one line, like scontrol token; audit goes to stderr.
        from dataclasses import replace

        s = replace(s, audit=AuditSettings("stderr"))
    bridge = build_bridge(s)
    token = bridge.pipeline.operator_mint(user, lifespan, alg)
    sys.stdout.write(f"SLURM_JWT={token.token}\n")


# ---------------------------------------------------------------- config


@main.group("config")
def config_group() -> None:
    """Check the configuration file, or print its schema."""


@config_group.command("check")
@config_options
def config_check(config_path: Path | None, keys_dir: Path | None) -> None:
    """Load the configuration (and its keys directory) as the service would; print ok.

    Run it before a reload (systemctl reload, SIGHUP): exit 0 and `ok`, or 1 and the error.
    """
    try:
        s = _settings(config_path, keys_dir)
        keyring.KeyRing.load(s.keys.dir)
        session_key = keyring.session_key_path(s.server.secret_key_file, s.keys.dir)
        if s.browser.enabled and any(i.client_id for i in s.issuers) and session_key.exists():
            keyring.check_session_key(session_key)  # the service creates it when missing
    except (SettingsError, keyring.KeyRingError) as exc:
        _fail(str(exc))
        return
    from .web.urls import public_url_problem  # gunicorn refuses the same (gunicorn_conf.py)

    problem = public_url_problem(s) or start_problem(s)
    if problem:
        _fail(problem)
        return
    click.echo("ok")


def _creatable(path: Path) -> bool:
    """Whether the service could create ``path`` (its nearest existing parent is writable)."""
    import os

    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


def start_problem(s: Settings) -> str | None:
    """Build the application as the service does (``create_app``, without serving) and say in
    one line what failed, or None.

    The build has no lasting effect: what the service would create at start (the audit file,
    the session and device directories, the session key) is checked for where it would go and
    then created in a scratch directory removed afterwards; what exists is read, never
    written. Nothing is contacted: identity providers are fetched on the first request, and
    the Redis clients (rate limits, sessions) connect on first use."""
    import os
    import re
    import tempfile
    from dataclasses import replace

    from . import create_app

    audit, browser, server = s.audit, s.browser, s.server
    if audit.destination.startswith("file:"):
        path = Path(audit.destination[5:])
        where = path if path.exists() else path.parent  # open(path, "a") makes no directory
        writable = where.is_dir() != (where is path) and os.access(where, os.W_OK)
        if path.is_dir() or not writable:
            return f"audit.destination: {path}: the audit file cannot be opened for writing"
    key = keyring.session_key_path(server.secret_key_file, s.keys.dir)
    d = browser.session_dir
    device = d.with_name(d.name + "-device")
    with tempfile.TemporaryDirectory(prefix="slurm-jwt-bridge-check-") as scratch:
        # Moved to the scratch directory only when the service could create them; otherwise
        # the build fails on them as the start would (and creates nothing).
        local = browser.enabled and not browser.session_storage_uri
        if local and (d.exists() or _creatable(d)):
            browser = replace(browser, session_dir=Path(scratch) / "sessions")
        if not key.exists() and key.parent.is_dir() and os.access(key.parent, os.W_OK):
            server = replace(server, secret_key_file=str(Path(scratch) / "session.key"))
        try:
            if local and any(i.client_id for i in s.issuers):
                from .web.browser import _private_dir

                for where in (d, device):  # their modes, as the start checks them
                    if where.exists():
                        _private_dir(where)
            create_app(
                replace(s, audit=replace(audit, destination="none"), browser=browser, server=server)
            )
        except Exception as exc:  # whatever stops the service's start
            detail = (str(exc).splitlines() or [""])[0][:300]
            detail = re.sub(r"(\w+://)[^/@\s]*@", r"\1***@", detail)  # no URL's password
            return f"the service cannot start: {type(exc).__name__}: {detail}"
    return None


@config_group.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the configuration file (for editors and CI)."""
    click.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))


# ---------------------------------------------------------------- doctor


@main.command("doctor")
@config_options
@click.option(
    "--slurm-conf",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLURM_CONF",
    default="/etc/slurm/slurm.conf",
    show_default=True,
    help="slurm.conf of the controller (default $SLURM_CONF).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The controller's filesystem root (a container or chroot) when not run inside it.",
)
@click.option("--slurm-version", help="Slurm version, e.g. 22.05 (default: slurmctld -V).")
@click.option("--url", help="The bridge's JWKS URL, to compare with the JWKS file.")
@click.option("--ca-file", type=click.Path(dir_okay=False), help="CA bundle for https.")
@click.option("--token", help="A Slurm token to explain; - reads it from standard input.")
def doctor(
    config_path: Path | None,
    keys_dir: Path | None,
    slurm_conf: Path,
    root: Path | None,
    slurm_version: str | None,
    url: str | None,
    ca_file: str | None,
    token: str | None,
) -> None:
    """Say why Slurm refuses the bridge's tokens: slurm.conf, key files, JWKS, one token.

    Run on the controller host. Exit 0 when nothing fails, 1 when something does.
    """
    from .doctor import Host, SlurmVersion, run_doctor

    version = None
    if slurm_version:
        try:
            version = SlurmVersion.parse(slurm_version)
        except ValueError as exc:
            _fail(str(exc))
    published = states = hs256 = None
    if url:
        from .jwks_file import JwksError, fetch_jwks

        try:
            published = fetch_jwks(url, ca_file=ca_file)
        except JwksError as exc:
            _fail(f"cannot compare with the bridge: {exc}")
        keys = published.get("keys") if isinstance(published, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            _fail(f"cannot compare with the bridge: {url}: not a JWKS (a list of key objects)")
    if config_path or keys_dir:
        try:
            ring = keyring.KeyRing.load(_settings(config_path, keys_dir).keys.dir)
        except (SettingsError, keyring.KeyRingError) as exc:
            _fail(str(exc))
            return
        published = published or ring.jwks()
        states = {k.kid: k.state for k in ring.rsa_keys}
        hs256 = ring.hs256
    if token == "-":
        token = sys.stdin.readline().strip().removeprefix("SLURM_JWT=")
    report = run_doctor(
        slurm_conf,
        host=Host(root),
        version=version,
        published=published,
        states=states,
        bridge_hs256=hs256,
        token=token,
    )
    for finding in report.findings:
        click.echo(finding.line())
    sys.exit(1 if report.failed else 0)


# ---------------------------------------------------------------- login


@main.command("login")
@click.option("--url", required=True, envvar="SLURM_JWT_BRIDGE_URL", help="The bridge's URL.")
@click.option("--export", "as_export", is_flag=True, help="Print `export SLURM_JWT=...`.")
@click.option("--lifetime", type=Seconds(), help="Requested token lifetime in seconds.")
@click.option("--interval", type=float, help="Polling interval (default: the IdP's, or 5 s).")
@click.option("--ca-file", type=click.Path(dir_okay=False), help="CA bundle for https.")
@click.option(
    "--exec",
    "run_command",
    is_flag=True,
    help="Run COMMAND with SLURM_JWT set instead of printing the token.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def login(
    url: str,
    as_export: bool,
    lifetime: int | None,
    interval: float | None,
    ca_file: str | None,
    run_command: bool,
    command: tuple[str, ...],
) -> None:
    """Log in from a terminal (device grant) and print a Slurm token, or with
    `--exec -- COMMAND...` run COMMAND with SLURM_JWT set to it (nothing printed, nothing left
    in the calling shell).

    Do not leave SLURM_JWT set in an interactive shell that runs Slurm's command-line tools:
    they then authenticate with the token instead of munge.
    """
    from .device_login import LoginError, device_login

    executable = _exec_target(run_command, as_export, command)
    try:
        answer = device_login(
            url,
            lifetime=lifetime,
            interval=interval,
            prompt=lambda line: click.echo(line, err=True),
            ca_file=ca_file,
        )
    except LoginError as exc:
        _fail(str(exc))
        return
    if executable is not None:
        _exec_with_answer(executable, command, answer)
        return
    import shlex

    from .untrusted import printable

    # device_login returned only a token matching COMPACT_JWT; quoted all the same, as this
    # line is meant for eval.
    prefix = "export SLURM_JWT=" if as_export else "SLURM_JWT="
    sys.stdout.write(f"{prefix}{shlex.quote(answer['access_token'])}\n")
    user, valid = printable(answer.get("slurm_user"), 64), printable(answer.get("expires_in"))
    click.echo(f"token for {user}, valid {valid} s", err=True)


def _exec_target(run_command: bool, as_export: bool, command: tuple[str, ...]) -> str | None:
    """For ``login --exec``: the checked executable of COMMAND (None without --exec)."""
    from .login_exec import ExecError, resolve_command

    if not run_command:
        if command:
            _fail(f"unexpected argument {command[0]!r} (run a command with --exec -- COMMAND...)")
        return None
    if as_export:
        _fail("--exec and --export exclude each other")
    try:
        return resolve_command(command)
    except ExecError as exc:
        _fail(str(exc), exc.exit_code)
    return None


def _exec_with_answer(executable: str, command: tuple[str, ...], answer: dict[str, Any]) -> None:
    """Replace this process with COMMAND, SLURM_JWT set to the bridge's checked token."""
    from .login_exec import ExecError, check_token, exec_with_token, printable

    try:
        token = check_token(answer.get("access_token"))
        user, valid = printable(answer.get("slurm_user")), printable(answer.get("expires_in"))
        click.echo(f"token for {user}, valid {valid} s: running {printable(command[0])}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        exec_with_token(executable, command, token)
    except ExecError as exc:
        _fail(str(exc), exc.exit_code)


# ---------------------------------------------------------------- keycloak


@main.group("keycloak")
def keycloak() -> None:
    """Register the bridge in a Keycloak realm."""


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        _fail(f"{what} {path}: {exc.strerror}")
    if not value:
        _fail(f"{what} {path} is empty")
    return value


@keycloak.command("setup")
@click.option("--server", required=True, help="Keycloak's base URL (https://sso.example.org).")
@click.option("--realm", required=True, help="The realm the bridge trusts.")
@click.option("--public-url", required=True, help="The bridge's public URL (browser login).")
@click.option("--admin-user", help="An admin user (with --admin-password-file).")
@click.option(
    "--admin-password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the admin user's password.",
)
@click.option("--admin-client-id", help="An admin client (client credentials) instead of a user.")
@click.option(
    "--admin-client-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the admin client's secret.",
)
@click.option("--admin-realm", default="master", show_default=True, help="Realm of the admin.")
@click.option("--client-id", default="slurm-jwt-bridge", show_default=True, help="Browser client.")
@click.option(
    "--cli-client-id", default="slurm-jwt-bridge-cli", show_default=True, help="Device client."
)
@click.option("--issuer-name", default="keycloak", show_default=True, help="[[issuers]] name.")
@click.option(
    "--service-account",
    "service_accounts",
    multiple=True,
    metavar="NAME=ACCOUNT",
    help="A service-account client NAME whose tokens are for cluster ACCOUNT (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False),
    help="CA bundle for Keycloak's https (default: the system store).",
)
def keycloak_setup(
    server: str,
    realm: str,
    public_url: str,
    admin_user: str | None,
    admin_password_file: Path | None,
    admin_client_id: str | None,
    admin_client_secret_file: Path | None,
    admin_realm: str,
    client_id: str,
    cli_client_id: str,
    issuer_name: str,
    service_accounts: tuple[str, ...],
    dry_run: bool,
    ca_file: str | None,
) -> None:
    """Register the browser client (PKCE), the device-grant client, the audience mapper and
    service-account clients, then print the bridge.toml blocks on stdout.

    Changes nothing when an existing client or scope differs from what the bridge needs.
    """
    from .keycloak_setup import (
        SetupError,
        SetupOptions,
        connect,
        parse_service_account,
        run_setup,
        server_url_problem,
    )

    if bool(admin_user) == bool(admin_client_id):
        _fail("give either --admin-user with --admin-password-file or --admin-client-id")
    if admin_user and admin_password_file is None:
        _fail("--admin-user needs --admin-password-file")
    if admin_client_id and admin_client_secret_file is None:
        _fail("--admin-client-id needs --admin-client-secret-file")
    problem = server_url_problem(server)
    if problem:
        _fail(problem)
    if not public_url.startswith(("https://", "http://")):
        _fail(f"--public-url must be an http(s) URL, got {public_url!r}")
    try:
        accounts = tuple(parse_service_account(v) for v in service_accounts)
        options = SetupOptions(
            server=server,
            realm=realm,
            public_url=public_url,
            client_id=client_id,
            cli_client_id=cli_client_id,
            issuer_name=issuer_name,
            service_accounts=accounts,
            dry_run=dry_run,
            ca_file=ca_file,
        )
        if admin_user:
            assert admin_password_file is not None
            password = _read_secret_file(admin_password_file, "--admin-password-file")
            admin = connect(
                server,
                realm,
                admin_realm=admin_realm,
                username=admin_user,
                password=password,
                ca_file=ca_file,
            )
        else:
            assert admin_client_secret_file is not None
            secret = _read_secret_file(admin_client_secret_file, "--admin-client-secret-file")
            admin = connect(
                server,
                realm,
                admin_realm=admin_realm,
                client_id=admin_client_id,
                client_secret=secret,
                ca_file=ca_file,
            )
        code, blocks = run_setup(admin, options, lambda line: click.echo(line, err=True))
    except SetupError as exc:
        _fail(str(exc))
        return
    if code:
        sys.exit(code)
    sys.stdout.write(blocks)


# ---------------------------------------------------------------- serve


@main.command("serve")
@config_options
@click.option("--host", help="Default [server] host.")
@click.option("--port", type=int, help="Default [server] port.")
@click.option(
    "--prod", is_flag=True, help="Run under gunicorn with slurm_jwt_bridge.gunicorn_conf."
)
@click.option(
    "--server",
    "server_name",
    type=click.Choice(["gunicorn", "granian"]),
    envvar="SLURM_JWT_BRIDGE_SERVER",
    default="gunicorn",
    show_default=True,
    help="HTTP server with --prod (granian needs the granian extra). Env: SLURM_JWT_BRIDGE_SERVER.",
)
@click.option("--workers", type=int, help="Worker processes (with --prod).")
@_errors
def serve(
    config_path: Path | None,
    keys_dir: Path | None,
    host: str | None,
    port: int | None,
    prod: bool,
    server_name: str,
    workers: int | None,
) -> None:
    """Run the service: the development server, or gunicorn (or granian) with --prod."""
    import os

    from . import create_app

    s = _settings(config_path, keys_dir)
    if prod:
        if config_path:
            os.environ[CONFIG_ENV] = str(config_path.resolve())
        create_app(s)  # fail here, with one line, rather than in every worker
        # --host/--port win; else slurm_jwt_bridge.gunicorn_conf takes GUNICORN_BIND, then [server].
        bind = None
        if host is not None or port is not None:
            bind_host = host or s.server.host
            bind_port = port if port is not None else s.server.port
            bind = f"{bind_host}:{bind_port}"
        if keys_dir:
            os.environ["SLURM_JWT_BRIDGE_KEYS_DIR"] = str(Path(keys_dir).resolve())
        if server_name == "granian":
            import importlib.util

            if importlib.util.find_spec("granian") is None:
                raise click.ClickException(
                    "--server granian needs granian: pip install 'slurm-jwt-bridge[granian]'"
                )
            # granian_serve.py reads the same variables as gunicorn_conf.py
            if bind:
                os.environ["GUNICORN_BIND"] = bind
            if workers:
                os.environ["GUNICORN_WORKERS"] = str(workers)
            argv = [sys.executable, "-m", "slurm_jwt_bridge.granian_serve"]
            os.execv(sys.executable, argv)  # noqa: S606 (fixed argv)
        argv = ["gunicorn", "-c", "python:slurm_jwt_bridge.gunicorn_conf"]
        if bind:
            argv += ["--bind", bind]
        if workers:
            argv += ["--workers", str(workers)]
        exe = Path(sys.executable).parent / "gunicorn"
        os.execv(str(exe), [*argv, "slurm_jwt_bridge:create_app()"])  # noqa: S606 (fixed argv)
    create_app(s).run(host=host or s.server.host, port=port if port is not None else s.server.port)


if __name__ == "__main__":  # pragma: no cover
    main()
