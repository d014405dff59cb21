"""The outcome record and events (DESIGN.md, "Outcomes for producers"), written to moto server's DynamoDB and bus."""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from callcancel.errors import AuthDenied, InvalidRequest, NotFound, TransientFailure
from callcancel.models import parse_cancel_request
from callcancel.outcomes import Outcome, OutcomeRecorder
from callcancel_local.embedded_aws import EmbeddedAws, create_table_keyed_by_id

pytestmark = pytest.mark.integration

RYNG_BODY = json.dumps({"provider": "ryng", "account": "acme", "call_id": "c-1", "request_id": "order-1:cancel"})
DAY = 86400


def sqs_record(
    body: str, message_id: str = "m-1", attempt: int = 1, attributes: dict[str, str] | None = None
) -> SQSRecord:
    return SQSRecord(
        {
            "messageId": message_id,
            "body": body,
            "attributes": {"ApproximateReceiveCount": str(attempt)},
            "messageAttributes": {
                name: {"stringValue": value, "dataType": "String"} for name, value in (attributes or {}).items()
            },
        }
    )


def outcome(
    outcome: str, *, body: str = RYNG_BODY, failure: Any = None, message_id: str = "m-1", attempt: int = 1, **kw: Any
) -> Outcome:
    record = sqs_record(body, message_id, attempt, kw.pop("attributes", None))
    try:
        request = parse_cancel_request(body)
    except InvalidRequest:
        request = None
    return Outcome.of(record, request, outcome, failure)


@dataclass
class Outcomes:
    """The outcome table, the bus with a rule that copies every callcancel event to a queue, and a recorder."""

    recorder: OutcomeRecorder
    dynamodb: Any = field(default_factory=lambda: boto3.client("dynamodb"))
    sqs: Any = field(default_factory=lambda: boto3.client("sqs"))
    queue_url: str = ""

    def item(self, key: str = "order-1:cancel") -> dict[str, Any] | None:
        item = self.dynamodb.get_item(TableName="outcomes", Key={"id": {"S": key}}, ConsistentRead=True).get("Item")
        return None if item is None else {k: next(iter(v.values())) for k, v in item.items()}

    def events(self) -> list[dict[str, Any]]:
        messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]


@pytest.fixture
def outcomes(embedded_aws: EmbeddedAws) -> Iterator[Outcomes]:
    embedded_aws.reset()
    create_table_keyed_by_id("outcomes")
    events, sqs = boto3.client("events"), boto3.client("sqs")
    events.create_event_bus(Name="cancels")
    queue_url = sqs.create_queue(QueueName="subscriber")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="all-outcomes", EventBusName="cancels", EventPattern=json.dumps({"source": ["callcancel"]}))
    events.put_targets(Rule="all-outcomes", EventBusName="cancels", Targets=[{"Id": "q", "Arn": queue_arn}])
    yield Outcomes(OutcomeRecorder.create("outcomes", "cancels"), queue_url=queue_url)


def test_a_cancelled_request_is_recorded_and_announced(outcomes: Outcomes) -> None:
    before = int(time.time())
    outcomes.recorder.record(outcome("cancelled"))

    item = outcomes.item()
    assert item is not None
    expires_at = int(item.pop("expires_at"))
    assert before + 400 * DAY <= expires_at <= int(time.time()) + 400 * DAY
    assert item.pop("updated_at").startswith(time.strftime("%Y-%m-%dT", time.gmtime()))
    assert item == {
        "id": "order-1:cancel",
        "outcome": "cancelled",
        "provider": "ryng",
        "account": "acme",
        "target": "c-1",
        "attempts": "1",
        "message_id": "m-1",
    }
    [event] = outcomes.events()
    assert (event["source"], event["detail-type"]) == ("callcancel", "Cancel Succeeded")
    assert event["detail"] == {
        "request_key": "order-1:cancel",
        "request_id": "order-1:cancel",
        "message_id": "m-1",
        "provider": "ryng",
        "account": "acme",
        "target": "c-1",
        "outcome": "cancelled",
        "attempts": 1,
    }


