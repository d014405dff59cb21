"""The deferred-cancel store: requests with `when: nightly`, held in DynamoDB until the nightly purge."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Items read per scan page: bounds the work between two deletes and the memory a page holds.
SCAN_PAGE_LIMIT = 500


@dataclass(frozen=True)
class DeferredItem:
    id: str
    body: str
    deferred_at: str


class DeferredStore:
    """Items `{id, body, deferred_at}`; `id` is the request's idempotency key, so a redelivery overwrites."""

    def __init__(self, client: "DynamoDBClient", table: str) -> None:
        self._client = client
        self._table = table

    def put(self, item: DeferredItem) -> None:
        self._client.put_item(
            TableName=self._table,
            Item={"id": {"S": item.id}, "body": {"S": item.body}, "deferred_at": {"S": item.deferred_at}},
        )

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
            yield [
                DeferredItem(id=i["id"]["S"], body=i["body"]["S"], deferred_at=i["deferred_at"]["S"])
                for i in page.get("Items", [])
            ]
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def delete(self, item_id: str) -> None:
        self._client.delete_item(TableName=self._table, Key={"id": {"S": item_id}})


def iso_utc(moment: datetime) -> str:
    """One fixed-width format, so that `deferred_at` strings compare as the times they name."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
