"""The SQS calls the worker makes: the source message's visibility, and the dead-letter queue."""

import functools
from typing import TYPE_CHECKING

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.exceptions import BotoCoreError, ClientError

from callcancel.dead_letter import DeadLetter
from callcancel.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


class WorkerQueues:
    def __init__(self, client: "SQSClient", dead_letter_queue_url: str, cancel_queue_url: str | None) -> None:
        self._client = client
        self._dead_letter_queue_url = dead_letter_queue_url
        self._cancel_queue_url = cancel_queue_url

    def dead_letter(self, letter: DeadLetter) -> None:
        """Raises if SQS refuses: the record then stays on its queue and nothing is lost."""
        self._client.send_message(
            QueueUrl=self._dead_letter_queue_url,
            MessageBody=letter.body,
            MessageAttributes=letter.message_attributes(),  # type: ignore[arg-type]
        )

    def delay(self, record: SQSRecord, seconds: int) -> None:
        """Hide the message for `seconds`. If that fails, it still comes back after the queue's visibility timeout."""
        try:
            self._client.change_message_visibility(
                QueueUrl=self._source_queue_url(record.event_source_arn),
                ReceiptHandle=record.receipt_handle,
                VisibilityTimeout=seconds,
            )
        except (BotoCoreError, ClientError) as exc:
            logger.warning("could not set the retry delay", extra={"delay_seconds": seconds, "error": str(exc)})

    def _source_queue_url(self, event_source_arn: str) -> str:
        return self._cancel_queue_url or self._queue_url_of(event_source_arn)

    @functools.cache  # noqa: B019  (one instance per container; the cache lives as long as it does)
    def _queue_url_of(self, event_source_arn: str) -> str:
        *_, account, name = event_source_arn.split(":")
        return self._client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