def test_retries_update_the_record_and_success_clears_the_last_failure(outcomes: Outcomes) -> None:
    failure = TransientFailure("ryng answered HTTP 503: busy", http_status=503, provider_message="busy")
    outcomes.recorder.record(outcome("retrying", failure=failure, attempt=1))
    outcomes.recorder.record(outcome("retrying", failure=TransientFailure("timeout"), attempt=2))
    assert {k: v for k, v in (outcomes.item() or {}).items() if k in ("outcome", "attempts", "http_status")} == {
        "outcome": "retrying",
        "attempts": "2",
    }
    outcomes.recorder.record(outcome("retrying", failure=failure, attempt=3))
    item = outcomes.item() or {}
    assert (item["outcome"], item["attempts"], item["http_status"], item["provider_message"]) == (
        "retrying",
        "3",
        "503",
        "busy",
    )
    assert outcomes.events() == [], "a retry is no event"

    outcomes.recorder.record(outcome("cancelled", attempt=4))
    item = outcomes.item() or {}
    assert (item["outcome"], item["attempts"]) == ("cancelled", "4")
    assert "http_status" not in item and "provider_message" not in item


@pytest.mark.parametrize("final", ["cancelled", "deferred", "not_found", "exhausted"])
def test_a_retry_never_overwrites_a_final_outcome(outcomes: Outcomes, final: str) -> None:
    outcomes.recorder.record(outcome(final, message_id="m-1"))
    # Another delivery of the same request, retried (e.g. it found the first one's idempotency lock)
    outcomes.recorder.record(outcome("retrying", failure=TransientFailure("in progress"), message_id="m-2"))
    assert (outcomes.item() or {})["outcome"] == final


def test_a_redriven_dead_letter_starts_over_as_retrying(outcomes: Outcomes) -> None:
    failure = AuthDenied("ryng answered HTTP 403: Unauthorized Token", http_status=403)
    outcomes.recorder.record(outcome("auth", failure=failure, message_id="m-1"))
    redriven = {"failure_class": "auth", "source_message_id": "m-1"}
    outcomes.recorder.record(
        outcome("retrying", failure=TransientFailure("503"), message_id="dl-1", attributes=redriven)
    )
    assert (outcomes.item() or {})["outcome"] == "retrying"
    outcomes.recorder.record(outcome("cancelled", message_id="dl-1", attempt=2, attributes=redriven))
    assert (outcomes.item() or {})["outcome"] == "cancelled"
    # ...but a redriven dead letter whose request was cancelled meanwhile does not undo that
    outcomes.recorder.record(outcome("retrying", failure=TransientFailure("x"), message_id="dl-2", attributes=redriven))
    assert (outcomes.item() or {})["outcome"] == "cancelled"


def test_a_duplicate_does_not_overwrite_cancelled_nor_announce_it_again(outcomes: Outcomes) -> None:
    outcomes.recorder.record(outcome("cancelled", message_id="m-1"))
    outcomes.recorder.record(outcome("duplicate", message_id="m-2"))
    item = outcomes.item() or {}
    assert (item["outcome"], item["message_id"]) == ("cancelled", "m-1")
    assert [event["detail"]["message_id"] for event in outcomes.events()] == ["m-1"]


@pytest.mark.parametrize(
    ("later", "failure"),
    [
        # the same request_id reused for another target: dead-lettered, but this request was cancelled
        ("invalid", InvalidRequest("request_id order-1:cancel was already used for a different target")),
        ("not_found", NotFound("ryng answered HTTP 500: Call ID does not exist", http_status=500)),
        ("deferred", None),
    ],
)
def test_nothing_but_cancelled_overwrites_cancelled(outcomes: Outcomes, later: str, failure: Any) -> None:
    outcomes.recorder.record(outcome("cancelled", message_id="m-1"))
    outcomes.recorder.record(outcome(later, failure=failure, message_id="m-2"))
    item = outcomes.item() or {}
    assert (item["outcome"], item["message_id"]) == ("cancelled", "m-1")


