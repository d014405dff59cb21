"""The dead letter of DESIGN.md: the original body, byte for byte, with why it failed in message attributes.

`DeadLetter` is what the worker writes; `StoredDeadLetter` is what operators read back (CLI, digest).
"""

import functools
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from callcancel.errors import CancelFailure

PROVIDER_MESSAGE_MAX = 256
# The contract's message attributes, in its order.
ATTRIBUTES = (
    "failure_class",
    "failure_reason",
    "attempts",
    "source_message_id",
    "failed_at",
    "http_status",
    "provider_message",
)
_REASON_MAX = 1024
# SQS accepts only #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF in attribute values; provider
# bodies can hold anything. The complement, written out: the negated class takes 15 ms to compile at cold start.
_NOT_SQS_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: str, limit: int) -> str:
    return _NOT_SQS_TEXT.sub("?", value)[:limit] or "-"


@dataclass(frozen=True)
class DeadLetter:
    body: str
    failure: CancelFailure
    attempts: int
    source_message_id: str
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def message_attributes(self) -> dict[str, dict[str, Any]]:
        values = {
            "failure_class": str(self.failure.failure_class),
            "failure_reason": _text(self.failure.reason, _REASON_MAX),
            "attempts": str(self.attempts),
            "source_message_id": self.source_message_id,
            "failed_at": self.failed_at.isoformat(timespec="seconds"),
        }
        if self.failure.http_status is not None:
            values["http_status"] = str(self.failure.http_status)
        if self.failure.provider_message:
            values["provider_message"] = _text(self.failure.provider_message, PROVIDER_MESSAGE_MAX)
        return {name: {"DataType": "String", "StringValue": value} for name, value in values.items()}


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter as read back from the queue, for people: what failed, where, why, and since when.

    Messages moved by the queue's RedrivePolicy (a worker crash or timeout) carry no failure attributes;
    they read as class `unclassified`.
    """

    message_id: str
    body: str
    failure_class: str
    failure_reason: str
    attempts: str
    failed_at: datetime | None
    source_message_id: str | None = None
    http_status: str | None = None
    provider_message: str | None = None

    @classmethod
    def from_peeked(cls, item: dict[str, Any]) -> "StoredDeadLetter":
        """From one `callcancel.queues.peek` item (message attributes flattened)."""
        failed_at = item.get("failed_at")
        return cls(
            message_id=item["message_id"],
            body=item["body"],
            failure_class=item.get("failure_class", UNCLASSIFIED),
            failure_reason=item.get("failure_reason", "moved by the queue's redrive policy (worker crash or timeout)"),
            attempts=item.get("attempts", "-"),
            failed_at=_parse_time(failed_at) if failed_at else None,
            source_message_id=item.get("source_message_id"),
            http_status=item.get("http_status"),
            provider_message=item.get("provider_message"),
        )

    @property
    def key(self) -> str:
        """The CancelQueue message it came from: two dead letters with one key are copies of one failure."""
        return self.source_message_id or self.message_id

    @functools.cached_property
    def _request(self) -> dict[str, Any]:
        # The body is whatever the producer sent, valid or not: read it leniently.
        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def _field(self, name: str) -> str:
        value = self._request.get(name)
        return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else "?"

    @property
    def provider(self) -> str:
        return self._field("provider")

    @property
    def account(self) -> str:
        return self._field("account")

    @property
    def target(self) -> str:
        if self.provider == "plum":
            return f"{self._field('application_id')}/{self._field('deployment_id')}"
        return self._field("call_id")

    def age(self, now: datetime | None = None) -> timedelta | None:
        return None if self.failed_at is None else (now or datetime.now(UTC)) - self.failed_at


UNCLASSIFIED = "unclassified"


def distinct(letters: list[StoredDeadLetter]) -> list[StoredDeadLetter]:
    """Each letter once: a worker killed between its dead-letter send and its ack leaves two copies."""
    first: dict[str, StoredDeadLetter] = {}
    for letter in letters:
        first.setdefault(letter.key, letter)
    return list(first.values())


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
