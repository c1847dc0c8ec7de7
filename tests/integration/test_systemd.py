"""The systemd units in deploy/systemd/.

``systemd-analyze verify`` runs on every unit as shipped and any message it prints about them
fails the test. It checks that ExecStart binaries exist, so it runs in a private mount namespace
where a tmpfs over /opt holds stand-ins for /opt/slurm-jwt-bridge/bin/*; the host is untouched.
The units' command lines are then run for real, expanded the way systemd expands them, against
the project's own virtualenv: gunicorn answers /healthz and /readyz and reports READY=1 (the
unit is Type=notify), the rotation unit rotates a key ring, the JWKS sync unit writes the file
and exits 3 (changed, a SuccessExitStatus) then 0.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_jwt_bridge.keys import KeyRing, init_keys
from tests.helpers.ports import free_port

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
PREFIX = "/opt/slurm-jwt-bridge/bin/"
VENV_BIN = Path(sys.executable).parent
UNIT_FILES = [
    "slurm-jwt-bridge.service",
    "slurm-jwt-bridge-jwks-sync.service",
    "slurm-jwt-bridge-jwks-sync.timer",
    "slurm-jwt-bridge-rotate.service",
    "slurm-jwt-bridge-rotate.timer",
    "slurm-jwt-bridge-prune.service",
    "slurm-jwt-bridge-prune.timer",
]


def skip_or_fail(reason: str) -> None:
    """Skip with a visible reason on a developer machine; fail in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required component unavailable: {reason}")
    pytest.skip(reason)