@pytest.mark.parametrize("before", [None, "retrying"])
def test_a_duplicate_records_and_announces_the_cancel_when_nothing_says_cancelled(
    outcomes: Outcomes, before: str | None
) -> None:
    # The delivery that cancelled died (or failed to write) before its record and event
    if before:
        outcomes.recorder.record(outcome(before, failure=TransientFailure("503"), message_id="m-1"))
    outcomes.recorder.record(outcome("duplicate", message_id="m-2", attempt=2))
    item = outcomes.item() or {}
    assert (item["outcome"], item["message_id"], item["attempts"]) == ("cancelled", "m-2", "2")
    [event] = outcomes.events()
    assert (event["detail-type"], event["detail"]["outcome"]) == ("Cancel Succeeded", "cancelled")
    # A later duplicate finds it recorded: nothing more
    outcomes.recorder.record(outcome("duplicate", message_id="m-3"))
    assert (outcomes.item() or {})["message_id"] == "m-2" and outcomes.events() == []


def test_a_dead_letter_is_recorded_with_the_answer_and_announced_with_its_reason(outcomes: Outcomes) -> None:
    failure = NotFound(
        "ryng answered HTTP 500: Call ID does not exist", http_status=500, provider_message="Call ID does not exist"
    )
    outcomes.recorder.record(outcome("not_found", failure=failure))
    item = outcomes.item() or {}
    assert (item["outcome"], item["http_status"], item["provider_message"]) == (
        "not_found",
        "500",
        "Call ID does not exist",
    )
    [event] = outcomes.events()
    assert event["detail-type"] == "Cancel Failed"
    assert event["detail"]["failure_class"] == "not_found"
    assert event["detail"]["failure_reason"] == "ryng answered HTTP 500: Call ID does not exist"
    assert (event["detail"]["http_status"], event["detail"]["provider_message"]) == (500, "Call ID does not exist")


def test_a_deferred_request_is_announced(outcomes: Outcomes) -> None:
    body = json.dumps(
        {"provider": "plum", "account": "acme", "application_id": "a", "deployment_id": "d", "when": "nightly"}
    )
    outcomes.recorder.record(outcome("deferred", body=body, message_id="m-9"))
    assert (outcomes.item("m-9") or {})["target"] == "a/d"
    [event] = outcomes.events()
    assert event["detail-type"] == "Cancel Deferred"
    assert "request_id" not in event["detail"]
    assert event["detail"]["request_key"] == "m-9"


def test_an_invalid_body_is_recorded_under_its_message_id_with_what_can_be_read(outcomes: Outcomes) -> None:
    body = json.dumps({"provider": "ryng", "account": "acme", "call_id": "../../admin", "request_id": "bad id!"})
    outcomes.recorder.record(outcome("invalid", body=body, failure=InvalidRequest("call_id: bad"), message_id="m-5"))
    item = outcomes.item("m-5") or {}
    assert (item["outcome"], item["provider"], item["target"]) == ("invalid", "ryng", "../../admin")
    outcomes.recorder.record(outcome("invalid", body="{not json", failure=InvalidRequest("body"), message_id="m-6"))
    item = outcomes.item("m-6") or {}
    assert item["outcome"] == "invalid"
    assert not {"provider", "account", "target"} & set(item)
    assert [e["detail"]["request_key"] for e in outcomes.events()] == ["m-5", "m-6"]


def test_no_table_and_no_bus_cost_the_cancel_nothing(outcomes: Outcomes, capsys: pytest.CaptureFixture[str]) -> None:
    recorder = OutcomeRecorder.create("no-such-table", "no-such-bus")
    capsys.readouterr()

    recorder.record(outcome("cancelled"))  # does not raise

    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    counted = {name for m in metrics for name in ("OutcomeRecordFailed", "OutcomeEventFailed") if name in m}
    assert counted == {"OutcomeRecordFailed", "OutcomeEventFailed"}


def test_unset_table_and_bus_write_nothing_and_warn_once(outcomes: Outcomes, caplog: pytest.LogCaptureFixture) -> None:
    recorder = OutcomeRecorder(None, None, None, None)
    recorder.record(outcome("cancelled"))
    recorder.record(outcome("not_found", failure=NotFound("gone")))
    assert outcomes.item() is None
    assert outcomes.events() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "OUTCOME_TABLE is not set: no outcome records are written",
        "EVENT_BUS_NAME is not set: no outcome events are put",
    ]
