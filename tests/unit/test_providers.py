"""Every row of the outcome table, for each provider, from the HTTP answer alone (no network)."""

from typing import Any

import pytest
import requests

from callcancel.errors import AuthDenied, NotFound, Rejected, TransientFailure
from callcancel.models import PlumCancel, PlumCredentials, RyngCancel, RyngCredentials
from callcancel.providers import PlumClient, RyngClient

RYNG_REQUEST = RyngCancel(provider="ryng", account="acme", call_id="c-1")
PLUM_REQUEST = PlumCancel(provider="plum", account="acme", application_id="a1", deployment_id="d1")
RYNG_CREDENTIALS = RyngCredentials(subdomain="acme", access_token="tok")  # type: ignore[arg-type]
PLUM_CREDENTIALS = PlumCredentials(email="ops@acme.example", developer_key="key")  # type: ignore[arg-type]

UNKNOWN_DEPLOYMENT = "No deployment was found by that application id and deployment id."
XML_404 = f'<?xml version="1.0"?>\n<result>\n  <error>{UNKNOWN_DEPLOYMENT}</error>\n</result>'.encode()


class AnsweringSession(requests.Session):
    """A session whose transport is a canned answer: the adapter under test reads a real `requests.Response`."""

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.answer = (status, body, headers or {})
        self.sent: list[dict[str, Any]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append({"method": method, "url": url, **kwargs})
        response = requests.Response()
        response.status_code, response._content, extra = self.answer
        response.headers.update(extra)
        return response


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


@pytest.mark.parametrize(("provider", "status", "body", "headers", "expected", "message"), OUTCOMES)
def test_outcome_table(
    provider: str,
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: type[Exception] | None,
    message: str | None,
) -> None:
    session = AnsweringSession(status, body, headers)
    if expected is None:
        cancel_at(provider, session)
        return
    with pytest.raises(expected) as caught:
        cancel_at(provider, session)
    failure: Any = caught.value
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
