"""Every row of the outcome table, for each provider, from the HTTP answer alone (no network)."""

import gzip
import io
import json
import time
import zlib
from http.client import RemoteDisconnected
from typing import Any

import pytest
import requests
import urllib3
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError, ProtocolError

from callcancel.errors import AuthDenied, ConfigError, NotFound, Rejected, TransientFailure
from callcancel.models import PlumCancel, PlumCredentials, RyngCancel, RyngCredentials
from callcancel.providers import PlumClient, RyngClient
from callcancel.providers.base import MAX_BODY_BYTES, Answer

RYNG_REQUEST = RyngCancel(provider="ryng", account="acme", call_id="c-1")
PLUM_REQUEST = PlumCancel(provider="plum", account="acme", application_id="a1", deployment_id="d1")
RYNG_CREDENTIALS = RyngCredentials(subdomain="acme", access_token="tok")  # type: ignore[arg-type]
PLUM_CREDENTIALS = PlumCredentials(email="ops@acme.example", developer_key="key")  # type: ignore[arg-type]

UNKNOWN_DEPLOYMENT = "No deployment was found by that application id and deployment id."
XML_404 = f'<?xml version="1.0"?>\n<result>\n  <error>{UNKNOWN_DEPLOYMENT}</error>\n</result>'.encode()


def canned_response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> requests.Response:
    """A real `requests.Response` over a real urllib3 response, streamed from memory instead of a socket."""
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response.raw = urllib3.HTTPResponse(
        body=io.BytesIO(body), headers=headers, status=status, preload_content=False, decode_content=False
    )
    return response


