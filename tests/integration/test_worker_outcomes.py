"""The worker handler with OUTCOME_TABLE and EVENT_BUS_NAME set: for each outcome, the record and the event."""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from callcancel_local.embedded_aws import create_table_keyed_by_id
from callcancel_local.lambda_runtime import LocalLambdaContext
from callcancel_local.simulator import ProviderSimulator
from callcancel_tools import dlq
from callcancel_tools.cli import main
from tests.integration.conftest import PLUM_EMAIL, PLUM_KEY, RYNG_TOKEN, PurgeStack, WorkerStack
from tests.integration.test_worker import DEAD_LETTER_CASES, PLUM, RYNG, send_dead_letter_case
from tests.integration.test_worker_bookkeeping import kill_when
from tests.support import REPO

pytestmark = pytest.mark.integration

DETAIL_KEYS = {"request_key", "message_id", "outcome", "attempts"}
# Present when the body could be read (every valid request; an invalid one as far as it goes).
READ_FROM_THE_BODY = {"provider", "account", "target"}


@dataclass
class Outcomes:
    """The outcome table, and every event on the bus (a rule copies them to a queue)."""

    queue_url: str
    dynamodb: Any = field(default_factory=lambda: boto3.client("dynamodb"))
    sqs: Any = field(default_factory=lambda: boto3.client("sqs"))
    seen: list[dict[str, Any]] = field(default_factory=list)

    def record(self, key: str) -> dict[str, Any] | None:
        item = self.dynamodb.get_item(TableName="outcomes", Key={"id": {"S": key}}, ConsistentRead=True).get("Item")
        return None if item is None else {k: next(iter(v.values())) for k, v in item.items()}

    def events(self) -> list[dict[str, Any]]:
        """Every event put so far, oldest first."""
        while messages := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages"):
            for message in messages:
                self.seen.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return self.seen


@pytest.fixture
def outcomes(stack: WorkerStack, monkeypatch: pytest.MonkeyPatch) -> Outcomes:
    create_table_keyed_by_id("outcomes")
    events = boto3.client("events")
    events.create_event_bus(Name="cancels")
    queue_url = stack.sqs.create_queue(QueueName="all-outcomes")["QueueUrl"]
    arn = stack.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="all", EventBusName="cancels", EventPattern=json.dumps({"source": ["callcancel"]}))
    events.put_targets(Rule="all", EventBusName="cancels", Targets=[{"Id": "q", "Arn": arn}])
    monkeypatch.setenv("OUTCOME_TABLE", "outcomes")
    monkeypatch.setenv("EVENT_BUS_NAME", "cancels")
    return Outcomes(queue_url)


def assert_event_follows_the_contract(event: dict[str, Any], detail_type: str, record: dict[str, Any]) -> None:
    assert (event["source"], event["detail-type"]) == ("callcancel", detail_type)
    detail = event["detail"]
    optional = {"request_id", "http_status", "provider_message", "failure_class", "failure_reason"}
    assert DETAIL_KEYS <= set(detail) <= DETAIL_KEYS | READ_FROM_THE_BODY | optional
    assert {k for k in READ_FROM_THE_BODY if k in detail} == {k for k in READ_FROM_THE_BODY if k in record}
    assert detail["request_key"] == record["id"]
    assert all(detail[k] == record[k] for k in READ_FROM_THE_BODY & set(detail))
    assert (detail["outcome"], str(detail["attempts"]), detail["message_id"]) == (
        record["outcome"],
        record["attempts"],
        record["message_id"],
    )
    assert RYNG_TOKEN not in json.dumps(event)
    assert PLUM_KEY not in json.dumps(event)


def test_a_cancel_is_recorded_cancelled_and_a_second_delivery_does_not_undo_it(
    stack: WorkerStack, simulator: ProviderSimulator, outcomes: Outcomes
) -> None:
    simulator.add_ryng_calls("acme", "c-1")
    first = stack.send({**RYNG, "call_id": "c-1", "request_id": "order-1:cancel"})
    stack.run_batch()
    second = stack.send({**RYNG, "call_id": "c-1", "request_id": "order-1:cancel"})
    stack.run_batch()

    record = outcomes.record("order-1:cancel")
    assert record is not None
    assert (record["outcome"], record["message_id"], record["target"]) == ("cancelled", first, "c-1")
    [event] = outcomes.events()
    assert_event_follows_the_contract(event, "Cancel Succeeded", record)
    assert event["detail"]["request_id"] == "order-1:cancel"
    assert second != first


def killed_after_ryng_confirmed(
    stack: WorkerStack, simulator: ProviderSimulator, request_id: str, operations: str
) -> Callable[[], None]:
    """A cancel whose delivery is killed as it reaches `operations` (see worker_child); returns its redelivery."""
    simulator.add_ryng_calls("acme", "c-1")
    stack.send({**RYNG, "call_id": "c-1", "request_id": request_id})
    event = stack.source.receive()
    assert event is not None
    kill_when({**os.environ, "PYTHONPATH": str(REPO)}, event, operations)
    assert simulator.cancelled("ryng") == ["c-1"]

    def redeliver() -> None:
        record = event["Records"][0]
        record["attributes"]["ApproximateReceiveCount"] = "2"
        response = stack.handler({"Records": [record]}, LocalLambdaContext(timeout_seconds=60))
        assert response == {"batchItemFailures": []}

    return redeliver


