"""Powertools idempotency for cancels, plus what an attempt must know about the attempts before it.

Powertools' DynamoDB layer keeps one record per request key: INPROGRESS (a lock that expires with the
invocation that took it), then COMPLETED. A cancel needs two things more:

- Whether this attempt took over a lock that an earlier attempt left behind. An invocation that was killed,
  or an attempt that failed ambiguously (a read timeout, a dropped connection), may have cancelled at the
  provider already, so "does not exist" now may be our own earlier cancel. PutItem's `ReturnValues=ALL_OLD`
  tells it at no extra cost: the replaced item was an INPROGRESS lock (or an expired COMPLETED record).
- An ambiguous failure releases its lock instead of deleting it, so that the next attempt sees that trace. So
  does every failure of an attempt that took such a trace over, a final one too: the trace outlives the dead
  letter, and a producer's second copy of the request (the same request_id) is told as well.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemAlreadyExistsError,
)

from callcancel.errors import TransientFailure

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_INPROGRESS = "INPROGRESS"
_COMPLETED = "COMPLETED"


class CancelRecords(DynamoDBPersistenceLayer):
    """The idempotency table (`IDEMPOTENCY_TABLE`, partition key `id`), as Powertools lays it out."""

    def __init__(self, table_name: str, client: "DynamoDBClient | None" = None) -> None:
        # A client of its own: the hooks below must not touch other tables' PutItem calls.
        client = client or boto3.client("dynamodb")
        self._replaced = threading.local()
        client.meta.events.register("before-parameter-build.dynamodb.PutItem", _return_old_item)
        client.meta.events.register("after-call.dynamodb.PutItem", self._keep_replaced)
        super().__init__(table_name=table_name, boto3_client=client)

    def _keep_replaced(self, parsed: dict[str, Any], **_: Any) -> None:
        # botocore calls this in the thread that made the call: the record's own thread.
        self._replaced.item = parsed.get("Attributes")

    def took_over_earlier_attempt(self) -> bool:
        """True when this thread's last lock replaced an earlier attempt's lock or record: it may have cancelled."""
        # Each PutItem of this thread sets it anew, so it always speaks of the lock this thread holds now.
        item = getattr(self._replaced, "item", None)
        status = (item or {}).get(self.status_attr, {}).get("S")
        return status in (_INPROGRESS, _COMPLETED)

    def delete_record(self, data: dict[str, Any], exception: Exception) -> None:
        # A retry after an attempt that may have cancelled keeps the trace too, whatever its own failure: a 503
        # now does not undo what the timeout before it may have done, nor does a "does not exist" that is
        # dead-lettered saying so (the next copy of the request would otherwise find no trace).
        ambiguous = isinstance(exception, TransientFailure) and exception.ambiguous
        if ambiguous or self.took_over_earlier_attempt():
            self._release(data)
        else:
            super().delete_record(data, exception)

    def _release(self, data: dict[str, Any]) -> None:
        """Expire the lock now instead of deleting it: the next attempt takes it over, and knows."""
        key = self._get_hashed_idempotency_key(data)
        if key is None:
            return
        self.client.update_item(
            TableName=self.table_name,
            Key=self._get_key(key),
            UpdateExpression="SET #in_progress_expiry = :released",
            ConditionExpression="#status = :inprogress",
            ExpressionAttributeNames={"#in_progress_expiry": self.in_progress_expiry_attr, "#status": self.status_attr},
            ExpressionAttributeValues={":released": {"N": "0"}, ":inprogress": {"S": _INPROGRESS}},
        )


def _return_old_item(params: dict[str, Any], **_: Any) -> None:
    params.setdefault("ReturnValues", "ALL_OLD")


def lock_expires_in(exc: IdempotencyAlreadyInProgressError, now: datetime | None = None) -> float | None:
    """Seconds until the lock another delivery holds expires, when Powertools' error carries the record."""
    # Powertools raises it while handling the failed conditional put, whose error holds the stored record.
    held = exc.__context__
    record = held.old_data_record if isinstance(held, IdempotencyItemAlreadyExistsError) else None
    if record is None or record.in_progress_expiry_timestamp is None:
        return None
    now_ms = (now or datetime.now(UTC)).timestamp() * 1000
    return max(0.0, (record.in_progress_expiry_timestamp - now_ms) / 1000)


class KeyLocks:
    """One lock per request key among this container's threads, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key) or (threading.Lock(), 0)
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users = self._locks[key][1] - 1
                if users:
                    self._locks[key] = (lock, users)
                else:
                    del self._locks[key]
