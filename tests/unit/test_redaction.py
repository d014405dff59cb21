"""Credentials never leave in a provider's words: the exact secrets in any encoding, and anything token-like."""

import base64
import json
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

import pytest

from callcancel.dead_letter import DeadLetter, StoredDeadLetter
from callcancel.digest import build_digest
from callcancel.errors import AuthDenied, ConfigError
from callcancel.models import PlumCredentials, RyngCredentials
from callcancel.providers import PlumClient, RyngClient
from callcancel.redaction import MASK, redact
from tests.unit.test_providers import PLUM_REQUEST, RYNG_REQUEST, AnsweringSession

TOKEN = 'r7Kq/2+x=Zp"4&w'  # 15 characters, with the ones that every encoding changes
EMAIL = "ops@acme.example"
KEY = "pk_9f8e7d6c"
BASIC = base64.b64encode(f"{EMAIL}:{KEY}".encode()).decode()

ECHOES = {
    "as sent": TOKEN,
    "url-encoded": quote(TOKEN, safe=""),
    "url-encoded, as a path": quote(TOKEN),
    "url-encoded, lower-case escapes": quote(TOKEN, safe="").lower(),
    "json-escaped": json.dumps(TOKEN)[1:-1],
    "json-escaped solidus": json.dumps(TOKEN)[1:-1].replace("/", "\\/"),
    "html-escaped": escape(TOKEN),
    "base64": base64.b64encode(TOKEN.encode()).decode(),
}


@pytest.mark.parametrize("echo", ECHOES.values(), ids=ECHOES.keys())
def test_each_encoding_of_a_known_secret_is_removed(echo: str) -> None:
    text = redact(f"Unauthorized Token {echo}: go away", [TOKEN])
    assert text == f"Unauthorized Token {MASK}: go away"


def test_the_basic_auth_header_and_its_parts_are_removed() -> None:
    text = redact(f"user {EMAIL} key {KEY} header Basic {BASIC}", [EMAIL, KEY, f"{EMAIL}:{KEY}"])
    assert text == f"user {MASK} key {MASK} header Basic {MASK}"


@pytest.mark.parametrize(
    "token",
    ["a1b2c3d4e5f6g7h", "tok9Xq2LmN4pR7s", "sk_live_4f9a1b2c3d4e5f60718293a4b5c6d7e8", "ryng-token-SENSITIVE-1f3a"],
)
def test_an_unknown_token_like_run_is_masked(token: str) -> None:
    assert redact(f"Unauthorized Token {token}.") == f"Unauthorized Token {MASK}"


@pytest.mark.parametrize(
    "text",
    [
        "secret callcancel/ryng/acme-2024 cannot be read: ResourceNotFoundException",
        "ryng answered HTTP 500: Call ID does not exist",
        "gave up after 5 attempts: plum answered HTTP 503",
        "retry at 2026-11-23T20:30:00Z",
        "request 1732550400 is being carried out",
    ],
)
def test_words_names_dates_and_numbers_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_the_digest_masks_a_15_character_token() -> None:
    # The digest's own pattern took only runs of 24 or more characters.
    token = "tok9Xq2LmN4pR7s"
    letter = DeadLetter(
        json.dumps({"provider": "ryng", "account": "acme", "call_id": "c-1"}),
        AuthDenied(f"ryng answered HTTP 403: Unauthorized {token}", http_status=403, provider_message=token),
        attempts=1,
        source_message_id="m-1",
    )
    attributes = {name: value["StringValue"] for name, value in letter.message_attributes().items()}
    stored = StoredDeadLetter.from_peeked({"message_id": "m-1", "body": letter.body, **attributes})
    digest = build_digest([stored], visible=1, stack_name="s", region="eu-west-1", now=datetime.now(UTC))
    assert token not in digest.text
    assert MASK in digest.text


ANSWERS = [
    ("ryng", 403, json.dumps({"error": True, "message": f"Unauthorized Token {TOKEN}"}).encode()),
    ("ryng", 500, json.dumps({"error": True, "message": f"failed for x-access-token={quote(TOKEN)}"}).encode()),
    ("ryng", 400, f"bad request, token {TOKEN}".encode()),
    ("plum", 401, f"<result><error>Bad credentials {escape(KEY)} for {EMAIL}</error></result>".encode()),
    ("plum", 400, f"Authorization: Basic {BASIC}".encode()),
    ("plum", 500, json.dumps({"error": f"Authorization: Basic {BASIC} ({EMAIL}:{KEY})"}).encode()),
]


@pytest.mark.parametrize(("provider", "status", "body"), ANSWERS)
def test_the_answer_reader_takes_the_sent_credentials_out(provider: str, status: int, body: bytes) -> None:
    session = AnsweringSession(status, body)
    with pytest.raises(Exception) as caught:
        if provider == "ryng":
            credentials: Any = RyngCredentials(subdomain="acme", access_token=TOKEN)  # type: ignore[arg-type]
            RyngClient(session, "https://{subdomain}.ryng.in", (3, 10)).cancel(RYNG_REQUEST, credentials)
        else:
            credentials = PlumCredentials(email=EMAIL, developer_key=KEY)  # type: ignore[arg-type]
            PlumClient(session, "https://fuse.plumvoice.com", (3, 10)).cancel(PLUM_REQUEST, credentials)
    failure: Any = caught.value
    assert not isinstance(failure, ConfigError)
    said = f"{failure.reason} {failure.provider_message} {failure}"
    for secret in (*ECHOES.values(), KEY, EMAIL, BASIC):
        assert secret not in said
    assert MASK in said
