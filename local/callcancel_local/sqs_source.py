"""Lambda's SQS event source, without Lambda: real receives turned into the event Lambda would send.

It follows the event source mapping's semantics: up to `batch_size` records, each with the attributes
Lambda passes; after the handler returns, the records not listed in `batchItemFailures` are deleted; if the
handler raised or answered nonsense, nothing is deleted and every message waits out its visibility timeout.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


@dataclass
class BatchResult:
    event: dict[str, Any]
    response: Any
    deleted: list[str]  # message ids
    failed: list[str]
    error: BaseException | None = None


class SqsEventSource:
    def __init__(
        self, sqs: "SQSClient", queue_url: str, *, batch_size: int = 10, report_batch_item_failures: bool = True
    ) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self.batch_size = batch_size
        # Without ReportBatchItemFailures, Lambda ignores the response: a return means the whole batch is done.
        self.report_batch_item_failures = report_batch_item_failures
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]

    def receive(self, wait_seconds: int = 0) -> dict[str, Any] | None:
        """One batch as a Lambda SQS event, or None when nothing is visible."""
        messages = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return None
        return {"Records": [self._record(message) for message in messages]}

    def _record(self, message: Any) -> dict[str, Any]:
        attributes = {
            name: message["Attributes"][name]
            for name in (
                "ApproximateReceiveCount",
                "SentTimestamp",
                "SenderId",
                "ApproximateFirstReceiveTimestamp",
            )
            if name in message.get("Attributes", {})
        }
        message_attributes = {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        }
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": attributes,
            "messageAttributes": message_attributes,
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.queue_arn.split(":")[3],
        }

    def invoke(self, handler: Callable[[dict[str, Any], Any], Any], event: dict[str, Any], context: Any) -> BatchResult:
        """Run the handler on one batch and settle the batch the way Lambda does."""
        try:
            response = handler(event, context)
        except Exception as exc:  # Lambda: the invocation failed, every message is retried.
            return self.settle(event, None, exc)
        return self.settle(event, response)

    def settle(self, event: dict[str, Any], response: Any, error: BaseException | None = None) -> BatchResult:
        """Delete what the handler's response says succeeded (nothing if it raised: `error`)."""
        ids = [record["messageId"] for record in event["Records"]]
        if error is not None:
            return BatchResult(event, None, [], ids, error)
        failed = _reported_failures(response, ids) if self.report_batch_item_failures else set()
        if failed is None:  # Lambda treats a malformed response as a failure of the whole batch.
            return BatchResult(event, response, [], ids)
        done = [record for record in event["Records"] if record["messageId"] not in failed]
        for start in range(0, len(done), 10):
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": record["receiptHandle"]}
                    for i, record in enumerate(done[start : start + 10])
                ],
            )
        return BatchResult(event, response, [record["messageId"] for record in done], sorted(failed))


def _reported_failures(response: Any, ids: list[str]) -> set[str] | None:
    if response is None:
        return set()
    if not isinstance(response, dict):
        return None
    items = response.get("batchItemFailures", [])
    if not isinstance(items, list):
        return None
    failed = {item.get("itemIdentifier") for item in items if isinstance(item, dict)}
    if len(failed) != len(items) or not failed <= set(ids):
        return None
    return {str(identifier) for identifier in failed}
