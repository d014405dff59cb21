"""The cancel request contract: what is accepted, what is refused, and that errors name the field."""

import json
from typing import Any

import pytest

from callcancel.errors import ConfigError, InvalidRequest
from callcancel.models import (
    PlumCancel,
    PlumCredentials,
    RyngCancel,
    RyngCredentials,
    parse_cancel_request,
    parse_credentials,
)

RYNG = {"provider": "ryng", "account": "acme", "call_id": "c-1"}
PLUM = {"provider": "plum", "account": "acme", "application_id": "a1", "deployment_id": "d1"}

VALID = [
    ("ryng minimal", RYNG),
    ("ryng integer call id", {**RYNG, "call_id": 1234567}),
    ("plum minimal", PLUM),
    ("plum integer ids", {**PLUM, "application_id": 7, "deployment_id": 8}),
    (
        "every optional field",
        {**RYNG, "request_id": "order-42:cancel.v1", "when": "nightly", "reason": "x" * 500, "version": 1},
    ),
    ("when now", {**RYNG, "when": "now"}),
    ("longest account", {**RYNG, "account": "a" + "b-" * 30 + "bc"}),
    ("64-char call id", {**RYNG, "call_id": "A" * 64}),
    ("128-char request id", {**RYNG, "request_id": "r" * 128}),
]

INVALID = [
    # name, body, the field the error must name
    ("path traversal", {**RYNG, "call_id": "../x"}, "call_id"),
    ("slash", {**RYNG, "call_id": "a/b"}, "call_id"),
    ("encoded slash", {**RYNG, "call_id": "a%2Fb"}, "call_id"),
    ("newline", {**RYNG, "call_id": "abc\n"}, "call_id"),
    ("CRLF header injection", {**PLUM, "deployment_id": "d1\r\nX-Evil: 1"}, "deployment_id"),
    ("empty call id", {**RYNG, "call_id": ""}, "call_id"),
    ("space", {**RYNG, "call_id": "a b"}, "call_id"),
    ("65-char call id", {**RYNG, "call_id": "A" * 65}, "call_id"),
    ("huge integer call id", {**RYNG, "call_id": 10**70}, "call_id"),
    ("boolean call id", {**RYNG, "call_id": True}, "call_id"),
    ("float call id", {**RYNG, "call_id": 1.5}, "call_id"),
    ("traversal in application id", {**PLUM, "application_id": ".."}, "application_id"),
    ("empty deployment id", {**PLUM, "deployment_id": ""}, "deployment_id"),
    ("unknown field", {**RYNG, "priority": "high"}, "priority"),
    ("plum field on ryng", {**RYNG, "deployment_id": "d1"}, "deployment_id"),
    ("ryng field on plum", {**PLUM, "call_id": "c1"}, "call_id"),
    ("missing call id", {"provider": "ryng", "account": "acme"}, "call_id"),
    ("missing deployment id", {k: v for k, v in PLUM.items() if k != "deployment_id"}, "deployment_id"),
    ("unknown provider", {**RYNG, "provider": "twilio"}, "provider"),
    ("missing provider", {"account": "acme", "call_id": "c-1"}, "provider"),
    ("uppercase account", {**RYNG, "account": "Acme"}, "account"),
    ("account with a slash", {**RYNG, "account": "acme/../other"}, "account"),
    ("empty account", {**RYNG, "account": ""}, "account"),
    ("account leading hyphen", {**RYNG, "account": "-acme"}, "account"),
    ("account too long", {**RYNG, "account": "a" * 64}, "account"),
    ("request id with a slash", {**RYNG, "request_id": "a/b"}, "request_id"),
    ("request id too long", {**RYNG, "request_id": "r" * 129}, "request_id"),
    ("empty request id", {**RYNG, "request_id": ""}, "request_id"),
    ("unknown when", {**RYNG, "when": "tomorrow"}, "when"),
    ("reason too long", {**RYNG, "reason": "x" * 501}, "reason"),
    ("version 2", {**RYNG, "version": 2}, "version"),
    ("version true", {**RYNG, "version": True}, "version"),
    ("version as text", {**RYNG, "version": "1"}, "version"),
]