class AnsweringSession(requests.Session):
    """A session whose transport is a canned answer: the adapter under test reads a real `requests.Response`."""

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.answer = (status, body, headers or {})
        self.sent: list[dict[str, Any]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append({"method": method, "url": url, **kwargs})
        return canned_response(*self.answer)


def cancel_at(provider: str, session: requests.Session) -> None:
    if provider == "ryng":
        RyngClient(session, "https://{subdomain}.ryng.in", (3, 10)).cancel(RYNG_REQUEST, RYNG_CREDENTIALS)
    else:
        PlumClient(session, "https://fuse.plumvoice.com", (3, 10)).cancel(PLUM_REQUEST, PLUM_CREDENTIALS)


OUTCOMES = [
    # provider, status, body, headers, expected (None = cancelled), provider message
    ("ryng", 200, b'{"error": false, "message": "Call Cancelled", "data": {}}', {}, None, None),
    ("ryng", 200, b'{"error": true, "message": "Already dialled"}', {}, Rejected, "Already dialled"),
    ("ryng", 200, b"OK", {}, Rejected, "OK"),
    ("ryng", 200, b"", {}, Rejected, None),
    ("ryng", 403, b'{"error": true, "message": "Unauthorized Token"}', {}, AuthDenied, "Unauthorized Token"),
    ("ryng", 500, b'{"error": true, "message": "Call ID does not exist"}', {}, NotFound, "Call ID does not exist"),
    ("ryng", 500, b'{"error": true, "message": "Internal error"}', {}, TransientFailure, "Internal error"),
    ("ryng", 500, b"<html>Bad Gateway</html>", {}, TransientFailure, None),
    ("ryng", 401, b'{"error": true, "message": "no"}', {}, Rejected, "no"),  # only 403 is `auth` for Ryng
    ("ryng", 404, b"", {}, Rejected, None),
    ("ryng", 405, b"", {}, Rejected, None),
    ("ryng", 301, b"", {"Location": "https://elsewhere"}, Rejected, None),
    ("ryng", 408, b"", {}, TransientFailure, None),
    ("ryng", 429, b"", {"Retry-After": "7"}, TransientFailure, None),
    ("ryng", 502, b"", {}, TransientFailure, None),
    ("ryng", 503, b"", {}, TransientFailure, None),
    ("plum", 202, b"", {}, None, None),
    ("plum", 200, b"", {}, None, None),
    ("plum", 401, b'{"error": "Authentication headers invalid"}', {}, AuthDenied, "Authentication headers invalid"),
    ("plum", 403, b'{"error": "No permission"}', {}, AuthDenied, "No permission"),
    ("plum", 404, f'{{"error": "{UNKNOWN_DEPLOYMENT}"}}'.encode(), {}, NotFound, UNKNOWN_DEPLOYMENT),
    ("plum", 404, XML_404, {"Content-Type": "application/xml"}, NotFound, UNKNOWN_DEPLOYMENT),
    ("plum", 405, b"<result><error>Only DELETE</error></result>", {}, Rejected, "Only DELETE"),
    ("plum", 400, b"", {}, Rejected, None),
    ("plum", 302, b"", {"Location": "https://login"}, Rejected, None),
    ("plum", 408, b"", {}, TransientFailure, None),
    ("plum", 429, b"", {}, TransientFailure, None),
    ("plum", 500, b'{"error": "database error"}', {}, TransientFailure, "database error"),
    ("plum", 500, b"<result><error>database error</error></result>", {}, TransientFailure, "database error"),
    ("plum", 504, b"", {}, TransientFailure, None),
]


def failure_of(provider: str, session: requests.Session, expected: type[Exception] | None) -> Any:
    """Cancel through `session`: None where a success is expected, else the failure, which must be `expected`."""
    if expected is None:
        cancel_at(provider, session)
        return None
    with pytest.raises(expected) as caught:
        cancel_at(provider, session)
    return caught.value


@pytest.mark.parametrize(("provider", "status", "body", "headers", "expected", "message"), OUTCOMES)
def test_outcome_table(
    provider: str,
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: type[Exception] | None,
    message: str | None,
) -> None:
    failure = failure_of(provider, AnsweringSession(status, body, headers), expected)
    if expected is None:
        return
    assert failure.http_status == status
    assert failure.provider_message == message
    assert str(status) in failure.reason


def test_retry_after_is_carried_on_the_transient_failure() -> None:
    with pytest.raises(TransientFailure) as caught:
        cancel_at("plum", AnsweringSession(429, b"", {"Retry-After": "42"}))
    assert caught.value.retry_after == 42


def test_ryng_request_is_exactly_as_documented() -> None:
    session = AnsweringSession(200, b'{"error": false}')
    cancel_at("ryng", session)
    [sent] = session.sent
    assert sent["method"] == "POST"
    assert sent["url"] == "https://acme.ryng.in/rest-api/v1/progressive/call/c-1/cancel"
    assert sent["headers"] == {"x-access-token": "tok", "x-access-key": "tok"}
    assert sent["allow_redirects"] is False
    assert sent["verify"] is True
    assert sent["timeout"] == (3, 10)


def test_plum_request_is_exactly_as_documented() -> None:
    session = AnsweringSession(202)
    cancel_at("plum", session)
    [sent] = session.sent
    assert sent["method"] == "DELETE"
    assert sent["url"] == "https://fuse.plumvoice.com/api/apps/a1/d1/cancel"
    assert sent["auth"] == ("ops@acme.example", "key")
    assert sent["allow_redirects"] is False
    assert sent["verify"] is True
    assert sent["timeout"] == (3, 10)


class FailingSession(requests.Session):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        raise self.error


@pytest.mark.parametrize("provider", ["ryng", "plum"])
@pytest.mark.parametrize(
    "error",
    [requests.ConnectTimeout(), requests.ReadTimeout(), requests.ConnectionError(), requests.TooManyRedirects()],
)
def test_timeouts_and_connection_errors_are_transient(provider: str, error: Exception) -> None:
    with pytest.raises(TransientFailure) as caught:
        cancel_at(provider, FailingSession(error))
    assert caught.value.http_status is None


def test_accept_json_is_sent_by_the_shared_session() -> None:
    from callcancel.providers import provider_session

    session = provider_session(pool_size=10)
    assert session.headers["Accept"] == "application/json"
    assert session.trust_env is False
    assert session.get_adapter("https://x")._pool_maxsize == 10  # type: ignore[attr-defined]


# A body that no parser can read, each in its own way: deep nesting (RecursionError), broken UTF-8, a DTD.
UNREADABLE_BODIES = {
    "nested arrays": b"[" * 65_536,
    "nested objects": b'{"a":' * 40_000,
    "nested closed": b"[" * 30_000 + b"]" * 30_000,
    "xml with a dtd": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "x">]><r><error>&e;</error></r>',
}


@pytest.mark.parametrize("body", UNREADABLE_BODIES.values(), ids=UNREADABLE_BODIES.keys())
@pytest.mark.parametrize(
    ("provider", "status", "expected"),
    [
        ("plum", 202, None),
        ("plum", 404, NotFound),
        ("plum", 401, AuthDenied),
        ("ryng", 403, AuthDenied),
        ("ryng", 500, TransientFailure),
        ("ryng", 200, Rejected),
    ],
)
def test_a_body_that_cannot_be_read_leaves_the_status_to_decide(
    body: bytes, provider: str, status: int, expected: type[Exception] | None
) -> None:
    failure = failure_of(provider, AnsweringSession(status, body), expected)
    if expected is None:
        return
    assert failure.http_status == status
    assert failure.provider_message is None


# As requests raises them (see HTTPAdapter.send): connect-phase errors come wrapped in a MaxRetryError.
REFUSED = requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "Connection refused")))
DNS = requests.ConnectionError(MaxRetryError(None, "/", NameResolutionError("x.ryng.in", None, OSError("no host"))))
ABORTED = requests.ConnectionError(ProtocolError("Connection aborted.", RemoteDisconnected("closed without response")))
RESET = requests.ConnectionError(ConnectionResetError(104, "Connection reset by peer"))


