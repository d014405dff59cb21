"""The local SQS event source settles batches the way Lambda's event source mapping does."""

from typing import Any

import boto3
import pytest

from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.lambda_runtime import LocalLambdaContext
from callcancel_local.sqs_source import SqsEventSource

pytestmark = pytest.mark.integration


@pytest.fixture
def source(embedded_aws: EmbeddedAws) -> SqsEventSource:
    embedded_aws.reset()
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="source", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
    return SqsEventSource(sqs, url)


def _fail_first(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}


def _raise(event: dict[str, Any], context: Any) -> None:
    raise RuntimeError("handler crashed")


def _nonsense(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}


@pytest.mark.parametrize(
    ("handler", "report_failures", "deleted", "failed"),
    [
        (_fail_first, True, 2, 1),
        (_raise, True, 0, 3),  # the invocation failed: every message is retried
        (_nonsense, True, 0, 3),  # Lambda treats an unknown itemIdentifier as a failed batch
        (_fail_first, False, 3, 0),  # without ReportBatchItemFailures the response is ignored
    ],
)
def test_batches_are_settled_like_lambda(
    source: SqsEventSource, handler: Any, report_failures: bool, deleted: int, failed: int
) -> None:
    source.report_batch_item_failures = report_failures
    event = source.receive()
    assert event is not None
    assert len(event["Records"]) == 3
    assert event["Records"][0]["attributes"]["ApproximateReceiveCount"] == "1"
    assert event["Records"][0]["eventSourceARN"] == source.queue_arn

    result = source.invoke(handler, event, LocalLambdaContext())

    assert (len(result.deleted), len(result.failed)) == (deleted, failed)
    # Failed messages wait out their visibility timeout (60 s here) instead of coming straight back.
    assert source.receive() is None
