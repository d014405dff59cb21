"""The deferred-cancel store: requests with `when: nightly`, held in DynamoDB until the nightly purge."""

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from callcancel.errors import PurgeError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import WriteRequestTypeDef

# Items read per scan page: bounds the work between two deletes and the memory a page holds.
SCAN_PAGE_LIMIT = 500
# BatchWriteItem takes at most 25 requests; unprocessed ones are retried with a short backoff.
WRITE_BATCH = 25
WRITE_ATTEMPTS = 5


@dataclass(frozen=True)
class DeferredItem:
    id: str
    body: str
    deferred_at: str
    # The purge date on which the nightly purge put this request on CancelQueue; None until then.
    enqueued_on: str | None = None


class DeferredStore:
    """Items `{id, body, deferred_at[, enqueued_on]}`; `id` is the request's idempotency key, held by the first
    request with it."""

    def __init__(self, client: "DynamoDBClient", table: str) -> None:
        self._client = client
        self._table = table

    def put(self, item: DeferredItem) -> DeferredItem | None:
        """Store the item unless its key is already held; then return the item that holds it, unchanged."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item={"id": {"S": item.id}, "body": {"S": item.body}, "deferred_at": {"S": item.deferred_at}},
                ConditionExpression="attribute_not_exists(id)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            held = exc.response.get("Item") or self._client.get_item(
                TableName=self._table, Key={"id": {"S": item.id}}, ConsistentRead=True
            ).get("Item")
            if held is None:  # removed by the purge in between: the key is free again
                return self.put(item)
            return _item(held)
        return None

    def pages(self, deferred_until: str) -> Iterator[list[DeferredItem]]:
        """Every item deferred at or before `deferred_until` (ISO 8601, UTC), one scan page at a time."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "deferred_at <= :until",
            "ExpressionAttributeValues": {":until": {"S": deferred_until}},
            "ConsistentRead": True,
            "Limit": SCAN_PAGE_LIMIT,
        }
        while True:
            page = self._client.scan(**kwargs)
            yield [_item(i) for i in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def mark_enqueued(self, items: Sequence[DeferredItem], purge_date: date) -> None:
        """Record that these requests are on CancelQueue, so that no later purge sends them again.

        A whole-item put, not a conditional update: BatchWriteItem takes 25 at a time, where UpdateItem would
        be one call per item. It rewrites the item as read; only the purge removes items, and the worker never
        replaces one that exists.
        """
        self._write(
            {
                "PutRequest": {
                    "Item": {
                        "id": {"S": item.id},
                        "body": {"S": item.body},
                        "deferred_at": {"S": item.deferred_at},
                        "enqueued_on": {"S": purge_date.isoformat()},
                    }
                }
            }
            for item in items
        )

    def delete(self, item_ids: Sequence[str]) -> None:
        self._write({"DeleteRequest": {"Key": {"id": {"S": item_id}}}} for item_id in item_ids)

    def _write(self, requests: Iterable["WriteRequestTypeDef"]) -> None:
        """BatchWriteItem, 25 at a time; unprocessed requests are retried, and raise if DynamoDB keeps them."""
        pending: list[WriteRequestTypeDef] = list(requests)
        while pending:
            batch, pending = pending[:WRITE_BATCH], pending[WRITE_BATCH:]
            for attempt in range(WRITE_ATTEMPTS):
                unprocessed = self._client.batch_write_item(RequestItems={self._table: batch})
                # The output shape of a write request is the input shape; only the stubs' names differ.
                batch = cast("list[WriteRequestTypeDef]", unprocessed.get("UnprocessedItems", {}).get(self._table, []))
                if not batch:
                    break
                time.sleep(0.05 * 2**attempt)
            else:
                raise PurgeError(f"DynamoDB left {len(batch)} deferred-table writes unprocessed")


def _item(attributes: Any) -> DeferredItem:
    return DeferredItem(
        id=attributes["id"]["S"],
        body=attributes["body"]["S"],
        deferred_at=attributes["deferred_at"]["S"],
        enqueued_on=attributes["enqueued_on"]["S"] if "enqueued_on" in attributes else None,
    )


def iso_utc(moment: datetime) -> str:
    """One fixed-width format, so that `deferred_at` strings compare as the times they name."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
