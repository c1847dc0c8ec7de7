"""The gunicorn access log (gunicorn_logging.py): one JSON object per request."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from gunicorn.config import Config

from slurm_jwt_bridge.gunicorn_logging import (
    AGENT_MAX,
    LINE_MAX,
    PATH_MAX,
    SHORT_MAX,
    JsonAccessLogger,
)


class _Resp:
    def __init__(self, status: str, sent: int) -> None:
        self.status, self.sent = status, sent


def _logger(path: Path) -> JsonAccessLogger:
    cfg = Config()
    cfg.set("accesslog", str(path))
    return JsonAccessLogger(cfg)


def test_a_line_is_json_with_the_documented_fields_only(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    environ = {
        "REMOTE_ADDR": "10.0.0.7",
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/slurm/v0.0.44/jobs",
        "QUERY_STRING": "access_token=SECRET",
        "RAW_URI": "/slurm/v0.0.44/jobs?access_token=SECRET",
        "HTTP_AUTHORIZATION": "Bearer SECRET",
        "HTTP_USER_AGENT": 'curl "quoted" \\ agent',
    }
    _logger(log).access(_Resp("200 OK", 812), None, environ, timedelta(microseconds=1234))
    text = log.read_text()
    assert "SECRET" not in text
    line = json.loads(text)
    assert list(line) == [
        "time",
        "remote",
        "method",
        "path",
        "status",
        "bytes",
        "duration_us",
        "agent",
    ]
    assert line["remote"] == "10.0.0.7" and line["method"] == "GET"
    assert line["path"] == "/slurm/v0.0.44/jobs"
    assert (line["status"], line["bytes"], line["duration_us"]) == (200, 812, 1234)
    assert line["agent"] == 'curl "quoted" \\ agent'
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_long_agents_are_cut_and_odd_statuses_kept_as_zero(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/oauth/token", "HTTP_USER_AGENT": "a" * 5000}
    _logger(log).access(_Resp("bogus", 0), None, environ, timedelta(seconds=2))
    line = json.loads(log.read_text())
    assert len(line["agent"]) == AGENT_MAX
    assert line["status"] == 0 and line["duration_us"] == 2_000_000
    assert line["remote"] == "-"


def test_a_line_stays_one_write_below_pipe_buf(tmp_path: Path) -> None:
    """The same bounds as under granian (bounded_line): an escaped path of control characters
    cannot make a line that a pipe would interleave with another worker's."""
    log = tmp_path / "access.log"
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/" + "\x00" * 4000, "HTTP_USER_AGENT": "b"}
    _logger(log).access(_Resp("404 NOT FOUND", 9), None, environ, timedelta(microseconds=5))
    text = log.read_text()
    assert len(text.encode()) <= LINE_MAX + 1
    line = json.loads(text)
    assert line["path"] == "/" + "\x00" * (SHORT_MAX - 1) and line["status"] == 404
    long_path = "/p/" + "x" * 3000
    _logger(log).access(_Resp("200 OK", 9), None, {"PATH_INFO": long_path}, timedelta())
    assert json.loads(log.read_text().splitlines()[-1])["path"] == long_path[:PATH_MAX]