# ---------------------------------------------------------------- unit files


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> [(key, value)], keeping repeated keys (ExecStart=, SystemCallFilter=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{section}.{key}: {found}"
    return found[0]


def unit_environment(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for assignment in values(unit, "Service", "Environment"):
        for word in shlex.split(assignment):
            key, _, val = word.partition("=")
            env[key] = val
    return env


def environment_file(path: Path) -> dict[str, str]:
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, val = line.partition("=")
        words = shlex.split(val)
        env[key.strip()] = " ".join(words)
    return env


def expand(command: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart= expansion: ${VAR} is one word, $VAR splits at whitespace."""
    argv: list[str] = []
    for word in shlex.split(command):
        m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", word)
        if m and m.group(1):
            argv.append(env.get(m.group(1), ""))
        elif m:
            argv.extend(env.get(m.group(2), "").split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda g: env.get(g.group(1), ""), word))
    if argv and argv[0].startswith(PREFIX):
        argv[0] = str(VENV_BIN / argv[0][len(PREFIX) :])
    return argv


def exec_paths() -> set[str]:
    paths = set()
    # systemd-analyze verify reads the drop-ins next to a unit (granian.conf) too
    for path in [*(UNITS / n for n in UNIT_FILES), *UNITS.glob("*.service.d/*.conf")]:
        unit = parse_unit(path)
        for key in ("ExecStart", "ExecReload", "ExecStartPre", "ExecStop"):
            for cmd in values(unit, "Service", key):
                if cmd:  # an empty ExecStart= (a drop-in's reset) runs nothing
                    paths.add(shlex.split(cmd.lstrip("-@:+!"))[0])
    return paths


# ---------------------------------------------------------------- systemd-analyze


@pytest.fixture(scope="session")
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        skip_or_fail("systemd-analyze is missing (Debian package systemd)")
    return tool


def in_private_opt(analyze: str, *args: str) -> subprocess.CompletedProcess:
    """Run systemd-analyze with stand-ins for /opt/slurm-jwt-bridge/bin/* (private mounts)."""
    ours = sorted(p for p in exec_paths() if p.startswith(PREFIX))
    others = sorted(p for p in exec_paths() if not p.startswith(PREFIX))
    for p in others:
        assert os.access(p, os.X_OK), f"{p} (used by a unit) is not on this host"
    script = (
        "set -e; mount -t tmpfs tmpfs /opt; "
        + "".join(
            f"mkdir -p {shlex.quote(os.path.dirname(p))}; "
            f"printf '#!/bin/sh\\nexit 0\\n' > {shlex.quote(p)}; chmod 0755 {shlex.quote(p)}; "
            for p in ours
        )
        + 'exec "$@"'
    )
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "--map-root-user")
    argv = [*unshare, "sh", "-c", script, "sh", analyze, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if (
        proc.returncode != 0
        and "unshare" in proc.stderr
        and "Operation not permitted" in proc.stderr
    ):
        skip_or_fail(f"cannot make a private mount namespace here: {proc.stderr.strip()}")
    return proc


@pytest.mark.parametrize("name", UNIT_FILES)
def test_systemd_analyze_verify_is_silent(analyze: str, name: str) -> None:
    proc = in_private_opt(analyze, "verify", "--man=no", "--generators=no", str(UNITS / name))
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, output
    assert output == "", f"systemd-analyze verify {name}:\n{output}"


def test_verify_would_catch_a_broken_unit(analyze: str, tmp_path: Path) -> None:
    """The check above can fail: a typo'd key and a bad value are reported."""
    text = (UNITS / "slurm-jwt-bridge.service").read_text()
    broken = text.replace("ExecReload=", "ExecRelaod=").replace(
        "ProtectSystem=strict", "ProtectSystem=strikt"
    )
    assert broken != text
    path = tmp_path / "slurm-jwt-bridge.service"
    path.write_text(broken)
    proc = in_private_opt(analyze, "verify", "--man=no", "--generators=no", str(path))
    output = proc.stdout + proc.stderr
    assert "Unknown key" in output and "ExecRelaod" in output
    assert "strikt" in output


@pytest.mark.parametrize(
    ("name", "limit"),
    [
        ("slurm-jwt-bridge.service", 2.0),
        ("slurm-jwt-bridge-rotate.service", 2.0),
        ("slurm-jwt-bridge-prune.service", 2.0),
        # root (runs scontrol) and on the network, but without capabilities and with write
        # access to the JWKS directory only
        ("slurm-jwt-bridge-jwks-sync.service", 2.0),
    ],
)
def test_exposure_score(analyze: str, name: str, limit: float) -> None:
    proc = in_private_opt(analyze, "security", "--offline=yes", "--no-pager", str(UNITS / name))
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= limit, proc.stdout


def timer_days(analyze: str, name: str) -> list[tuple[str, str]]:
    unit = parse_unit(UNITS / name)
    assert value(unit, "Timer", "Persistent") == "true"
    assert value(unit, "Timer", "RandomizedDelaySec")
    spec = value(unit, "Timer", "OnCalendar")
    proc = subprocess.run(
        [analyze, "calendar", "--iterations=3", spec], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return re.findall(r"(?:Next elapse|Iter\. #\d+):\s+(\w{3}) (\d{4}-\d\d-\d\d)", proc.stdout)


def test_weekly_rotation_calendar(analyze: str) -> None:
    days = timer_days(analyze, "slurm-jwt-bridge-rotate.timer")
    assert len(days) == 3 and {d for d, _ in days} == {"Mon"}, days


def test_daily_prune_calendar(analyze: str) -> None:
    days = timer_days(analyze, "slurm-jwt-bridge-prune.timer")
    assert len(days) == 3 and len({day for _, day in days}) == 3, days


# ---------------------------------------------------------------- what the units say


def test_service_hardening_and_settings() -> None:
    svc = parse_unit(UNITS / "slurm-jwt-bridge.service")
    assert value(svc, "Service", "Type") == "notify"
    assert value(svc, "Service", "User") == "slurm-jwt-bridge"
    for key, want in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert value(svc, "Service", key) == want, key
    assert values(svc, "Service", "ReadWritePaths")
    assert value(svc, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    env = unit_environment(svc)
    assert env["SLURM_JWT_BRIDGE_CONFIG"] == "/etc/slurm-jwt-bridge/bridge.toml"
    assert value(svc, "Service", "EnvironmentFile").startswith("-"), "optional"
    assert expand(value(svc, "Service", "ExecStart"), env)[1:] == [
        "-c",
        "python:slurm_jwt_bridge.gunicorn_conf",
        "slurm_jwt_bridge:create_app()",
    ]
    assert value(svc, "Install", "WantedBy") == "multi-user.target"

    sync = parse_unit(UNITS / "slurm-jwt-bridge-jwks-sync.service")
    assert value(sync, "Service", "Type") == "oneshot"
    # It parses network input as root: no capabilities, no privileged system calls, and write
    # access to the JWKS file's own directory only (not /etc/slurm with slurm.conf in it).
    assert value(sync, "Service", "CapabilityBoundingSet") == ""
    assert value(sync, "Service", "AmbientCapabilities") == ""
    assert "~@privileged @resources" in values(sync, "Service", "SystemCallFilter")
    jwks_out = unit_environment(sync)["JWKS_OUT"]
    assert values(sync, "Service", "ReadWritePaths") == [os.path.dirname(jwks_out)]
    assert os.path.dirname(jwks_out) != "/etc/slurm"
    shipped = environment_file(UNITS / "slurm-jwt-bridge-jwks-sync.default")
    assert "JWKS_OUT" not in shipped or os.path.dirname(shipped["JWKS_OUT"]) == os.path.dirname(
        jwks_out
    )
    for key in ("ProtectProc", "PrivateIPC", "MemoryDenyWriteExecute", "PrivateMounts"):
        assert value(sync, "Service", key), key
    assert "3" in value(sync, "Service", "SuccessExitStatus").split()
    assert value(sync, "Service", "EnvironmentFile") == "/etc/default/slurm-jwt-bridge-jwks-sync"
    timer = parse_unit(UNITS / "slurm-jwt-bridge-jwks-sync.timer")
    assert value(timer, "Timer", "OnUnitActiveSec") == "5min"
    assert value(timer, "Timer", "RandomizedDelaySec")
    assert value(timer, "Install", "WantedBy") == "timers.target"

    rotate = parse_unit(UNITS / "slurm-jwt-bridge-rotate.service")
    assert value(rotate, "Service", "Type") == "oneshot"
    steps = [shlex.split(c)[1:] for c in values(rotate, "Service", "ExecStart")]
    assert steps == [["keys", "rotate"]]
    assert values(rotate, "Service", "ReadWritePaths") == ["/etc/slurm-jwt-bridge/keys"]
    prune = parse_unit(UNITS / "slurm-jwt-bridge-prune.service")
    steps = [shlex.split(c)[1:] for c in values(prune, "Service", "ExecStart")]
    assert steps == [["keys", "prune"]]
    assert values(prune, "Service", "ReadWritePaths") == ["/etc/slurm-jwt-bridge/keys"]


# ---------------------------------------------------------------- the command lines, for real


@pytest.fixture
def bridge_config(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    init_keys(keys)
    config = tmp_path / "bridge.toml"
    config.write_text(
        # min_next_age = 0: the ring was made a moment ago, and the rotate unit runs at once.
        f'[keys]\ndir = "{keys}"\nreload_interval = 0.5\nmin_next_age = 0\n'
        '[audit]\ndestination = "none"\n'
    )
    return config


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def service_environment(
    svc: dict[str, list[tuple[str, str]]], config: Path, port: int, tmp_path: Path
) -> dict[str, str]:
    """The unit's environment, pointed at this test's configuration, port and metrics."""
    return {
        **os.environ,
        **unit_environment(svc),
        "SLURM_JWT_BRIDGE_CONFIG": str(config),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }


def stop_service(proc: subprocess.Popen, timeout: float = 60) -> None:
    """What systemd does on stop: SIGTERM to the main process, SIGKILL after TimeoutStopSec."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_service_exec_start_serves_and_reloads(bridge_config: Path, tmp_path: Path) -> None:
    if not (REPO / "app" / "slurm_jwt_bridge" / "gunicorn_conf.py").exists():
        skip_or_fail("gunicorn_conf.py (used by the unit's ExecStart) does not exist")
    svc = parse_unit(UNITS / "slurm-jwt-bridge.service")
    port = free_port()
    env = service_environment(svc, bridge_config, port, tmp_path)
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(60)
    env["NOTIFY_SOCKET"] = str(notify)
    argv = expand(value(svc, "Service", "ExecStart"), env)
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message, message
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert get(f"{base}/healthz")[0] == 200
        status, body = get(f"{base}/readyz")
        assert status == 200, body
        assert json.loads(body)["ready"] is True
        jwks = json.loads(get(f"{base}/.well-known/jwks.json")[1])
        assert len(jwks["keys"]) == 2

        # ExecReload: HUP to the main pid; gunicorn replaces its workers and keeps serving.
        reload_env = {**env, "MAINPID": str(proc.pid)}
        reload = expand(value(svc, "Service", "ExecReload"), reload_env)
        assert subprocess.run(reload, check=False).returncode == 0
        time.sleep(2)
        assert proc.poll() is None
        assert get(f"{base}/readyz")[0] == 200
    finally:
        stop_service(proc)
        sock.close()
        log.close()
    assert proc.returncode == 0, (tmp_path / "gunicorn.log").read_text()[-2000:]


def with_drop_in(
    unit: dict[str, list[tuple[str, str]]], drop_in: dict[str, list[tuple[str, str]]]
) -> dict[str, list[tuple[str, str]]]:
    """systemd's drop-in merge: an empty assignment resets a list (ExecStart=), a repeated
    ExecStart= adds to it, any other key replaces the unit's value."""
    merged = {name: list(entries) for name, entries in unit.items()}
    for name, entries in drop_in.items():
        section = merged.setdefault(name, [])
        for key, val in entries:
            if val == "" or key != "ExecStart":
                section[:] = [(k, v) for k, v in section if k != key]
            if val != "":
                section.append((key, val))
    return merged


def test_granian_drop_in_serves_reloads_and_stops(bridge_config: Path, tmp_path: Path) -> None:
    drop_in = parse_unit(UNITS / "slurm-jwt-bridge.service.d" / "granian.conf")
    svc = with_drop_in(parse_unit(UNITS / "slurm-jwt-bridge.service"), drop_in)
    assert value(svc, "Service", "Type") == "exec"  # granian sends no READY=1
    port = free_port()
    env = service_environment(svc, bridge_config, port, tmp_path)
    argv = expand(value(svc, "Service", "ExecStart"), env)
    assert argv[1:] == ["-m", "slurm_jwt_bridge.granian_serve"]
    log_path = tmp_path / "granian.log"
    log = log_path.open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"

    def wait_healthy() -> None:
        deadline = time.monotonic() + 60  # a bound on the wait, not a speed check
        while True:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            try:
                if get(f"{base}/healthz")[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)

    try:
        wait_healthy()
        status, body = get(f"{base}/readyz")
        assert status == 200, body
        assert len(json.loads(get(f"{base}/.well-known/jwks.json")[1])["keys"]) == 2
        reload = expand(value(svc, "Service", "ExecReload"), {**env, "MAINPID": str(proc.pid)})
        assert subprocess.run(reload, check=False).returncode == 0
        deadline = time.monotonic() + 60
        while "Stopped old worker-1" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        wait_healthy()
        assert get(f"{base}/readyz")[0] == 200
    finally:
        stop_service(proc)
        log.close()
    assert proc.returncode == 0, log_path.read_text()[-2000:]


def test_rotate_service_exec_lines(bridge_config: Path) -> None:
    unit = parse_unit(UNITS / "slurm-jwt-bridge-rotate.service")
    env = {**os.environ, **unit_environment(unit), "SLURM_JWT_BRIDGE_CONFIG": str(bridge_config)}
    keys = bridge_config.parent / "keys"
    before = KeyRing.load(keys)
    for command in values(unit, "Service", "ExecStart"):
        proc = subprocess.run(expand(command, env), env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    after = KeyRing.load(keys)
    assert after.active.kid == before.next.kid
    assert before.active.kid in {k.kid for k in after.rsa_keys if k.state == "retired"}


@pytest.fixture
def jwks_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    keys = tmp_path / "served-keys"
    init_keys(keys)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != "/.well-known/jwks.json":
                self.send_error(404)
                return
            body, _ = KeyRing.load(keys).jwks_document()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json", keys
    finally:
        server.shutdown()
        server.server_close()


def test_jwks_sync_service_exec_line(jwks_server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = jwks_server
    unit = parse_unit(UNITS / "slurm-jwt-bridge-jwks-sync.service")
    shipped = environment_file(UNITS / "slurm-jwt-bridge-jwks-sync.default")
    assert shipped["JWKS_URL"].endswith("/.well-known/jwks.json")
    out = tmp_path / "slurm" / "jwks.json"
    out.parent.mkdir()
    marker = tmp_path / "reconfigured"
    env = {
        **os.environ,
        **unit_environment(unit),
        **shipped,
        "JWKS_URL": url,
        "JWKS_OUT": str(out),
        # a command with an argument: must arrive as one --reconfigure-command value
        "RECONFIGURE_COMMAND": f"touch {marker}",
        "SYNC_EXTRA_ARGS": "--timeout 5 --allow-http",  # a plain-http test server
    }
    argv = expand(value(unit, "Service", "ExecStart"), env)
    success = {0, *map(int, value(unit, "Service", "SuccessExitStatus").split())}

    first = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 3, first.stderr
    assert first.returncode in success
    assert marker.exists(), "reconfigure command did not run"
    assert json.loads(out.read_text()) == KeyRing.load(served).jwks()
    marker.unlink()

    second = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stderr
    assert not marker.exists(), "unchanged: no reconfigure"

    env["JWKS_URL"] = url.rsplit("/", 1)[0] + "/missing.json"
    failed = subprocess.run(
        expand(value(unit, "Service", "ExecStart"), env),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.returncode not in success, "a failed sync must fail the unit"
    assert json.loads(out.read_text()) == KeyRing.load(served).jwks(), "file kept"
