"""`callcancel status`, `callcancel.status`, and `publish --via eventbridge`, against moto server."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

import callcancel
from callcancel.errors import NotFound, TransientFailure
from callcancel.outcomes import OutcomeRecorder
from callcancel.peek import peek
from callcancel_local.embedded_aws import EmbeddedAws, create_table_keyed_by_id
from callcancel_tools.cli import main
from tests.integration.test_outcomes import outcome

pytestmark = pytest.mark.integration

TABLE = "outcomes"
BUS = "cancels"


@dataclass
class Producer:
    """An outcome table with records written by the worker's own recorder; a bus whose rule feeds a queue."""

    recorder: OutcomeRecorder
    queue_url: str

    def queued(self) -> list[Any]:
        return [json.loads(m["body"]) for m in peek(boto3.client("sqs"), self.queue_url)]


@pytest.fixture
def producer(embedded_aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Producer]:
    embedded_aws.reset()
    monkeypatch.chdir(tmp_path)  # no samconfig.toml here
    for name in ("CALLCANCEL_OUTCOME_TABLE", "CALLCANCEL_EVENT_BUS", "CALLCANCEL_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    create_table_keyed_by_id(TABLE)
    sqs, events = boto3.client("sqs"), boto3.client("events")
    queue_url = sqs.create_queue(QueueName="cancel-requests")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.create_event_bus(Name=BUS)
    events.put_rule(Name="way-in", EventBusName=BUS, EventPattern=json.dumps({"detail-type": ["Cancel Requested"]}))
    events.put_targets(
        Rule="way-in", EventBusName=BUS, Targets=[{"Id": "q", "Arn": queue_arn, "InputPath": "$.detail"}]
    )
    yield Producer(OutcomeRecorder.create(TABLE, None), queue_url)


def test_status_shows_the_outcome_attempts_last_answer_and_when(
    producer: Producer, capsys: pytest.CaptureFixture[str]
) -> None:
    failure = NotFound(
        "ryng answered HTTP 500: Call ID does not exist", http_status=500, provider_message="Call ID does not exist"
    )
    producer.recorder.record(outcome("not_found", failure=failure, message_id="m-7", attempt=2))

    assert main(["status", "order-1:cancel", "--outcome-table", TABLE]) == 0

    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "order-1:cancel" in line and "not_found" in line)
    for cell in ("ryng", "acme", "c-1", "2", "HTTP 500 Call ID does not exist", "ago)"):
        assert cell in row
    assert "callcancel dlq show m-7" in out


def test_status_json_is_the_record_with_the_contracts_attribute_names(
    producer: Producer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    producer.recorder.record(outcome("retrying", failure=TransientFailure("busy", http_status=503), attempt=3))
    monkeypatch.setenv("CALLCANCEL_OUTCOME_TABLE", TABLE)

    assert main(["status", "order-1:cancel", "--json"]) == 0

    record = json.loads(capsys.readouterr().out)
    assert set(record) == {
        "id",
        "outcome",
        "provider",
        "account",
        "target",
        "attempts",
        "http_status",
        "message_id",
        "updated_at",
        "expires_at",
    }
    assert (record["id"], record["outcome"], record["attempts"], record["http_status"]) == (
        "order-1:cancel",
        "retrying",
        3,
        503,
    )


def test_an_unknown_request_says_so_and_exits_3(producer: Producer, capsys: pytest.CaptureFixture[str]) -> None:
    producer.recorder.record(outcome("cancelled"))

    assert main(["status", "order-1:cancel", "nobody-sent-this", "--outcome-table", TABLE, "--json"]) == 3

    captured = capsys.readouterr()
    assert [json.loads(line)["id"] for line in captured.out.splitlines()] == ["order-1:cancel"]
    assert "no outcome recorded for nobody-sent-this" in captured.err


def test_status_finds_the_table_in_the_stack_outputs(producer: Producer, capsys: pytest.CaptureFixture[str]) -> None:
    template = {"Resources": {"Q": {"Type": "AWS::SQS::Queue", "Properties": {}}}}
    template["Outputs"] = {"OutcomeTableName": {"Value": TABLE}}  # type: ignore[dict-item]
    boto3.client("cloudformation").create_stack(StackName="cc-test", TemplateBody=json.dumps(template))
    producer.recorder.record(outcome("cancelled"))

    assert main(["status", "order-1:cancel", "--stack-name", "cc-test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "cancelled"


def test_callcancel_status_returns_the_record_or_none(producer: Producer) -> None:
    producer.recorder.record(outcome("cancelled"))

    record = callcancel.status("order-1:cancel", table=TABLE)

    assert record is not None
    assert (record.outcome, record.provider, record.target, record.attempts) == ("cancelled", "ryng", "c-1", 1)
    assert record.updated is not None
    assert callcancel.status("nobody-sent-this", table=TABLE) is None


def test_publish_via_eventbridge_reaches_the_queue_through_the_rule(
    producer: Producer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["publish", "ryng", "--account", "acme", "--call-id", "c-9", "--via", "eventbridge", "--event-bus", BUS]

    assert main([*argv, "--request-id", "order-9:cancel"]) == 0
    assert main(argv) == 0

    given, made_up = capsys.readouterr().out.split()
    assert given == "order-9:cancel"
    assert made_up.startswith("evt-")
    assert producer.queued() == [
        {"provider": "ryng", "account": "acme", "call_id": "c-9", "request_id": "order-9:cancel"},
        {"provider": "ryng", "account": "acme", "call_id": "c-9", "request_id": made_up},
    ]


def test_callcancel_publish_via_eventbridge(producer: Producer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLCANCEL_EVENT_BUS", BUS)

    request_id = callcancel.publish(
        provider="plum", account="acme", application_id="1", deployment_id="2", via="eventbridge"
    )

    assert producer.queued() == [
        {"provider": "plum", "account": "acme", "application_id": "1", "deployment_id": "2", "request_id": request_id}
    ]


def test_publish_via_eventbridge_fails_loudly_on_a_missing_bus(
    producer: Producer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["publish", "ryng", "--account", "acme", "--call-id", "c-9", "--via", "eventbridge"]

    assert main([*argv, "--event-bus", "no-such-bus"]) == 1
    assert "error" in capsys.readouterr().err
    assert main(["publish", "--csv", "x.csv", "--via", "eventbridge"]) == 2
    assert producer.queued() == []
