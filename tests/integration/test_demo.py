"""`make demo` as a newcomer runs it: log in with Chromium, run the page's curl line and the
printed copy-paste block, see the job run as alice inside Slurm, press Ctrl-C, nothing left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.helpers.browser import TIMEOUT_MS, chromium, idp_sign_in, require_node
from tests.helpers.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def process_tree(root: int) -> dict[int, str]:
    """pid -> start time of every live descendant of ``root`` (re-parented ones are found by
    their session: each daemon the demo starts leads a session of its own under it)."""
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    sessions: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            pid = int(stat.parent.name)
            parents[pid], sessions[pid], starts[pid] = int(fields[1]), int(fields[3]), fields[19]
    tree = {root}
    grown = True
    while grown:
        grown = False
        for pid, ppid in parents.items():
            if pid not in tree and (ppid in tree or sessions[pid] in tree):
                tree.add(pid)
                grown = True
    return {pid: starts[pid] for pid in tree if pid in starts}


def still_alive(snapshot: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in snapshot.items():
        with contextlib.suppress(OSError, IndexError):
            text = Path(f"/proc/{pid}/stat").read_text()
            if text[text.rindex(")") + 2 :].split()[19] == start:
                alive.append(pid)
    return alive


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    require_node()
    if os.geteuid() != 0:
        skip_or_fail("make demo needs root")
    port = free_port()
    out = tmp_path / "demo.out"
    with open(out, "w") as fh:
        proc = subprocess.Popen(
            ["make", "-s", "demo"],
            cwd=REPO,
            env={**os.environ, "DEMO_PORT": str(port)},
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "Stop everything with Ctrl-C" not in out.read_text():
            assert proc.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.5)
        yield proc, out.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_make_demo_runs_the_whole_loop(demo: tuple[subprocess.Popen[str], str]) -> None:
    proc, printed = demo
    url = re.search(r"Log in:\s+(http://127\.0\.0\.1:\d+)/", printed).group(1)
    block = printed.split("in a shell on this machine:", 1)[1].split("Stop everything", 1)[0]
    lines = [ln.strip() for ln in block.strip().splitlines()]
    assert lines[0].startswith("read -rs SLURM_JWT"), lines
    started = process_tree(proc.pid)
    assert any("slurmctld" in Path(f"/proc/{p}/cmdline").read_text() for p in started)

    with chromium() as browser:
        page = browser.new_context().new_page()
        page.goto(url + "/")
        page.wait_for_selector("#login", timeout=TIMEOUT_MS)
        page.click("#login")
        idp_sign_in(page, "alice")
        page.wait_for_selector("#token", timeout=TIMEOUT_MS)
        token = page.input_value("#token")
        curl = page.input_value("#curl")
    assert url in curl and "$SLURM_JWT" in curl, curl

    env = {"PATH": "/usr/bin:/bin", "SLURM_JWT": token}
    # The token page's own example, as shown.
    r = subprocess.run(
        ["bash", "-c", curl + " -s -w '\\n%{http_code}'"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.stdout.rstrip().endswith("200"), r.stdout[-500:] + r.stderr
    # The printed block, line by line as a person pastes it (the `read` is the paste itself).
    script = "\n".join(lines[1:]).replace("\\\n", "")
    r = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = re.search(r'"job_id"\s*:\s*(\d+)', r.stdout).group(1)
    assert r.stdout.rstrip().endswith("alice"), r.stdout[-800:]
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        env={"PATH": "/usr/bin:/bin", "SLURM_CONF": conf_of(started)},
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert re.search(r"\bUserId=alice\(", shown), shown

    # Ctrl-C stops everything the demo started.
    started = process_tree(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(90)
    deadline = time.monotonic() + 15
    while still_alive(started) and time.monotonic() < deadline:
        time.sleep(0.3)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in still_alive(started)}
    assert not left, left


def conf_of(pids: dict[int, str]) -> str:
    """The demo cluster's slurm.conf, from its slurmctld's environment."""
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"slurmctld" in Path(f"/proc/{pid}/cmdline").read_bytes():
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                return next(e[11:].decode() for e in env if e.startswith(b"SLURM_CONF="))
    raise AssertionError("no slurmctld in the demo's process tree")