@pytest.mark.parametrize("provider", ["ryng", "plum"])
@pytest.mark.parametrize(
    ("error", "ambiguous"),
    [
        (requests.ConnectTimeout(), False),
        (REFUSED, False),
        (DNS, False),
        (requests.exceptions.SSLError(), False),
        (requests.ReadTimeout(), True),
        (ABORTED, True),
        (RESET, True),
    ],
    ids=["connect timeout", "refused", "dns", "tls handshake", "read timeout", "aborted", "reset"],
)
def test_a_failure_after_the_request_was_sent_is_ambiguous(provider: str, error: Exception, ambiguous: bool) -> None:
    with pytest.raises(TransientFailure) as caught:
        cancel_at(provider, FailingSession(error))
    assert caught.value.ambiguous is ambiguous


@pytest.mark.parametrize(
    ("provider", "status", "expected", "ambiguous"),
    [
        ("ryng", 200, TransientFailure, True),  # the confirmation may have been in the part that never came
        ("ryng", 500, TransientFailure, True),  # "Call ID does not exist" or an outage: cannot tell
        ("ryng", 403, AuthDenied, None),
        ("plum", 202, None, None),  # the status alone confirms: a second DELETE would cancel calls queued since
        ("plum", 404, NotFound, None),
    ],
)
def test_a_body_cut_short_is_decided_by_the_status_where_the_status_suffices(
    provider: str, status: int, expected: type[Exception] | None, ambiguous: bool | None
) -> None:
    # Content-Length promises more than arrives: urllib3 raises IncompleteRead mid-body.
    session = AnsweringSession(status, b'{"error": fal', {"Content-Length": "400"})
    if expected is None:
        cancel_at(provider, session)
        return
    with pytest.raises(expected) as caught:
        cancel_at(provider, session)
    if ambiguous is not None:
        assert isinstance(caught.value, TransientFailure)
        assert caught.value.ambiguous is ambiguous
        assert "cut short" in caught.value.reason or caught.value.http_status == 500


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_that_gave_up_is_ambiguous_and_an_outage_is_not(status: int) -> None:
    with pytest.raises(TransientFailure) as gateway:
        cancel_at("plum", AnsweringSession(status))
    with pytest.raises(TransientFailure) as outage:
        cancel_at("plum", AnsweringSession(503))
    assert gateway.value.ambiguous is True
    assert outage.value.ambiguous is False


@pytest.mark.parametrize(
    "error", [requests.exceptions.InvalidHeader("bad header"), UnicodeEncodeError("latin-1", "€", 0, 1, "no")]
)
def test_a_request_that_cannot_be_built_is_config_not_retried(error: Exception) -> None:
    with pytest.raises(ConfigError):
        cancel_at("ryng", FailingSession(error))


def test_a_retry_after_that_float_refuses_is_ignored() -> None:
    with pytest.raises(TransientFailure) as caught:
        cancel_at("plum", AnsweringSession(429, b"", {"Retry-After": "\u00b2"}))  # "²".isdigit() is True
    assert caught.value.retry_after is None


class Wire(io.BytesIO):
    """A body in memory that counts what the reader took of it."""

    taken = 0

    def read1(self, size: int = -1, /) -> bytes:
        data = super().read1(size)
        self.taken += len(data)
        return data


def read_from(stream: io.BytesIO, headers: dict[str, str], status: int = 500) -> Answer:
    response = requests.Response()
    response.status_code = status
    response.raw = urllib3.HTTPResponse(body=stream, headers=headers, status=status, preload_content=False)
    return Answer.read(response, deadline=time.monotonic() + 10)


GZIP = {"Content-Encoding": "gzip"}


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_a_compressed_body_we_did_not_ask_for_is_still_read_within_the_cap(encoding: str, compress: Any) -> None:
    body = json.dumps({"error": "database error"}).encode()
    assert read_from(io.BytesIO(compress(body)), {"Content-Encoding": encoding}).message == "database error"


def test_a_body_that_inflates_past_the_cap_is_refused_and_one_at_the_cap_is_read() -> None:
    at_cap = b'{"error": "' + b"x" * (MAX_BODY_BYTES - 13) + b'"}'
    assert len(at_cap) == MAX_BODY_BYTES
    assert read_from(io.BytesIO(gzip.compress(at_cap)), GZIP).message is not None
    assert read_from(io.BytesIO(gzip.compress(at_cap + b" ")), GZIP).message is None


def test_what_follows_a_compressed_stream_is_not_read() -> None:
    # zlib keeps whatever follows the end of the stream in unused_data: 300 MB would all be held.
    stream = Wire(gzip.compress(b'{"error": "database error"}') + bytes(10 << 20))
    assert read_from(stream, GZIP).message == "database error"
    assert stream.taken < 1 << 20


def test_a_compressed_stream_that_yields_nothing_is_not_read_to_its_end() -> None:
    # A gzip header whose file name field never ends: no output, however much is read.
    stream = Wire(b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\xff" + b"n" * (10 << 20))
    assert read_from(stream, GZIP).message is None
    assert stream.taken < 1 << 20
