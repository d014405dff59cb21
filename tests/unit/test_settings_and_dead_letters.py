"""The environment contract and the dead-letter attributes."""

from datetime import UTC, datetime

import pytest

from callcancel.dead_letter import ATTRIBUTES, DeadLetter
from callcancel.errors import Exhausted, InvalidRequest, NotFound, Rejected
from callcancel.settings import Settings


def test_defaults_follow_the_contract() -> None:
    settings = Settings.from_env({"DEAD_LETTER_QUEUE_URL": "https://q"})
    assert settings.secret_prefix == "callcancel"
    assert settings.max_attempts == 5
    assert (settings.retry_base_seconds, settings.retry_max_seconds) == (30, 900)
    assert settings.ryng_base_url == "https://{subdomain}.ryng.in"
    assert settings.plum_base_url == "https://fuse.plumvoice.com"
    assert settings.provider_timeout_seconds == 10
    assert settings.max_in_flight == 10
    assert settings.idempotency_table is None


def test_variables_are_read_and_empty_ones_ignored() -> None:
    settings = Settings.from_env(
        {"DEAD_LETTER_QUEUE_URL": "https://q", "MAX_ATTEMPTS": "3", "MAX_IN_FLIGHT": "4", "IDEMPOTENCY_TABLE": ""}
    )
    assert (settings.max_attempts, settings.max_in_flight, settings.idempotency_table) == (3, 4, None)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({}, "DEAD_LETTER_QUEUE_URL"),
        ({"DEAD_LETTER_QUEUE_URL": "q", "MAX_ATTEMPTS": "zero"}, "MAX_ATTEMPTS"),
        ({"DEAD_LETTER_QUEUE_URL": "q", "MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
        ({"DEAD_LETTER_QUEUE_URL": "q", "PROVIDER_TIMEOUT_SECONDS": "-1"}, "PROVIDER_TIMEOUT_SECONDS"),
    ],
)
def test_bad_configuration_names_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(RuntimeError, match=named):
        Settings.from_env(environ)


def attributes(letter: DeadLetter) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in letter.message_attributes().items()}


def test_dead_letter_attributes_per_the_contract() -> None:
    failed_at = datetime(2026, 11, 24, 2, 0, 5, tzinfo=UTC)
    letter = DeadLetter(
        '{"provider": "plum"}',
        NotFound("plum answered HTTP 404", http_status=404, provider_message="No deployment"),
        attempts=2,
        source_message_id="m-1",
        failed_at=failed_at,
    )
    assert attributes(letter) == {
        "failure_class": "not_found",
        "failure_reason": "plum answered HTTP 404",
        "attempts": "2",
        "source_message_id": "m-1",
        "failed_at": "2026-11-24T02:00:05+00:00",
        "http_status": "404",
        "provider_message": "No deployment",
    }
    assert all(value["DataType"] == "String" for value in letter.message_attributes().values())


def test_optional_attributes_are_absent_without_an_answer() -> None:
    assert set(attributes(DeadLetter("x", InvalidRequest("bad"), 1, "m"))) == {
        "failure_class",
        "failure_reason",
        "attempts",
        "source_message_id",
        "failed_at",
    }


def test_provider_messages_are_cut_to_256_and_made_sqs_safe() -> None:
    failure = Exhausted("gave up", http_status=500, provider_message="\x00bad\x1f" + "y" * 400)
    value = attributes(DeadLetter("x", failure, 5, "m"))["provider_message"]
    assert len(value) == 256
    assert value.startswith("?bad?y")


def test_dead_letter_attributes_are_the_contracts_in_its_order() -> None:
    failure = Rejected("ryng answered HTTP 400", http_status=400, provider_message="Bad request")

    assert tuple(DeadLetter("{}", failure, 1, "m-1").message_attributes()) == ATTRIBUTES
