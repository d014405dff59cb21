"""The DLQ digest says what failed, where, and which command fixes it; it never carries a credential or a body."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from callcancel.dead_letter import DeadLetter, StoredDeadLetter
from callcancel.digest import SUBJECT_MAX, AlarmChange, build_digest
from callcancel.errors import AuthDenied, ConfigError, Exhausted, InvalidRequest, NotFound
from tests.support import EVENTS

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
TOKEN = "sk_live_4f9a1b2c3d4e5f60718293a4b5c6d7e8"


def stored(body: dict[str, object] | str, failure: Exception, *, minutes_ago: int = 10, n: int = 1) -> StoredDeadLetter:
    text = body if isinstance(body, str) else json.dumps(body)
    letter = DeadLetter(
        text, failure, attempts=n, source_message_id="src-1", failed_at=NOW - timedelta(minutes=minutes_ago)
    )  # type: ignore[arg-type]
    attributes = {name: value["StringValue"] for name, value in letter.message_attributes().items()}
    return StoredDeadLetter.from_peeked({"message_id": f"m-{id(letter)}", "body": text, **attributes})


def ryng(call_id: str, account: str = "acme", **extra: object) -> dict[str, object]:
    return {"provider": "ryng", "account": account, "call_id": call_id, **extra}


LETTERS = [
    stored(ryng("r-1"), NotFound("ryng answered HTTP 500", http_status=500, provider_message="Call ID does not exist")),
    stored(ryng("r-2"), NotFound("ryng answered HTTP 500", http_status=500, provider_message="Call ID does not exist")),
    stored(
        ryng("g-1", "globex", reason="customer asked: card 4111-1111"),
        AuthDenied("ryng answered HTTP 403", http_status=403, provider_message=f"Unauthorized Token {TOKEN}"),
        minutes_ago=190,
    ),
    stored(
        ryng("i-1", "initech"), ConfigError("secret callcancel/ryng/initech cannot be read: ResourceNotFoundException")
    ),
    stored(
        {"provider": "plum", "account": "acme", "application_id": "7001", "deployment_id": "3"},
        Exhausted("gave up after 5 attempts", http_status=503, provider_message="Service Unavailable"),
        n=5,
    ),
    stored('{"provider": "plum", "account": ', InvalidRequest("invalid cancel request: body: Invalid JSON")),
]


@pytest.fixture
def text() -> str:
    digest = build_digest(LETTERS, visible=6, stack_name="callcancel-prod", region="ap-south-1", now=NOW)
    return digest.text


def test_counts_per_failure_class_and_per_provider_account(text: str) -> None:
    assert "6 dead letter(s) on the DLQ of stack callcancel-prod (ap-south-1)." in text
    by_class = {line.split()[0]: int(line.split()[1]) for line in section(text, "By failure class:")}
    by_account = {line.split()[0]: int(line.split()[1]) for line in section(text, "By provider/account:")}

    assert by_class == {"config": 1, "auth": 1, "exhausted": 1, "not_found": 2, "invalid": 1}
    assert by_account == {"ryng/acme": 2, "ryng/globex": 1, "ryng/initech": 1, "plum/acme": 1, "?/?": 1}
    assert "6 read; oldest failed 3 h ago, newest 10 min ago." in text


def test_most_common_provider_answers_come_first(text: str) -> None:
    answers = section(text, "Most common provider answers:")

    assert answers[0] == "2 x ryng HTTP 500: Call ID does not exist"
    assert "1 x plum HTTP 503: Service Unavailable" in answers


def test_gives_the_exact_commands_per_class(text: str) -> None:
    cli = "callcancel dlq {} --stack-name callcancel-prod --region ap-south-1"

    assert section(text, "Look closer:") == [cli.format("list")]
    assert section(text, "Once the cause is fixed, send them again:") == [
        f"{cli.format('redrive')} --class config",
        f"{cli.format('redrive')} --class auth",
        f"{cli.format('redrive')} --class exhausted",
    ]
    assert section(text, "Not worth sending again; once the producer is told, clear them:") == [
        f"{cli.format('discard')} --class not_found",
        f"{cli.format('discard')} --class invalid",
    ]


def test_no_credential_or_request_body_appears(text: str) -> None:
    assert TOKEN not in text
    assert "Unauthorized Token [masked]" in text
    assert "4111" not in text  # the producer's free-text reason stays in the DLQ
    assert '"provider"' not in text


def test_the_subject_fits_sns_and_names_the_classes() -> None:
    digest = build_digest(LETTERS, visible=6, stack_name="callcancel-prod", region="ap-south-1", now=NOW)
    long = build_digest(LETTERS, visible=6, stack_name="x" * 90, region="ap-south-1", now=NOW)

    assert digest.subject == (
        "callcancel callcancel-prod: 6 dead letter(s), 1 config, 1 auth, 1 exhausted, 2 not_found, 1 invalid"
    )
    assert len(digest.subject) <= SUBJECT_MAX
    assert len(long.subject) == SUBJECT_MAX
    assert long.subject.endswith("...")


def test_says_when_only_a_sample_was_read() -> None:
    text = build_digest(LETTERS[:2], visible=250, stack_name="s", region="r", now=NOW).text

    assert "2 read (of 250)" in text


def test_letters_moved_by_the_redrive_policy_are_unclassified_and_redrivable() -> None:
    crashed = StoredDeadLetter.from_peeked({"message_id": "m", "body": json.dumps(ryng("r-7"))})
    text = build_digest([crashed], visible=1, stack_name="s", region="r", now=NOW).text

    assert crashed.failure_class == "unclassified"
    assert "callcancel dlq redrive --stack-name s --region r --class unclassified" in text


def test_reads_the_alarm_state_change_event() -> None:
    alarm = AlarmChange.from_event(json.loads((EVENTS / "eventbridge_dlq_alarm.json").read_text()))
    text = build_digest(LETTERS, visible=6, stack_name="callcancel-dev", region="us-east-1", alarm=alarm, now=NOW).text

    assert alarm == AlarmChange("callcancel-dev-dead-letters", "ALARM", alarm.reason, "2026-11-24T02:14:00.000+0000")
    assert "Alarm callcancel-dev-dead-letters is ALARM since 2026-11-24T02:14:00.000+0000." in text


def section(text: str, title: str) -> list[str]:
    """The indented lines under `title`."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    body = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        body.append(line.strip())
    return body


def test_most_common_reasons_name_what_to_fix(text: str) -> None:
    reasons = section(text, "Most common reasons:")

    assert reasons[0] == "2 x not_found: ryng answered HTTP 500"
    assert "1 x config: secret callcancel/ryng/initech cannot be read: ResourceNotFoundException" in reasons