def test_a_cancel_whose_delivery_died_before_recording_it_is_recorded_and_announced_by_the_next(
    stack: WorkerStack, simulator: ProviderSimulator, outcomes: Outcomes
) -> None:
    # Given a delivery killed after Ryng confirmed and the idempotency record completed, as it was about to put
    # the event (before the outcome record: its second UpdateItem)
    redeliver = killed_after_ryng_confirmed(stack, simulator, "order-3:cancel", "UpdateItem#2 PutEvents")
    assert outcomes.record("order-3:cancel") is None and outcomes.events() == []

    # When Lambda redelivers it: the completed idempotency record replays, with no provider call
    redeliver()

    # Then the request's fate is recorded and announced all the same: cancelled, once
    assert len(simulator.calls("ryng")) == 1
    recorded = outcomes.record("order-3:cancel")
    assert recorded is not None and recorded["outcome"] == "cancelled" and recorded["attempts"] == "2"
    [announced] = outcomes.events()
    assert_event_follows_the_contract(announced, "Cancel Succeeded", recorded)


def test_a_cancel_whose_delivery_died_between_its_event_and_its_record_is_announced_again(
    stack: WorkerStack, simulator: ProviderSimulator, outcomes: Outcomes
) -> None:
    # Given a delivery killed after it announced the cancel, as it was about to write the outcome record
    redeliver = killed_after_ryng_confirmed(stack, simulator, "order-5:cancel", "UpdateItem#2")
    assert [e["detail-type"] for e in outcomes.events()] == ["Cancel Succeeded"]
    assert outcomes.record("order-5:cancel") is None

    # When Lambda redelivers it
    redeliver()

    # Then the record is written, and the cancel announced again: at least once, never not at all
    recorded = outcomes.record("order-5:cancel")
    assert recorded is not None and recorded["outcome"] == "cancelled"
    assert [e["detail-type"] for e in outcomes.events()] == ["Cancel Succeeded", "Cancel Succeeded"]
    assert len(simulator.calls("ryng")) == 1


def test_two_copies_of_a_cancel_in_one_batch_are_announced_once(
    stack: WorkerStack, simulator: ProviderSimulator, outcomes: Outcomes
) -> None:
    simulator.add_ryng_calls("acme", "c-1")
    copies = {stack.send({**RYNG, "call_id": "c-1", "request_id": "order-4:cancel"}) for _ in range(2)}

    assert stack.run_batch().response == {"batchItemFailures": []}

    # One copy cancelled; the other waited until its outcome was recorded, then replayed it: not announced again
    assert len(simulator.calls("ryng")) == 1
    recorded = outcomes.record("order-4:cancel")
    assert recorded is not None and recorded["outcome"] == "cancelled" and recorded["message_id"] in copies
    [announced] = outcomes.events()
    assert (
        announced["detail-type"] == "Cancel Succeeded" and announced["detail"]["message_id"] == recorded["message_id"]
    )


def test_a_request_without_request_id_is_recorded_under_its_message_id(
    stack: WorkerStack, simulator: ProviderSimulator, outcomes: Outcomes
) -> None:
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1")
    message_id = stack.send(PLUM)
    stack.run_batch()

    record = outcomes.record(message_id)
    assert record is not None
    assert (record["outcome"], record["provider"], record["target"]) == ("cancelled", "plum", "app1/dep1")
    [event] = outcomes.events()
    assert "request_id" not in event["detail"]


@pytest.mark.parametrize(
    ("body", "setup", "failure_class", "http_status", "provider_message", "calls"),
    [case[1:] for case in DEAD_LETTER_CASES],
    ids=[case[0] for case in DEAD_LETTER_CASES],
)
def test_every_dead_letter_is_recorded_and_announced_with_its_class_and_reason(
    stack: WorkerStack,
    simulator: ProviderSimulator,
    outcomes: Outcomes,
    body: dict[str, Any] | str,
    setup: Any,
    failure_class: str,
    http_status: str | None,
    provider_message: str | None,
    calls: int,
) -> None:
    _, message_id = send_dead_letter_case(stack, simulator, body, setup)

    stack.run_batch()

    record = outcomes.record(message_id)
    assert record is not None
    assert record["outcome"] == failure_class
    assert record.get("http_status") == http_status
    if provider_message:
        assert record["provider_message"] == provider_message
    [letter] = stack.dead_letters()
    [event] = outcomes.events()
    assert_event_follows_the_contract(event, "Cancel Failed", record)
    assert event["detail"]["failure_class"] == failure_class
    assert event["detail"]["failure_reason"] == letter["failure_reason"]


