"""The dead letter of DESIGN.md: the original body, byte for byte, with why it failed in message attributes."""

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from callcancel.errors import CancelFailure

PROVIDER_MESSAGE_MAX = 256
_REASON_MAX = 1024
# SQS accepts only these characters in attribute values; provider bodies can hold anything.
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


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
