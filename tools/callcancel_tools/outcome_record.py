"""What became of a cancel request, read back from the outcome table: `callcancel.status` and `callcancel status`.

Apart from `callcancel.outcomes`, which writes the records, because that module starts the worker's
Powertools logger, which a producer must not do.
"""

import functools
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3

from callcancel_tools.locate import QueueLocator

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


@dataclass(frozen=True)
class OutcomeRecord:
    """One outcome record, with the contract's attribute names (DESIGN.md, "Outcomes for producers")."""

    id: str  # the request key: its request_id, else the SQS message id
    outcome: str
    attempts: int
    updated_at: str
    message_id: str | None = None
    provider: str | None = None
    account: str | None = None
    target: str | None = None
    http_status: int | None = None
    provider_message: str | None = None
    expires_at: int | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "OutcomeRecord":
        def value(name: str) -> Any:
            typed = item.get(name)
            if not typed:
                return None
            kind, raw = next(iter(typed.items()))
            return int(raw) if kind == "N" else raw

        return cls(
            id=value("id"),
            outcome=value("outcome"),
            attempts=value("attempts") or 0,
            updated_at=value("updated_at") or "",
            message_id=value("message_id"),
            provider=value("provider"),
            account=value("account"),
            target=value("target"),
            http_status=value("http_status"),
            provider_message=value("provider_message"),
            expires_at=value("expires_at"),
        )

    def as_dict(self) -> dict[str, Any]:
        """The attributes present, as JSON would carry them."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    @property
    def updated(self) -> datetime | None:
        try:
            moment = datetime.fromisoformat(self.updated_at)
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_outcome(dynamodb: "DynamoDBClient", table: str, request_key: str) -> OutcomeRecord | None:
    """The record of this request key (its request_id, else its SQS message id), or None if there is none."""
    item = dynamodb.get_item(TableName=table, Key={"id": {"S": request_key}}, ConsistentRead=True).get("Item")
    return None if item is None else OutcomeRecord.from_item(item)


@functools.cache
def _dynamodb(region: str | None) -> "DynamoDBClient":
    return boto3.client("dynamodb", region_name=region)


def status(
    request_id: str,
    /,
    *,
    table: str | None = None,
    stack_name: str | None = None,
    dynamodb: "DynamoDBClient | None" = None,
) -> OutcomeRecord | None:
    """What became of a cancel request: its outcome record, or None when none is recorded (yet).

    `request_id` is the request's `request_id`, or, for a request sent without one, the SQS message id
    `callcancel.publish` returned. The table is `table`, else $CALLCANCEL_OUTCOME_TABLE, else the
    OutcomeTableName output of `stack_name` (or of samconfig.toml's stack).
    """
    region = dynamodb.meta.region_name if dynamodb else None
    if table is None:
        locator = QueueLocator(stack_name=stack_name, region=region, outcome_table_name=table)
        table, region = locator.outcome_table(), locator.region
    return read_outcome(dynamodb or _dynamodb(region), table, request_id)
