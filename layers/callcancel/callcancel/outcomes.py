"""What became of each cancel request, told to its producer (DESIGN.md, "Outcomes for producers").

An outcome record per request key in DynamoDB (`OUTCOME_TABLE`), and an event per final outcome on the bus
(`EVENT_BUS_NAME`). Both are best-effort: the message's fate is already decided when they are written, so a
failure to write them logs a warning and counts a metric (`OutcomeRecordFailed`, `OutcomeEventFailed`), and
nothing else.
"""

import contextlib
import functools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import TypeAdapter, ValidationError

from callcancel.dead_letter import PROVIDER_MESSAGE_MAX
from callcancel.errors import CancelFailure, FailureClass, TransientFailure
from callcancel.models import PlumCancel, RequestId, RyngCancel
from callcancel.observability import count, logger

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

EVENT_SOURCE = "callcancel"
# Never "Cancel Requested" (callcancel_tools.producer.CANCEL_REQUESTED, the way in): outcomes cannot loop back.
DETAIL_TYPES = {"cancelled": "Cancel Succeeded", "deferred": "Cancel Deferred"}
CANCEL_FAILED = "Cancel Failed"
DEAD_LETTER_CLASSES = frozenset(str(c) for c in FailureClass)
RETRYING = "retrying"
RECORD_FAILED_METRIC = "OutcomeRecordFailed"
EVENT_FAILED_METRIC = "OutcomeEventFailed"
# The record and the event are written after the message's fate is decided, inside its time budget: an
# unreachable table or bus must cost seconds (at most 3 x 5 s each), not botocore's default minutes.
CLIENT_CONFIG = Config(connect_timeout=2, read_timeout=3, retries={"mode": "standard", "total_max_attempts": 3})
# Producer text read from a body that failed validation: enough to recognise it, never the whole body.
_LENIENT_MAX = 128


@functools.cache
def _request_id() -> TypeAdapter[str]:
    # Built on first use: only a body that fails validation needs it, never the cold start.
    return TypeAdapter[str](RequestId)


@dataclass(frozen=True)
class Outcome:
    """One delivery's outcome, as the record and the event tell it."""

    key: str  # the request_id, else the SQS message id
    outcome: str
    message_id: str
    attempts: int
    request_id: str | None = None
    provider: str | None = None
    account: str | None = None
    target: str | None = None
    http_status: int | None = None
    provider_message: str | None = None
    failure_reason: str | None = None
    redriven: bool = False  # a dead letter sent back to CancelQueue: it starts over
    # A duplicate delivery that replayed an earlier delivery's cancel: recorded as `cancelled`, but only where the
    # record does not say so yet (that delivery died, or failed to write, between the provider's answer and its
    # record), and then announced. Otherwise it changes nothing: the earlier delivery recorded and announced it.
    replayed: bool = False
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(
        cls,
        record: SQSRecord,
        request: RyngCancel | PlumCancel | None,
        outcome: str,
        failure: CancelFailure | TransientFailure | None = None,
    ) -> "Outcome":
        """`request` is None when the body is not a valid cancel request: what can be read of it is used."""
        fields = _request_fields(request) if request is not None else _lenient_fields(record.body)
        replayed = False
        if outcome == "duplicate" and request is not None:
            if request.when == "nightly":
                # A nightly request delivered again is still waiting for the night: its record and event say so.
                outcome = "deferred"
            else:
                # Only a cancel the provider confirmed is replayed.
                outcome, replayed = "cancelled", True
        return cls(
            key=fields.get("request_id") or record.message_id,
            outcome=outcome,
            message_id=record.message_id,
            attempts=int(record.attributes.approximate_receive_count or 1),
            http_status=failure.http_status if failure else None,
            provider_message=(failure.provider_message or "")[:PROVIDER_MESSAGE_MAX] or None if failure else None,
            failure_reason=failure.reason if isinstance(failure, CancelFailure) else None,
            # The dead letter's attributes travel with it when it is redriven (callcancel dlq redrive, SQS move task).
            redriven="failure_class" in (record.message_attributes or {}),
            replayed=replayed,
            **fields,
        )

    @property
    def failed(self) -> bool:
        return self.outcome in DEAD_LETTER_CLASSES

    def detail(self) -> dict[str, Any]:
        """The event's detail: the contract's fields, without the body or anything secret."""
        detail: dict[str, Any] = {"request_key": self.key}
        optional = {
            "request_id": self.request_id,
            "message_id": self.message_id,
            "provider": self.provider,
            "account": self.account,
            "target": self.target,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "http_status": self.http_status,
            "provider_message": self.provider_message,
        }
        detail |= {name: value for name, value in optional.items() if value is not None}
        if self.failed:
            detail |= {"failure_class": self.outcome, "failure_reason": self.failure_reason or ""}
        return detail


