"""Properties on inputs nobody writes by hand: what producers may send, and what providers may answer.

Deterministic (derandomized, no example database) and bounded, so `make test` stays fast and CI repeatable.
"""

import gzip
import json
import math
import re
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import BaseAdapter

from callcancel.errors import CancelFailure, InvalidRequest, TransientFailure
from callcancel.models import PlumCancel, PlumCredentials, RyngCancel, RyngCredentials, parse_cancel_request
from callcancel.providers import PlumClient, RyngClient, provider_session
from callcancel.providers.base import MAX_MESSAGE_CHARS, Answer
from tests.unit.test_providers import canned_response

PROPERTY = settings(
    max_examples=100,
    deadline=None,  # a shared 2-core machine: timing is not the property
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# ---- what producers may send ------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5)
)
# Values a field can hold, the valid among the hostile.
field_values = (
    st.from_regex(ID, fullmatch=True)
    | st.sampled_from(["ryng", "plum", "now", "nightly", 1, 0, True, False, None, 10**400, "", "a" * 65])
    | json_values
)
FIELDS = (
    "provider",
    "account",
    "call_id",
    "application_id",
    "deployment_id",
    "request_id",
    "when",
    "reason",
    "version",
)


ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
ids = (
    st.from_regex(ID, fullmatch=True)
    | st.text(alphabet=ID_CHARS, min_size=33, max_size=64)
    | st.sampled_from(["-", "_", "0", "a" * 64, "-" * 64, ".."])
)
OPTIONAL = {
    "request_id": st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True),
    "when": st.sampled_from(["now", "nightly"]),
    "reason": st.text(max_size=500),
    "version": st.just(1),
}


@st.composite
def near_requests(draw: st.DrawFn) -> str:
    """Valid requests, half of them then broken in a field or two, or given a key twice."""
    request: dict[str, Any] = {
        "provider": draw(st.sampled_from(["ryng", "plum"])),
        "account": draw(st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)),
    }
    if request["provider"] == "ryng":
        request["call_id"] = draw(ids | st.integers(min_value=0, max_value=10**70))
    else:
        request["application_id"], request["deployment_id"] = draw(ids), draw(ids)
    for name in draw(st.lists(st.sampled_from(sorted(OPTIONAL)), max_size=4, unique=True)):
        request[name] = draw(OPTIONAL[name])
    if not draw(st.booleans()):
        return json.dumps(request)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=2)):
        request[name] = draw(field_values)
    text = json.dumps(request, allow_nan=True)
    if draw(st.booleans()):
        # A second value for a key: JSON allows it, and the parser must pick one without surprise.
        name = draw(st.sampled_from(FIELDS))
        text = text[:-1] + f", {json.dumps(name)}: {json.dumps(draw(field_values), allow_nan=True)}}}"
    return text


nested = st.builds(
    lambda opener, depth: opener * depth, st.sampled_from(["[", '{"a":', '[{"b":']), st.integers(1, 70_000)
)
big = st.builds(
    lambda filler, size, valid: (valid[:-1] + f', "reason": "{filler * size}"}}') if filler else " " * size + valid,
    st.sampled_from(["", "x", "\u00e9", "\U0001f600"]),
    st.sampled_from([400, 256 * 1024]),
    st.just('{"provider": "ryng", "account": "acme", "call_id": "c-1"}'),
)
hostile_bodies = st.binary(max_size=512) | st.text(max_size=512) | json_values.map(json.dumps) | nested | big


