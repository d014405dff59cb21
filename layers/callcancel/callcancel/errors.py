"""Typed outcomes of a cancel attempt.

Provider adapters raise these where the HTTP answer is read; nothing downstream matches on strings.
A `CancelFailure` is final: the message is dead-lettered with its class. A `TransientFailure` is retried
with backoff until MAX_ATTEMPTS, then dead-lettered as `exhausted`.
"""

from enum import StrEnum
from typing import ClassVar

# Said of a request whose provider may have carried it out, although no answer of ours confirmed it.
MAY_HAVE_CANCELLED = (
    "an earlier attempt of this request may have cancelled it (it timed out, lost its connection or was interrupted)"
)


class FailureClass(StrEnum):
    INVALID = "invalid"
    CONFIG = "config"
    NOT_FOUND = "not_found"
    AUTH = "auth"
    REJECTED = "rejected"
    EXHAUSTED = "exhausted"


class CancelFailure(Exception):
    """A request that cannot succeed by retrying it as it is."""

    failure_class: ClassVar[FailureClass]

    def __init__(self, reason: str, *, http_status: int | None = None, provider_message: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.provider_message = provider_message


class InvalidRequest(CancelFailure):
    failure_class = FailureClass.INVALID


class ConfigError(CancelFailure):
    failure_class = FailureClass.CONFIG


class NotFound(CancelFailure):
    failure_class = FailureClass.NOT_FOUND


class AuthDenied(CancelFailure):
    failure_class = FailureClass.AUTH


class Rejected(CancelFailure):
    failure_class = FailureClass.REJECTED


class Exhausted(CancelFailure):
    failure_class = FailureClass.EXHAUSTED


class TransientFailure(Exception):
    """Worth retrying later: 408, 429, 5xx, timeouts, connection errors, AWS hiccups.

    `ambiguous`: the request may have reached the provider and been carried out (a read timeout, a connection
    dropped after the request was sent), so a later "does not exist" may be our own earlier cancel.
    """

    def __init__(
        self,
        reason: str,
        *,
        http_status: int | None = None,
        provider_message: str | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.provider_message = provider_message
        self.retry_after = retry_after
        self.ambiguous = ambiguous

    def exhausted(self, attempts: int) -> Exhausted:
        return Exhausted(
            f"gave up after {attempts} attempts: {self.reason}" + (f"; {MAY_HAVE_CANCELLED}" if self.ambiguous else ""),
            http_status=self.http_status,
            provider_message=self.provider_message,
        )


class InvalidPurgePlan(Exception):
    """The purge plan cannot be carried out as a whole: nothing of it is enqueued."""


class PurgeError(Exception):
    """The purge could not enqueue what it had to (SQS refused after retries); the run fails loudly."""


class PurgeIncomplete(PurgeError):
    """The purge stopped for time with requests left: nothing is lost, and its retry resumes where it stopped."""
