"""The command lines of README.md and docs/cli.md: each one is classified, and those that can
run here run as written, in a temporary directory.

A command is one of:
- RUN: run below (only what a test cannot use as is is replaced: /etc paths by a temporary
  directory, the service account's ``runuser``, example hosts by the local test servers);
- MAKE: a make target, checked with ``make -n`` (``make demo`` itself runs in
  tests/integration/test_demo.py);
- ILLUSTRATIVE: needs what a test here cannot give it (a person at a browser, a controller
  host, slurmrestd behind the example host); marked ``# illustrative`` in the document itself;
- TEXT: a block that is no command (a diagram, what ``make demo`` prints).
A new command line that is none of these fails ``test_every_command_line_is_classified``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.bridge import start_bridge
from tests.helpers.slurm import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/cli.md")
BIN = Path(sys.executable).parent
MARK = "# illustrative"

RUN, MAKE, ILLUSTRATIVE, TEXT = "run", "make", "illustrative", "text"

KINDS: dict[str, str] = {
    # README.md
    "make demo": MAKE,
    "make test": MAKE,
    "slurm-jwt-bridge demo: ready": TEXT,  # what make demo prints (tests/integration/test_demo.py)
    "upstream token ──verify──▶": TEXT,  # the diagram
    "install -d -o slurm-jwt-bridge -g slurm-jwt-bridge -m 0700 /etc/slurm-jwt-bridge/keys": RUN,
    "runuser -u slurm-jwt-bridge -- slurm-jwt-bridge keys init": RUN,
    "install -d -m 0755 /etc/slurm/jwks": RUN,
    "runuser -u slurm-jwt-bridge -- slurm-jwt-bridge jwks export": RUN,
    "install -m 0644 /tmp/jwks.json /etc/slurm/jwks/jwks.json": RUN,
    "runuser -u slurm-jwt-bridge -- slurm-jwt-bridge mint alice": RUN,
    "runuser -u slurm-jwt-bridge -- env SLURM_JWT_BRIDGE_CONFIG=": RUN,
    'printf %s "$IDP_TOKEN" | curl -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange': RUN,  # noqa: E501
    "printf 'Authorization: Bearer %s\\n' \"$IDP_TOKEN\" | curl -H @-": ILLUSTRATIVE,
    "slurm-jwt-bridge login --url https://bridge.example.org --exec -- sbatch job.sh": ILLUSTRATIVE,
    # docs/cli.md
    "slurm-jwt-bridge config schema > slurm-jwt-bridge.schema.json": RUN,
    "slurm-jwt-bridge doctor --url https://bridge.example.org/.well-known/jwks.json": ILLUSTRATIVE,
    'eval "$(slurm-jwt-bridge login --url https://bridge.example.org --export)"': ILLUSTRATIVE,
    "printf 'X-SLURM-USER-TOKEN: %s\\n' \"$SLURM_JWT\" | curl": ILLUSTRATIVE,
    "unset SLURM_JWT": ILLUSTRATIVE,
    "slurm-jwt-bridge login --url https://bridge.example.org --exec -- bash -c": ILLUSTRATIVE,
}


def code_blocks(doc: str) -> list[list[str]]:
    """Indented code blocks (four spaces after a blank line), dedented."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    previous = ""
    for line in (ROOT / doc).read_text().splitlines():
        if current is not None and (line.startswith("    ") or not line.strip()):
            current.append(line)
        elif current is None and line.startswith("    ") and not previous.strip():
            current = [line]
        else:
            if current is not None:
                blocks.append(current)
            current = None
        previous = line
    if current is not None:
        blocks.append(current)
    out = []
    for block in blocks:
        while block and not block[-1].strip():
            block.pop()
        indent = min(len(ln) - len(ln.lstrip()) for ln in block if ln.strip())
        out.append([ln[indent:] for ln in block])
    return out


def commands(block: list[str]) -> list[tuple[str, bool]]:
    """(command with its continuations joined, marked illustrative) for each command line;
    a comment line starting with ``# illustrative`` marks every command after it in the block."""
    out: list[tuple[str, bool]] = []
    marked = False
    pending = ""
    for line in block:
        text = line.strip()
        if not pending and (not text or text.startswith("#")):
            marked = marked or text.startswith(MARK)
            continue
        if text.endswith("\\"):
            pending += text[:-1].rstrip() + " "
            continue
        out.append((pending + text, marked or MARK in text))
        pending = ""
    return out


def key_of(command: str) -> str | None:
    found = [k for k in KINDS if command.startswith(k)]
    return max(found, key=len) if found else None


def kind_of(command: str) -> str | None:
    key = key_of(command)
    return KINDS[key] if key else None


def doc_commands() -> list[tuple[str, str, bool, str | None]]:
    """(document, command, marked illustrative, kind) of every command line; a TEXT block
    counts as one entry, its first line."""
    out = []
    for doc in DOCS:
        for block in code_blocks(doc):
            first = block[0].strip()
            if kind_of(first) == TEXT:
                out.append((doc, first, False, TEXT))
                continue
            for command, marked in commands(block):
                out.append((doc, command, marked, kind_of(command)))
    return out


def test_every_command_line_is_classified() -> None:
    entries = doc_commands()
    assert len(entries) >= len(KINDS) - 1, entries  # the extractor still finds the blocks
    unknown = [(doc, cmd) for doc, cmd, _, kind in entries if kind is None]
    assert not unknown, f"classify these in {__name__}.KINDS (run, or mark illustrative): {unknown}"
    for doc, cmd, marked, kind in entries:
        assert marked == (kind == ILLUSTRATIVE), (
            f"{doc}: {cmd!r} is {kind}; the document must "
            + ("mark it" if kind == ILLUSTRATIVE else "not mark it")
            + f" with a {MARK!r} comment"
        )
    stale = [
        k for k in KINDS if not any(kind_of(cmd) and cmd.startswith(k) for _, cmd, _, _ in entries)
    ]
    assert not stale, f"classified but no longer in the documents: {stale}"


