"""EventBridge as a second way in, through the deployed bus and rule of the real template.yaml."""

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from callcancel.outcomes import CANCEL_FAILED, DETAIL_TYPES, EVENT_SOURCE
from callcancel.peek import peek
from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.stack import DeployedStack, deploy

pytestmark = [pytest.mark.e2e]

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
REQUEST = {"provider": "ryng", "account": "acme", "call_id": "c-42", "request_id": "order-42:cancel"}


@pytest.fixture(scope="module")
def stack(embedded_aws: EmbeddedAws) -> DeployedStack:
    embedded_aws.reset()
    return deploy(TEMPLATE, stack_name="way-in")


@pytest.fixture
def events(stack: DeployedStack) -> Any:
    sqs, url = boto3.client("sqs"), stack.outputs["CancelQueueUrl"]
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return boto3.client("events")


def put(events: Any, bus: str, detail_type: str, detail: dict[str, Any], source: str = "com.example.orders") -> None:
    answer = events.put_events(
        Entries=[{"EventBusName": bus, "Source": source, "DetailType": detail_type, "Detail": json.dumps(detail)}]
    )
    assert answer["FailedEntryCount"] == 0


def queued(stack: DeployedStack) -> list[Any]:
    return [json.loads(m["body"]) for m in peek(boto3.client("sqs"), stack.outputs["CancelQueueUrl"])]


def test_a_cancel_requested_event_reaches_the_cancel_queue_as_its_detail(stack: DeployedStack, events: Any) -> None:
    put(events, stack.outputs["EventBusName"], "Cancel Requested", REQUEST)

    assert queued(stack) == [REQUEST]


def test_outcome_events_never_reach_the_cancel_queue(stack: DeployedStack, events: Any) -> None:
    detail = {"request_key": "k", "outcome": "cancelled", **REQUEST}
    for detail_type in [*DETAIL_TYPES.values(), CANCEL_FAILED]:
        put(events, stack.outputs["EventBusName"], detail_type, detail, source=EVENT_SOURCE)

    assert queued(stack) == []


def test_the_deployed_rule_retries_and_dead_letters_what_it_cannot_deliver(stack: DeployedStack, events: Any) -> None:
    bus = stack.outputs["EventBusName"]
    (rule,) = events.list_rules(EventBusName=bus)["Rules"]
    (target,) = events.list_targets_by_rule(Rule=rule["Name"], EventBusName=bus)["Targets"]
    failures_arn = boto3.client("sqs").get_queue_attributes(
        QueueUrl=stack.outputs["CancelRequestedFailuresUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]

    assert json.loads(rule["EventPattern"]) == {"detail-type": ["Cancel Requested"]}
    assert target["Arn"] == stack.outputs["CancelQueueArn"]
    assert target["InputPath"] == "$.detail"
    assert target["DeadLetterConfig"]["Arn"] == failures_arn
    assert int(target["RetryPolicy"]["MaximumEventAgeInSeconds"]) == 3600


def test_the_worker_is_told_where_outcomes_go(stack: DeployedStack) -> None:
    env = stack.functions["CancelWorker"].environment
    assert env["OUTCOME_TABLE"] == stack.outputs["OutcomeTableName"]
    assert env["EVENT_BUS_NAME"] == stack.outputs["EventBusName"]
    assert env["OUTCOME_RETENTION_DAYS"] == "400"