@pytest.mark.parametrize("body", [case[1] for case in VALID], ids=[case[0] for case in VALID])
def test_valid_requests_are_accepted(body: dict[str, Any]) -> None:
    request = parse_cancel_request(json.dumps(body))
    assert request.provider == body["provider"]
    assert request.account == body["account"]


@pytest.mark.parametrize(("body", "field"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_requests_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_cancel_request(json.dumps(body))
    assert f"{field}:" in caught.value.reason


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", "body: Invalid JSON"),
        ("{not json", "body: Invalid JSON"),
        ("[]", "body: Input should be an object"),
        ('"ryng"', "body: Input should be an object"),
        ("null", "body: Input should be an object"),
        (b"\xff\xfe", "body: Invalid JSON"),
    ],
)
def test_bodies_that_are_not_json_objects_are_refused(body: str | bytes, expected: str) -> None:
    with pytest.raises(InvalidRequest, match=expected):
        parse_cancel_request(body)


def test_integer_ids_become_their_decimal_string() -> None:
    request = parse_cancel_request(json.dumps({**PLUM, "application_id": 7, "deployment_id": 8}))
    assert isinstance(request, PlumCancel)
    assert (request.application_id, request.deployment_id, request.target) == ("7", "8", "7/8")


def test_defaults() -> None:
    request = parse_cancel_request(json.dumps(RYNG))
    assert isinstance(request, RyngCancel)
    assert (request.when, request.request_id, request.reason, request.target) == ("now", None, None, "c-1")


def test_errors_never_echo_the_input() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_cancel_request(json.dumps({**RYNG, "call_id": "SENSITIVE../"}))
    assert "SENSITIVE" not in str(caught.value)


CREDENTIALS = [
    (RyngCredentials, {"subdomain": "acme", "access_token": "t"}, None),
    (RyngCredentials, {"subdomain": "acme", "access_token": "t", "note": "rotated monthly"}, None),
    (RyngCredentials, {"subdomain": "Acme", "access_token": "t"}, "subdomain"),
    (RyngCredentials, {"subdomain": "acme-", "access_token": "t"}, "subdomain"),
    (RyngCredentials, {"subdomain": "evil.com/x", "access_token": "t"}, "subdomain"),
    (RyngCredentials, {"subdomain": "acme"}, "access_token"),
    (RyngCredentials, {"subdomain": "acme", "access_token": ""}, "access_token"),
    (PlumCredentials, {"email": "a@b.c", "developer_key": "k"}, None),
    (PlumCredentials, {"email": "a@b.c"}, "developer_key"),
    (PlumCredentials, {"developer_key": "k"}, "email"),
    (PlumCredentials, ["not", "an", "object"], "body"),
]


@pytest.mark.parametrize(("model", "value", "field"), CREDENTIALS)
def test_secret_formats(model: Any, value: Any, field: str | None) -> None:
    if field is None:
        assert parse_credentials(model, "callcancel/x/acme", value)
        return
    with pytest.raises(ConfigError) as caught:
        parse_credentials(model, "callcancel/x/acme", value)
    assert "callcancel/x/acme" in caught.value.reason
    assert f"{field}" in caught.value.reason


def test_credentials_never_print_their_secret() -> None:
    credentials = RyngCredentials(subdomain="acme", access_token="SENSITIVE")  # type: ignore[arg-type]
    assert "SENSITIVE" not in repr(credentials) + str(credentials)
    with pytest.raises(ConfigError) as caught:
        parse_credentials(RyngCredentials, "s", {"subdomain": "BAD", "access_token": "SENSITIVE"})
    assert "SENSITIVE" not in str(caught.value)
