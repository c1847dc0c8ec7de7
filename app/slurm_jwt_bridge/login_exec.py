"""``slurm-jwt-bridge login --exec -- COMMAND...``: run one command with ``SLURM_JWT`` set.

The token goes into the command's environment only: never into an argument vector (where every
local user could read it in /proc/PID/cmdline), never into the calling shell. The bridge process
replaces itself with the command (execve), so the command's exit status, including death by a
signal, is what the caller sees.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import NoReturn

ENV_NAME = "SLURM_JWT"
# header.payload.signature, base64url without padding: nothing a shell or Slurm would read as
# anything but one opaque word.
COMPACT_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MAX_TOKEN_LENGTH = 16384
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class ExecError(Exception):
    """The command cannot be run, or the token is not fit for the environment."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resolve_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The executable ``argv[0]`` names, looked up on PATH like a shell does (before logging in,
    so a typo costs no login). Raises ExecError with exit 127 (not found) or 126 (not
    executable)."""
    if not argv or not argv[0]:
        raise ExecError("--exec needs a command after --")
    name = argv[0]
    env = os.environ if env is None else env
    if "/" in name:
        if not os.path.exists(name):
            raise ExecError(f"command not found: {name}", EXIT_NOT_FOUND)
        if os.path.isdir(name) or not os.access(name, os.X_OK):
            raise ExecError(f"command not executable: {name}", EXIT_NOT_EXECUTABLE)
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise ExecError(f"command not found: {name}", EXIT_NOT_FOUND)
    return found


def check_token(token: object) -> str:
    """The token if it is a compact JWT (three base64url parts, bounded length), else
    ExecError. Nothing else may reach the command's environment."""
    if (
        not isinstance(token, str)
        or len(token) > MAX_TOKEN_LENGTH
        or not COMPACT_JWT.fullmatch(token)
    ):
        raise ExecError("the bridge answered with something that is not a compact JWT")
    return token


def printable(value: object) -> str:
    """``value`` as text without control characters (it came from the network)."""
    return "".join(ch for ch in str(value) if ch.isprintable())


def command_env(token: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the command: the caller's, with SLURM_JWT set to the checked token."""
    out = dict(os.environ if env is None else env)
    out[ENV_NAME] = check_token(token)
    return out


def exec_with_token(path: str, argv: Sequence[str], token: str) -> NoReturn:
    """Replace this process with ``argv`` (executable ``path``), SLURM_JWT set to ``token``."""
    env = command_env(token)
    try:
        os.execve(path, list(argv), env)  # noqa: S606 (the user's own command, by design)
    except FileNotFoundError:
        raise ExecError(f"command not found: {argv[0]}", EXIT_NOT_FOUND) from None
    except OSError as exc:
        raise ExecError(
            f"cannot run {argv[0]}: {exc.strerror or type(exc).__name__}", EXIT_NOT_EXECUTABLE
        ) from None
