"""granian's access-log record written as gunicorn_logging.py's JSON line, and the bind split
(app/slurm_jwt_bridge/granian_serve.py); the server itself runs in
tests/integration/test_production.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from slurm_jwt_bridge.granian_serve import ACCESS_FORMAT, JsonAccessFormatter, bind_address


def record(atoms: dict) -> logging.LogRecord:
    rec = logging.LogRecord("granian.access", logging.INFO, __file__, 1, ACCESS_FORMAT, (), None)
    rec.args = atoms  # what granian's access logger passes: one dict of atoms
    return rec


def test_a_quote_in_the_agent_keeps_the_line_json() -> None:
    atoms = {
        "addr": "192.0.2.7",
        "method": "POST",
        "path": "/oauth/token",
        "query_string": "access_token=secret",
        "status": 200,
        "dt_ms": 1.5,
        "_h0": 'evil" "x' + "a" * 500,
    }
    line = json.loads(JsonAccessFormatter().format(record(atoms)))
    assert line["remote"] == "192.0.2.7" and line["method"] == "POST"
    assert line["path"] == "/oauth/token" and line["status"] == 200
    assert line["duration_us"] == 1500
    assert line["agent"].startswith('evil" "x') and len(line["agent"]) == 256
    assert "secret" not in json.dumps(line)  # the query string is never written
    assert set(line) == {"time", "remote", "method", "path", "status", "duration_us", "agent"}


def test_a_record_without_atoms_is_still_a_line() -> None:
    line = json.loads(JsonAccessFormatter().format(record({})))
    assert line["status"] == 0 and line["path"] == "-"


@pytest.mark.parametrize(
    ("bind", "want"),
    [
        ("127.0.0.1:8000", {"address": "127.0.0.1", "port": 8000}),
        ("[::1]:9000", {"address": "::1", "port": 9000}),
        (":80", {"address": "0.0.0.0", "port": 80}),  # noqa: S104 (every interface, as gunicorn)
        ("unix:/run/bridge.sock", {"uds": Path("/run/bridge.sock")}),
    ],
)
def test_bind_as_gunicorn_reads_it(bind: str, want: dict) -> None:
    assert bind_address(bind) == want


def test_an_inherited_descriptor_is_refused_in_one_line() -> None:
    with pytest.raises(SystemExit, match="fd://N is gunicorn only"):
        bind_address("fd://3")
