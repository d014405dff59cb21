"""The nightly purge: the purge plan and the deferred cancels, enqueued onto CancelQueue. It never calls a provider.

The worker carries every request out, so retries, idempotency, metrics and dead letters stay in one place.
Each request gets a deterministic `request_id` (purge date + target), so a retried or repeated purge of the
same night makes no second provider call: the worker's idempotency dedupes it.
"""

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters.exceptions import TransformParameterError

from callcancel.deferred import DeferredItem, DeferredStore, iso_utc
from callcancel.errors import InvalidPurgePlan, InvalidRequest, PurgeError
from callcancel.models import PlumCancel, PurgePlan, RyngCancel, parse_cancel_request, parse_purge_plan
from callcancel.observability import count, logger, metrics
from callcancel.settings import PurgeSettings

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import BatchResultErrorEntryTypeDef

SQS_BATCH = 10
SEND_ATTEMPTS = 3


def purge_request_id(purge_date: date, provider: str, account: str, target: str) -> str:
    """The same night and target always give the same id; another night gives another."""
    digest = hashlib.sha256(f"{provider}/{account}/{target}".encode()).hexdigest()[:16]
    return f"purge-{purge_date.isoformat()}-{digest}"


def purge_date_of(event: dict[str, Any], now: datetime) -> date:
    """The UTC date of the scheduler event's `time`, or of `now` when the event has none."""
    raw = event.get("time")
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw).astimezone(UTC).date()
        except ValueError:
            logger.warning("unreadable event time, using now", extra={"event_time": raw})
    return now.astimezone(UTC).date()


def load_plan(parameter_name: str, max_age: int) -> PurgePlan:
    try:
        value = parameters.get_parameter(parameter_name, transform="json", max_age=max_age)
    except TransformParameterError:
        raise InvalidPurgePlan(f"invalid purge plan: parameter {parameter_name} is not JSON") from None
    return parse_purge_plan(value)


@dataclass
class PurgeResult:
    enqueued: Counter[str] = field(default_factory=Counter)
    deferred_enqueued: int = 0
    # Marked as enqueued by an earlier run that could not delete them: removed, not sent again.
    deferred_already_enqueued: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "enqueued": dict(self.enqueued),
            "total": sum(self.enqueued.values()),
            "deferred_enqueued": self.deferred_enqueued,
            "deferred_already_enqueued": self.deferred_already_enqueued,
        }


@dataclass(frozen=True)
class Outgoing:
    provider: str
    body: str


class Enqueuer:
    """SendMessageBatch, 10 at a time; failed entries are retried, and raise if SQS keeps refusing them."""

    def __init__(self, client: "SQSClient", queue_url: str) -> None:
        self._client = client
        self._queue_url = queue_url

    def send(self, messages: Sequence[Outgoing]) -> None:
        for start in range(0, len(messages), SQS_BATCH):
            self._send_batch(messages[start : start + SQS_BATCH])

    def _send_batch(self, batch: Sequence[Outgoing]) -> None:
        pending = {str(i): message for i, message in enumerate(batch)}
        failures: list[BatchResultErrorEntryTypeDef] = []
        for _ in range(SEND_ATTEMPTS):
            response = self._client.send_message_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": i, "MessageBody": m.body} for i, m in pending.items()],
            )
            failures = list(response.get("Failed", []))
            pending = {f["Id"]: pending[f["Id"]] for f in failures}
            if not pending:
                return
        codes = sorted({f["Code"] for f in failures})
        raise PurgeError(f"SQS refused {len(pending)} cancel requests after {SEND_ATTEMPTS} attempts: {codes}")