class RecordingAdapter(BaseAdapter):
    """The transport: records each prepared request and answers as the provider would to a success."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.urls.append(str(request.url))
        return canned_response(200, b'{"error": false}') if "ryng" in str(request.url) else canned_response(202)

    def close(self) -> None:
        pass


def documented_url(request: RyngCancel | PlumCancel) -> tuple[str, str, str]:
    if isinstance(request, RyngCancel):
        return "https", "acme.ryng.in", f"/rest-api/v1/progressive/call/{request.call_id}/cancel"
    return "https", "fuse.plumvoice.com", f"/api/apps/{request.application_id}/{request.deployment_id}/cancel"


def parses_to_its_documented_url_or_is_invalid(body: str | bytes) -> None:
    try:
        request = parse_cancel_request(body)
    except InvalidRequest:
        return
    session = provider_session(pool_size=1)
    adapter = RecordingAdapter()
    session.mount("https://", adapter)
    if isinstance(request, RyngCancel):
        credentials: Any = RyngCredentials(subdomain="acme", access_token="t0ken-value")  # type: ignore[arg-type]
        RyngClient(session, "https://{subdomain}.ryng.in", (3, 10)).cancel(request, credentials)
    else:
        credentials = PlumCredentials(email="ops@acme.example", developer_key="k3y-value")  # type: ignore[arg-type]
        PlumClient(session, "https://fuse.plumvoice.com", (3, 10)).cancel(request, credentials)

    [url] = adapter.urls
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == documented_url(request)
    assert (parts.query, parts.fragment) == ("", "")


@PROPERTY
@given(hostile_bodies)
def test_any_body_is_a_request_or_invalid(body: str | bytes) -> None:
    parses_to_its_documented_url_or_is_invalid(body)


@PROPERTY
@given(near_requests())
def test_whatever_is_accepted_goes_only_to_its_documented_url(body: str) -> None:
    parses_to_its_documented_url_or_is_invalid(body)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '{"call_id": NaN}', '{"version": Infinity}'])
def test_nan_and_infinity_are_invalid(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_cancel_request(text)


# ---- what providers may answer ----------------------------------------------------------------------

SECRET = "s3cr3t-Token_x9"  # what the client sent; no answer may carry it on

xml_with_entities = st.sampled_from(
    [
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b"<r><error>&b;&b;&b;&b;&b;&b;&b;&b;</error></r>",
        b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r><error>&x;</error></r>',
        b"<r><error>&undefined;</error></r>",
        b"<r><error>" + SECRET.encode() + b" &amp; &#x1F600; &lt;</error></r>",
        b"<r>" * 70_000,
    ]
)
embedded = st.tuples(st.binary(max_size=200), st.sampled_from([b"", SECRET.encode()]), st.binary(max_size=200))
answer_bodies = (
    st.binary(max_size=4096)
    | embedded.map(b"".join)
    | st.builds(lambda s: json.dumps({"error": True, "message": s}).encode(), st.text() | st.just(SECRET))
    | xml_with_entities
    | st.builds(lambda n, b: b * n, st.sampled_from([1 << 20, 3 << 20]), st.sampled_from([b"x", b"\xff", b"[", b" "]))
    | st.builds(lambda b: b"\xc3\x28" + b + b"\xed\xa0\x80", st.binary(max_size=100))  # invalid UTF-8
)
answer_headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "gzip, gzip", "x-gzip", "GZIP "]),
        "Retry-After": st.text(max_size=40) | st.integers(-(10**20), 10**20).map(str),
        "Content-Type": st.sampled_from(["application/json", "application/xml", "text/html; charset=latin-1"]),
    },
)


@st.composite
def answers(draw: st.DrawFn) -> tuple[int, bytes, dict[str, str]]:
    status = draw(st.integers(100, 599))
    body = draw(answer_bodies)
    headers = draw(answer_headers)
    if headers.get("Content-Encoding", "").strip().lower() in ("gzip", "x-gzip") and draw(st.booleans()):
        body = gzip.compress(body)  # sometimes well-formed, sometimes not
    # Headers are latin-1 on the wire; http.client would never hand over anything else.
    return status, body, {k: v.encode("latin-1", "replace").decode("latin-1") for k, v in headers.items()}


@PROPERTY
@given(answers())
def test_the_answer_reader_never_raises_and_never_passes_a_credential_on(answer: tuple[int, bytes, Any]) -> None:
    status, body, headers = answer

    read = Answer.read(canned_response(status, body, headers), deadline=time.monotonic() + 30, secrets=[SECRET])

    assert read.status == status
    assert read.message is None or (0 < len(read.message) <= MAX_MESSAGE_CHARS and read.message.isprintable())
    assert SECRET not in (read.message or "")
    assert read.retry_after is None or not math.isnan(read.retry_after)


@PROPERTY
@given(answers(), st.sampled_from(["ryng", "plum"]))
def test_every_answer_ends_as_a_cancel_or_a_typed_failure(answer: tuple[int, bytes, Any], provider: str) -> None:
    session = requests.Session()
    session.request = lambda *args, **kwargs: canned_response(*answer)  # type: ignore[method-assign]
    try:
        if provider == "ryng":
            credentials: Any = RyngCredentials(subdomain="acme", access_token=SECRET)  # type: ignore[arg-type]
            request: Any = RyngCancel(provider="ryng", account="acme", call_id="c-1")
            RyngClient(session, "https://{subdomain}.ryng.in", (3, 10)).cancel(request, credentials)
        else:
            credentials = PlumCredentials(email="ops@acme.example", developer_key=SECRET)  # type: ignore[arg-type]
            request = PlumCancel(provider="plum", account="acme", application_id="a", deployment_id="d")
            PlumClient(session, "https://fuse.plumvoice.com", (3, 10)).cancel(request, credentials)
    except (CancelFailure, TransientFailure) as failure:
        assert SECRET not in str(failure)
        assert failure.http_status == answer[0]
    else:
        assert 200 <= answer[0] < 300