def _request_fields(request: RyngCancel | PlumCancel) -> dict[str, Any]:
    return {
        "request_id": request.request_id,
        "provider": request.provider,
        "account": request.account,
        "target": request.target,
    }


def _lenient_fields(body: str) -> dict[str, Any]:
    """provider, account, target and a usable request_id, from a body that is not a valid request."""
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}

    def text(name: str) -> str | None:
        item = value.get(name)
        return str(item)[:_LENIENT_MAX] if isinstance(item, str | int) and not isinstance(item, bool) else None

    fields = {"provider": text("provider"), "account": text("account"), "target": text("call_id")}
    if fields["provider"] == "plum" and (text("application_id") or text("deployment_id")):
        fields["target"] = f"{text('application_id') or '?'}/{text('deployment_id') or '?'}"
    # Only an id that could be a key: a malformed request_id falls back to the message id.
    with contextlib.suppress(ValidationError):
        fields["request_id"] = _request_id().validate_python(value.get("request_id"), strict=True)
    return fields


class OutcomeRecorder:
    """Writes the outcome record (one UpdateItem) and the outcome event (one PutEvents entry).

    Clients are made once per container (see `callcancel.worker.worker_for`), with CLIENT_CONFIG.
    """

    def __init__(
        self,
        dynamodb: "DynamoDBClient | None",
        table: str | None,
        events: Any,
        bus: str | None,
        *,
        retention_days: int = 400,
    ) -> None:
        self._dynamodb = dynamodb if table else None
        self._table = table
        self._events = events if bus else None
        self._bus = bus
        self._retention = timedelta(days=retention_days)
        if not table:
            logger.warning("OUTCOME_TABLE is not set: no outcome records are written")
        if not bus:
            logger.warning("EVENT_BUS_NAME is not set: no outcome events are put")

    @classmethod
    def create(cls, table: str | None, bus: str | None, *, retention_days: int = 400) -> "OutcomeRecorder":
        """A recorder with its own clients (made only for what is configured): once per container."""
        dynamodb = boto3.client("dynamodb", config=CLIENT_CONFIG) if table else None
        events = boto3.client("events", config=CLIENT_CONFIG) if bus else None
        return cls(dynamodb, table, events, bus, retention_days=retention_days)

    def record(self, outcome: Outcome) -> None:
        """Never raises: the message's fate does not depend on it.

        The event goes first, then the record: a record that tells the outcome means it was announced. A delivery
        that dies between the two leaves the record as it was, so the redelivery announces again (at least once,
        never not at all). A replayed duplicate announces only where the record does not say `cancelled` yet.
        """
        if outcome.replayed and not self._untold(outcome):
            return
        self._announce_or_count(outcome)
        self._write_or_count(outcome)

    def _untold(self, outcome: Outcome) -> bool:
        """Whether the record of a replayed cancel does not say `cancelled`: its delivery died before telling."""
        if self._dynamodb is None or self._table is None:
            return False  # nothing to tell by: the delivery that cancelled announced it, or died trying
        try:
            item = self._dynamodb.get_item(
                TableName=self._table,
                Key={"id": {"S": outcome.key}},
                ConsistentRead=True,
                ProjectionExpression="#outcome",
                ExpressionAttributeNames={"#outcome": "outcome"},
            ).get("Item", {})
        except Exception as exc:
            _warn("outcome record not read", exc, outcome)
            return True  # at least once
        return item.get("outcome", {}).get("S") != "cancelled"

    def _write_or_count(self, outcome: Outcome) -> None:
        # Whatever went wrong (AWS, or a bug here), the cancel's own outcome stands.
        try:
            self._write(outcome)
        except Exception as exc:
            _warn("outcome record not written", exc, outcome)
            count(RECORD_FAILED_METRIC)

    def _announce_or_count(self, outcome: Outcome) -> None:
        try:
            self._announce(outcome)
        except Exception as exc:
            _warn("outcome event not put", exc, outcome)
            count(EVENT_FAILED_METRIC)

    def _write(self, outcome: Outcome) -> None:
        if self._dynamodb is None or self._table is None:
            return
        values: dict[str, Any] = {
            "outcome": {"S": outcome.outcome},
            "attempts": {"N": str(outcome.attempts)},
            "message_id": {"S": outcome.message_id},
            "updated_at": {"S": outcome.at.isoformat(timespec="seconds")},
            "expires_at": {"N": str(int((outcome.at + self._retention).timestamp()))},
        }
        optional = {
            "provider": outcome.provider,
            "account": outcome.account,
            "target": outcome.target,
            "http_status": outcome.http_status,
            "provider_message": outcome.provider_message,
        }
        for name, value in optional.items():
            if value is not None:
                values[name] = {"N": str(value)} if isinstance(value, int) else {"S": value}
        # What no longer holds goes: a cancelled record keeps no answer from an earlier failed attempt.
        removed = [name for name, value in optional.items() if value is None]
        update = "SET " + ", ".join(f"#{name} = :{name}" for name in values)
        if removed:
            update += " REMOVE " + ", ".join(f"#{name}" for name in removed)
        names = {f"#{name}": name for name in [*values, *removed]}
        condition, condition_values = _condition(outcome)
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"id": {"S": outcome.key}},
                UpdateExpression=update,
                ExpressionAttributeNames=names | ({"#id": "id"} if condition else {}),
                ExpressionAttributeValues={f":{name}": value for name, value in values.items()} | condition_values,
                **({"ConditionExpression": condition} if condition else {}),  # type: ignore[arg-type]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            logger.info("outcome record kept: it holds a final outcome", extra={"outcome": outcome.outcome})

    def _announce(self, outcome: Outcome) -> None:
        detail_type = CANCEL_FAILED if outcome.failed else DETAIL_TYPES.get(outcome.outcome)
        if self._events is None or detail_type is None:
            return
        answer = self._events.put_events(
            Entries=[
                {
                    "EventBusName": self._bus,
                    "Source": EVENT_SOURCE,
                    "DetailType": detail_type,
                    "Detail": json.dumps(outcome.detail()),
                    "Time": outcome.at,
                }
            ]
        )
        if answer.get("FailedEntryCount"):
            [entry] = answer["Entries"]
            raise EventRefused(f"{entry.get('ErrorCode')}: {entry.get('ErrorMessage')}")