class NightlyPurge:
    def __init__(self, settings: PurgeSettings, enqueuer: Enqueuer, deferred: DeferredStore | None) -> None:
        self._settings = settings
        self._enqueuer = enqueuer
        self._deferred = deferred

    def run(self, event: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
        started = now or datetime.now(UTC)
        metrics.add_metric(name="PurgeRuns", unit=MetricUnit.Count, value=1)
        purge_date = purge_date_of(event, started)
        # The whole plan is validated before anything is sent: never half a plan.
        plan = load_plan(self._settings.purge_plan_parameter, self._settings.plan_max_age_seconds)
        result = PurgeResult()
        planned = [self._plan_message(target, purge_date) for target in plan.targets]
        self._enqueuer.send(planned)
        result.enqueued.update(m.provider for m in planned)
        if self._deferred is not None:
            self._purge_deferred(self._deferred, purge_date, started, result)
        else:
            logger.warning("DEFERRED_TABLE is not set: only the purge plan is enqueued")
        self._report(result, purge_date)
        return result.as_dict()

    @staticmethod
    def _plan_message(target: RyngCancel | PlumCancel, purge_date: date) -> Outgoing:
        body = target.model_dump(mode="json", exclude_none=True, exclude={"when"})
        body["request_id"] = purge_request_id(purge_date, target.provider, target.account, target.target)
        return Outgoing(target.provider, json.dumps(body))

    def _purge_deferred(self, store: DeferredStore, purge_date: date, started: datetime, result: PurgeResult) -> None:
        """Send, then mark, then delete; a crash at any step leaves each request on the queue at least once.

        - Dies before the send: the item is untouched; the next run sends it.
        - Dies between the send and the mark: the item is unmarked, so the next run sends it again. A rerun of
          the same night (Lambda's and Scheduler's retries, within the hour) reuses the deferral's request_id,
          which the worker's 24 h idempotency dedupes. Only a run that never succeeds that night leaves it to
          the next night, which may call the provider a second time: the one double this order allows.
        - Dies between the mark and the delete, or the delete fails: the item is marked, so any later run
          deletes it without sending it again, after the worker's idempotency record has expired.
        """
        # A request deferred after the purge started waits for the next night.
        for page in store.pages(deferred_until=iso_utc(started)):
            for start in range(0, len(page), SQS_BATCH):
                chunk = page[start : start + SQS_BATCH]
                fresh = [item for item in chunk if item.enqueued_on is None]
                messages = [self._deferred_message(item) for item in fresh]
                self._enqueuer.send(messages)
                store.mark_enqueued(fresh, purge_date)
                store.delete([item.id for item in chunk])
                result.enqueued.update(m.provider for m in messages)
                result.deferred_enqueued += len(messages)
                result.deferred_already_enqueued += len(chunk) - len(fresh)

    @staticmethod
    def _deferred_message(item: DeferredItem) -> Outgoing:
        try:
            request = parse_cancel_request(item.body)
        except InvalidRequest as failure:
            # The worker validated it before storing it; if it no longer passes, the worker dead-letters it.
            logger.warning("deferred request no longer valid, enqueued as stored", extra={"reason": failure.reason})
            return Outgoing("unknown", item.body)
        body = json.loads(item.body)
        body["when"] = "now"
        # The deferral's own key (its request_id, or the original message id) stays the idempotency key, so a
        # rerun of the same night is deduped by the worker.
        body.setdefault("request_id", item.id)
        return Outgoing(request.provider, json.dumps(body))

    @staticmethod
    def _report(result: PurgeResult, purge_date: date) -> None:
        for provider, enqueued in sorted(result.enqueued.items()):
            count("PurgeEnqueued", enqueued, provider=provider)
        logger.info(
            "purge enqueued",
            extra={"purge_date": purge_date.isoformat(), **result.as_dict()},
        )


@functools.cache
def purge_for(settings: PurgeSettings) -> NightlyPurge:
    """One purge per container (and per distinct configuration): clients are built once."""
    enqueuer = Enqueuer(boto3.client("sqs"), settings.cancel_queue_url)
    deferred = DeferredStore(boto3.client("dynamodb"), settings.deferred_table) if settings.deferred_table else None
    return NightlyPurge(settings, enqueuer, deferred)