def _of_kind(kind: str, doc: str = "README.md") -> list[str]:
    return [cmd for d, cmd, _, k in doc_commands() if k == kind and d == doc]


def test_make_targets_exist() -> None:
    targets = [cmd.split()[1] for cmd in _of_kind(MAKE)]
    assert targets == ["demo", "test"]
    for target in targets:
        r = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr


def _local(command: str, tmp: Path) -> str:
    """The README's setup line as this test can run it: no root, no service account."""
    command = command.replace("runuser -u slurm-jwt-bridge -- ", "")
    command = command.replace("-o slurm-jwt-bridge -g slurm-jwt-bridge ", "")
    paths = r"(?<![\w/])(/etc/slurm-jwt-bridge|/etc/slurm|/tmp)(?=/|\s|$)"
    return re.sub(paths, lambda m: f"{tmp}{m.group(1)}", command)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", **extra}


def run_setup_block(root: Path) -> tuple[str, str]:
    """The README's setup block up to ``serve``, as written under ``root``: the ``serve``
    line, and alice's token from its ``mint`` line. The JWKS lands in
    ``root/etc/slurm/jwks/jwks.json`` (checked here: mode 0644, with a kid)."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    lines = [_local(cmd, root) for cmd in _of_kind(RUN) if not cmd.startswith("printf")]
    assert len(lines) == 7, lines
    *setup, serve = lines
    token = ""
    for line in setup:
        r = subprocess.run(
            ["bash", "-c", line], env=_env(), capture_output=True, text=True, timeout=120
        )
        if "mint alice" in line and r.returncode == 1 and "alice" in r.stderr:
            # require_local_account (the default) refuses a user this machine does not have
            pytest.fail(f"no local account alice here: {r.stderr.strip()}")
        assert r.returncode == 0, (line, r.stdout, r.stderr)
        if "mint alice" in line:
            assert r.stdout.startswith("SLURM_JWT=eyJ"), r.stdout[:40]
            token = r.stdout.strip().removeprefix("SLURM_JWT=")
    jwks = root / "etc/slurm/jwks/jwks.json"
    assert oct(jwks.stat().st_mode & 0o777) == "0o644" and '"kid"' in jwks.read_text()
    return serve, token


def test_readme_setup_block_runs(tmp_path: Path) -> None:
    """keys init, jwks export + install, mint, serve --prod: as written, in a temp root
    (slurmctld taking the token: tests/integration/test_doc_commands_slurm.py)."""
    serve, _token = run_setup_block(tmp_path)
    env = _env()

    # serve --prod reads the configuration the line names; the block does not write one.
    port = free_port()
    config = tmp_path / "etc/slurm-jwt-bridge/bridge.toml"
    config.write_text(
        f'[keys]\ndir = "{tmp_path}/etc/slurm-jwt-bridge/keys"\n'
        f'[server]\nport = {port}\n[audit]\ndestination = "none"\n'
    )
    assert "serve --prod" in serve and str(config) in serve, serve
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        ["bash", "-c", serve],  # a simple command: bash execs it, gunicorn keeps this pid
        env={**env, "GUNICORN_WORKERS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        body = _wait_healthz(f"http://127.0.0.1:{port}", proc, tmp_path / "serve.log")
        assert b"ok" in body
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _wait_healthz(url: str, proc: subprocess.Popen[Any], log: Path) -> bytes:
    for _ in range(300):
        if proc.poll() is not None:
            pytest.fail(f"serve --prod exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                return bytes(r.read())
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"serve --prod did not answer: {log.read_text()[-2000:]}")


def test_readme_token_exchange_runs(tmp_path: Path, idp: Any) -> None:
    """The README's curl line against a running bridge and a local issuer (for the example
    host https://bridge.example.org)."""
    (line,) = [cmd for cmd in _of_kind(RUN) if cmd.startswith("printf")]
    keys = tmp_path / "keys"
    r = subprocess.run(
        [str(BIN / "slurm-jwt-bridge"), "keys", "init", "--keys-dir", str(keys)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    config = f"""
[keys]
dir = "{keys}"
[audit]
destination = "none"
[[issuers]]
name = "oidc"
kind = "oidc"
issuer = "{idp.issuer}"
audiences = ["bridge"]
token_use = ["access"]
[mapping]
require_local_account = false
[[mapping.rules]]
claim = "preferred_username"
"""
    with start_bridge(tmp_path / "bridge", config) as bridge:
        token = idp.mint(idp.oidc_claims(aud="bridge", preferred_username="alice"))
        line = line.replace("https://bridge.example.org", bridge.url)
        r = subprocess.run(
            ["bash", "-c", line],
            env=_env(IDP_TOKEN=token),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 0, r.stderr
    assert '"slurm_user":"alice"' in r.stdout.replace(" ", ""), r.stdout
    assert '"access_token":"eyJ' in r.stdout.replace(" ", ""), r.stdout


def test_cli_config_schema_line_runs(tmp_path: Path) -> None:
    """docs/cli.md's ``config schema`` line, in an empty directory: a JSON Schema that the
    shipped example configurations satisfy (tests/unit/test_config_docs.py checks them)."""
    (line,) = [cmd for cmd in _of_kind(RUN, "docs/cli.md") if "config schema" in cmd]
    r = subprocess.run(
        ["bash", "-c", line], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    schema = json.loads((tmp_path / "slurm-jwt-bridge.schema.json").read_text())
    assert schema["$schema"].endswith("2020-12/schema") and "server" in schema["properties"]