def _warn(message: str, exc: Exception, outcome: Outcome) -> None:
    error = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
    logger.warning(
        message, extra={"outcome": outcome.outcome, "request_key": outcome.key, "error": error or repr(exc)[:300]}
    )


class EventRefused(Exception):
    """EventBridge answered, but did not take the event."""


def _condition(outcome: Outcome) -> tuple[str | None, dict[str, Any]]:
    """When this outcome may replace the one recorded (DESIGN.md): `None` is always."""
    if outcome.outcome == "cancelled" and not outcome.replayed:
        return None, {}
    if outcome.outcome != RETRYING:
        # Nothing hides that a request was cancelled: not a later duplicate (the contract), nor the same
        # request_id reused for another target (`invalid`), which compliance would otherwise lose.
        return "attribute_not_exists(#id) OR #outcome <> :was_cancelled", {":was_cancelled": {"S": "cancelled"}}
    # Retries never overwrite a final outcome, except that a redriven dead letter starts over.
    condition = "attribute_not_exists(#id) OR #outcome = :was_retrying"
    values: dict[str, Any] = {":was_retrying": {"S": RETRYING}}
    if outcome.redriven:
        classes = sorted(DEAD_LETTER_CLASSES)
        condition += f" OR #outcome IN ({', '.join(f':dead_{c}' for c in classes)})"
        values |= {f":dead_{c}": {"S": c} for c in classes}
    return condition, values
