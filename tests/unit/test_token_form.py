"""The token door reads its form-encoded body itself (web/api.py ``_form``): for any body it
must read exactly what werkzeug's form parser reads (``request.form.to_dict()``)."""

from __future__ import annotations

import pytest
from flask import Flask, request
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_jwt_bridge.web.api import _form

FORM = "application/x-www-form-urlencoded"
APP = Flask(__name__)
APP.config["MAX_CONTENT_LENGTH"] = 64 * 1024


def both(body: bytes) -> tuple[dict[str, str], dict[str, str]]:
    with APP.test_request_context("/", method="POST", data=body, content_type=FORM):
        werkzeug = request.form.to_dict()
    with APP.test_request_context("/", method="POST", data=body, content_type=FORM):
        ours = _form()
    return werkzeug, ours


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"grant_type=a&subject_token=b.c.d&alg=RS256",
        b"a=1&a=2&b",  # first value wins; a name without '=' is an empty value
        b"x=%2B+y&&=&z=%zz",  # '+' is a space, a bad escape stays as it is
        b"a=%ff%fe",  # percent-escaped bytes that are not UTF-8
        b"\xff\xfe=1",  # a body that is not UTF-8: an empty form, as werkzeug reads it
        b"a=1;b=2",  # ';' is not a separator
        "name=\u00e9t\u00e9".encode(),
    ],
)
def test_reads_what_werkzeug_reads(body: bytes) -> None:
    werkzeug, ours = both(body)
    assert ours == werkzeug


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(alphabet="ab=&%+;2F\u00e9 ", max_size=60).map(str.encode))
def test_reads_what_werkzeug_reads_any_body(body: bytes) -> None:
    werkzeug, ours = both(body)
    assert ours == werkzeug


def test_a_body_over_the_limit_is_refused() -> None:
    from werkzeug.exceptions import RequestEntityTooLarge

    with APP.test_request_context("/", method="POST", data=b"a=" + b"x" * 70000, content_type=FORM):
        with pytest.raises(RequestEntityTooLarge):
            _form()