def test_retries_update_the_record_until_the_request_is_exhausted(
    stack: WorkerStack, simulator: ProviderSimulator, outcomes: Outcomes
) -> None:
    simulator.add_ryng_calls("acme", "c-1")
    simulator.inject("ryng", 503, times=-1, body={"message": "Dialer unavailable"})
    stack.send({**RYNG, "call_id": "c-1", "request_id": "r-1"})

    for attempt in (1, 2):
        stack.run_batch()
        record = outcomes.record("r-1") or {}
        assert (record["outcome"], record["attempts"], record["http_status"]) == ("retrying", str(attempt), "503")
        assert record["provider_message"] == "Dialer unavailable"
    assert outcomes.events() == [], "retries are not events"

    stack.run_batch()  # MAX_ATTEMPTS is 3
    record = outcomes.record("r-1") or {}
    assert (record["outcome"], record["attempts"]) == ("exhausted", "3")
    [event] = outcomes.events()
    assert_event_follows_the_contract(event, "Cancel Failed", record)


def test_a_redriven_dead_letter_starts_over_as_retrying_then_ends_cancelled(
    stack: WorkerStack, simulator: ProviderSimulator, outcomes: Outcomes, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator.add_ryng_calls("acme", "c-1")
    simulator.inject("ryng", 503, times=3 + 1)  # MAX_ATTEMPTS is 3; then the redriven one's first attempt
    stack.send({**RYNG, "call_id": "c-1", "request_id": "r-2"})
    stack.run_until_empty()
    assert (outcomes.record("r-2") or {})["outcome"] == "exhausted"

    monkeypatch.setattr(dlq, "RECEIVE_WAIT_SECONDS", 0)
    assert main(["dlq", "redrive", "--queue-url", stack.queue_url, "--dlq-url", stack.dlq_url]) == 0
    stack.run_batch()
    record = outcomes.record("r-2") or {}
    assert (record["outcome"], record["attempts"]) == ("retrying", "1")
    stack.run_batch()

    assert (outcomes.record("r-2") or {})["outcome"] == "cancelled"
    assert [e["detail-type"] for e in outcomes.events()] == ["Cancel Failed", "Cancel Succeeded"]


def test_a_deferred_request_carried_out_by_the_purge_ends_cancelled_under_the_same_key(
    stack: WorkerStack, simulator: ProviderSimulator, purge: PurgeStack, outcomes: Outcomes
) -> None:
    simulator.add_ryng_calls("acme", "n-1", "n-2")
    with_id = stack.send({**RYNG, "call_id": "n-1", "when": "nightly", "request_id": "night-1"})
    without_id = stack.send({**RYNG, "call_id": "n-2", "when": "nightly"})
    stack.run_batch()
    assert (outcomes.record("night-1") or {})["outcome"] == "deferred"
    assert (outcomes.record(without_id) or {})["outcome"] == "deferred"

    purge.run()
    stack.run_until_empty()

    for key in ("night-1", without_id):
        record = outcomes.record(key) or {}
        assert record["outcome"] == "cancelled", key
        assert record["message_id"] not in (with_id, without_id), "the purge's own delivery"
    types = [e["detail-type"] for e in outcomes.events()]
    assert sorted(types) == ["Cancel Deferred", "Cancel Deferred", "Cancel Succeeded", "Cancel Succeeded"]


def test_a_nightly_request_delivered_twice_is_still_deferred(
    stack: WorkerStack, simulator: ProviderSimulator, purge: PurgeStack, outcomes: Outcomes
) -> None:
    body = {**RYNG, "call_id": "n-1", "when": "nightly", "request_id": "night-2"}
    stack.send(body)
    stack.run_batch()
    stack.send(body)
    assert stack.run_batch().deleted

    assert (outcomes.record("night-2") or {})["outcome"] == "deferred"


@pytest.mark.parametrize("down", ["table", "bus"])
def test_an_unavailable_table_or_bus_changes_no_messages_fate(
    stack: WorkerStack,
    simulator: ProviderSimulator,
    outcomes: Outcomes,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    down: str,
) -> None:
    monkeypatch.setenv("OUTCOME_TABLE" if down == "table" else "EVENT_BUS_NAME", "deleted-meanwhile")
    simulator.add_ryng_calls("acme", "c-1")
    simulator.inject("ryng", 503, times=1, target="c-2")
    ok = stack.send({**RYNG, "call_id": "c-1"})
    retried = stack.send({**RYNG, "call_id": "c-2"})
    dead = stack.send({**RYNG, "call_id": "ghost"})

    result = stack.run_batch()

    assert set(result.deleted) == {ok, dead}
    assert result.failed == [retried]
    assert simulator.cancelled("ryng") == ["c-1"]
    assert [letter["failure_class"] for letter in stack.dead_letters()] == ["not_found"]
    metric = "OutcomeRecordFailed" if down == "table" else "OutcomeEventFailed"
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if metric in line]
    assert sum(point[metric][0] for point in emitted if "_aws" in point) == (3 if down == "table" else 2)
