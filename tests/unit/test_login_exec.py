"""``slurm-jwt-bridge login --exec``: the token check, command lookup, the real execve (in a
child interpreter), and the argument errors that stop before any network call.

The device grant itself, with --exec running real Slurm commands without munge, is tested
end to end in tests/integration/test_device_and_service.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.login_exec import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    MAX_TOKEN_LENGTH,
    ExecError,
    check_token,
    command_env,
    printable,
    resolve_command,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdW4iOiJhbGljZSJ9.c2lnbmF0dXJl"
# Nothing on 127.0.0.1:9 answers: a login that reached the network would fail with
# "cannot reach", not with the errors asserted below.
NOWHERE = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "bad",
    [
        None,
        123,
        "",
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        f"{TOKEN}\n",
        f"{TOKEN}; rm -rf ~",
        f"{TOKEN} x",
        TOKEN.replace(".", "\x00", 1),
        TOKEN + "\x1b[2J",
        "a.b." + "c" * MAX_TOKEN_LENGTH,
    ],
)
def test_check_token_refuses_anything_but_a_compact_jwt(bad: object) -> None:
    with pytest.raises(ExecError) as info:
        check_token(bad)
    # One fixed line: nothing of what came back is echoed.
    assert str(info.value) == "the bridge answered with something that is not a compact JWT"


def test_command_env_sets_token_and_keeps_the_rest() -> None:
    env = command_env(TOKEN, {"PATH": "/usr/bin", "SLURM_JWT": "old.stale.token"})
    assert env == {"PATH": "/usr/bin", "SLURM_JWT": TOKEN}


def test_printable_strips_control_characters() -> None:
    assert printable("ali\x1b[31mce\n\r") == "ali[31mce"


def test_resolve_command_like_a_shell(tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("data")
    plain.chmod(0o644)
    assert resolve_command(["tool"], {"PATH": str(tmp_path)}) == str(exe)
    assert resolve_command([str(exe)], {"PATH": ""}) == str(exe)
    cases = [
        (["nosuchtool"], EXIT_NOT_FOUND, "command not found: nosuchtool"),
        ([str(tmp_path / "missing")], EXIT_NOT_FOUND, "command not found"),
        ([str(plain)], EXIT_NOT_EXECUTABLE, "command not executable"),
        ([str(tmp_path)], EXIT_NOT_EXECUTABLE, "command not executable"),
        ([], 1, "needs a command"),
        ([""], 1, "needs a command"),
    ]
    for argv, code, message in cases:
        with pytest.raises(ExecError, match=message) as info:
            resolve_command(argv, {"PATH": str(tmp_path)})
        assert info.value.exit_code == code


def _exec_in_child(argv: list[str], token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    """exec_with_token in a fresh interpreter (it replaces the process that calls it)."""
    code = (
        "import sys; from slurm_jwt_bridge.login_exec import exec_with_token, resolve_command\n"
        "argv = sys.argv[2:]; exec_with_token(resolve_command(argv), argv, sys.argv[1])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JWT"}
    return subprocess.run(
        [sys.executable, "-c", code, token, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_exec_passes_exit_status_and_environment() -> None:
    proc = _exec_in_child(["sh", "-c", 'printf %s "$SLURM_JWT"; exit 42'])
    assert proc.returncode == 42, proc.stderr
    assert proc.stdout == TOKEN


def test_exec_death_by_signal_is_what_the_caller_sees() -> None:
    proc = _exec_in_child(["sh", "-c", "kill -TERM $$"])
    assert proc.returncode == -signal.SIGTERM, proc.stderr


def test_exec_refuses_a_bad_token_before_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    proc = _exec_in_child(["sh", "-c", f"touch {marker}"], token=f"{TOKEN}\nexport X=1")
    assert proc.returncode != 0
    assert "not a compact JWT" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--exec"], 1, "--exec needs a command after --"),
        (["--exec", "--"], 1, "--exec needs a command after --"),
        (["--", "squeue"], 1, "unexpected argument 'squeue'"),
        (["--export", "--exec", "--", "squeue"], 1, "--exec and --export exclude each other"),
        (["--exec", "--", "no-such-command-sjb"], 127, "command not found: no-such-command-sjb"),
    ],
)
def test_login_exec_argument_errors_stop_before_login(
    args: list[str], code: int, message: str
) -> None:
    result = CliRunner().invoke(main, ["login", "--url", NOWHERE, *args])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "cannot reach" not in result.output
