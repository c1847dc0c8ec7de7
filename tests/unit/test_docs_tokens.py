"""The documented curl lines must not put a token on a command line: on a shared login node
any local user reads every process's arguments from /proc/<pid>/cmdline."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.stub_http import StubServer

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "examples").rglob("*.md")),
    *sorted((REPO / "examples").rglob("*.sh")),
    *sorted((REPO / "scripts").glob("*.sh")),
    REPO / "app" / "slurm_jwt_bridge" / "web" / "templates" / "token.html",
]
# A token in an argument: $IDP_TOKEN / $SLURM_JWT / {{ token }} inside a curl command's words
# (reading them from stdin or a file, -H @- / -H @file / --data-urlencode name@-, is fine).
TOKEN_ARG = re.compile(r"\$\{?(IDP_TOKEN|SLURM_JWT)\b|\{\{\s*token\s*\}\}")


CURL = re.compile(r"(^|[\s|;(>])curl\s")


def curl_commands(text: str) -> list[str]:
    """Each curl command (continuation lines joined) in a document."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if CURL.search(line)]


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_documented_curl_passes_a_token_as_an_argument(doc: Path) -> None:
    for command in curl_commands(doc.read_text()):
        match = CURL.search(command)
        assert match is not None
        curl_part = command[match.start() :]
        assert not TOKEN_ARG.search(curl_part), f"{doc.name}: {command.strip()}"


def _readme_proxy_line() -> str:
    for command in curl_commands((REPO / "README.md").read_text()):
        if "/slurm/v0.0.44/jobs" in command:
            return command.strip()
    raise AssertionError("README.md shows no curl line for the proxy")


def test_the_readme_proxy_line_sends_the_token_without_showing_it_in_proc() -> None:
    """Run README's line for real against a slow local server and read every process's
    cmdline meanwhile, as another local user would."""
    token = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.c2ln"
    stub = StubServer()
    stub.delay = 1.5
    try:
        line = _readme_proxy_line().replace("https://bridge.example.org", stub.url)
        proc = subprocess.Popen(
            ["bash", "-c", line],
            env={"PATH": os.environ["PATH"], "IDP_TOKEN": token},
            stdout=subprocess.DEVNULL,
        )
        seen_in_cmdline = False
        while proc.poll() is None:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                seen_in_cmdline |= token.encode() in cmdline
            time.sleep(0.01)
        assert proc.returncode == 0
        assert stub.seen and stub.seen[0].header("Authorization") == f"Bearer {token}"
        assert not seen_in_cmdline
    finally:
        stub.close()
