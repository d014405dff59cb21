"""The nightly purge: the purge plan and the deferred cancels, enqueued onto CancelQueue. It never calls a provider.

The worker carries every request out, so retries, idempotency, metrics and dead letters stay in one place.
Each request gets a deterministic `request_id` (purge date + target), so a retried or repeated purge of the
same night makes no second provider call: the worker's idempotency dedupes it.
"""

import functools
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import boto3
import botocore
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parameters import SSMProvider
from botocore.config import Config

from callcancel.deferred import DeferredItem, DeferredStore, iso_utc
from callcancel.errors import InvalidPurgePlan, InvalidRequest, PurgeError, PurgeIncomplete
from callcancel.models import (
    PlumCancel,
    PlumPurgeTarget,
    PurgePlan,
    RyngCancel,
    RyngPurgeTarget,
    parse_cancel_request,
    parse_purge_plan,
)
from callcancel.observability import count, logger, metrics
from callcancel.settings import PurgeSettings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import BatchResultErrorEntryTypeDef

SQS_BATCH = 10
SEND_ATTEMPTS = 3
# Requests per unit of work: 5 SendMessageBatch calls, then 2 BatchWriteItem marks and 2 deletes (10 and 25 a call).
CHUNK = 50
# A deferral older than this when a run starts may have been sent by an earlier run whose worker idempotency
# record (24 h) has expired since: its outcome record is read before it is sent (LeftoverCheck). An hour's margin.
LEFTOVER_AGE = timedelta(hours=23)


class Clock(Protocol):
    """What the purge reads of its Lambda context: the time it has left."""

    def get_remaining_time_in_millis(self) -> int: ...


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


def parse_plan_documents(documents: Mapping[str, str]) -> PurgePlan:
    """The plan from its parameters' texts (name -> JSON), in order; any bad one fails it all, named."""
    targets: list[RyngPurgeTarget | PlumPurgeTarget] = []
    for name, text in documents.items():
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidPurgePlan(f"invalid purge plan: parameter {name} is not JSON") from None
        try:
            targets += parse_purge_plan(value).targets
        except InvalidPurgePlan as invalid:
            raise InvalidPurgePlan(f"{invalid} (in parameter {name})") from None
    return PurgePlan(targets=targets)


class PlanSource:
    """The purge plan: the parameter PURGE_PLAN_PARAMETER, plus every parameter below it as a path.

    One parameter holds about 40 targets in 4 KB (standard) or 80 in 8 KB (advanced); a plan of a thousand
    targets is spread over `/{stack}/purge-plan/<any name>` parameters. Read with Powertools parameters, which
    pages GetParametersByPath and caches for `max_age` seconds.
    """

    def __init__(self, provider: SSMProvider, parameter_name: str, max_age: int) -> None:
        self._provider = provider
        self._name = parameter_name
        self._max_age = max_age

    def load(self) -> PurgePlan:
        documents = {self._name: str(self._provider.get(self._name, max_age=self._max_age))}
        below = self._provider.get_multiple(self._name, max_age=self._max_age, recursive=True)
        documents |= {f"{self._name}/{suffix}": str(below[suffix]) for suffix in sorted(below)}
        return parse_plan_documents(documents)


@dataclass
class PurgeResult:
    enqueued: Counter[str] = field(default_factory=Counter)
    deferred_enqueued: int = 0
    # Marked as enqueued by an earlier run that could not delete them: removed, not sent again.
    deferred_already_enqueued: int = 0
    # Left over from an earlier night, unmarked, but the worker has received them (their outcome records say so):
    # removed, not sent again.
    deferred_already_received: int = 0
    # Entries SQS refused after retries: left as they were (deferred ones stay in the table).
    refused: int = 0

    def add(self, other: "PurgeResult") -> None:
        self.enqueued.update(other.enqueued)
        self.deferred_enqueued += other.deferred_enqueued
        self.deferred_already_enqueued += other.deferred_already_enqueued
        self.deferred_already_received += other.deferred_already_received
        self.refused += other.refused

    def as_dict(self) -> dict[str, Any]:
        return {
            "enqueued": dict(self.enqueued),
            "total": sum(self.enqueued.values()),
            "deferred_enqueued": self.deferred_enqueued,
            "deferred_already_enqueued": self.deferred_already_enqueued,
            "deferred_already_received": self.deferred_already_received,
        }


class LeftoverCheck:
    """Which deferred requests the worker has already received, read from their outcome records (`OUTCOME_TABLE`).

    A record that says anything but `deferred` (cancelled, retrying, a dead-letter class) means the request was
    on CancelQueue before: sending it again, once the worker's 24 h idempotency record has expired, would make a
    second provider call (for Plum, one that cancels calls placed since).
    """

    BATCH = 100  # keys per BatchGetItem
    ROUNDS = 5  # reads of the keys DynamoDB left unprocessed, before the run fails

    def __init__(self, client: "DynamoDBClient", table: str) -> None:
        self._client = client
        self._table = table

    def received(self, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(keys), self.BATCH):
            wanted: Any = {
                self._table: {
                    "Keys": [{"id": {"S": key}} for key in keys[start : start + self.BATCH]],
                    "ProjectionExpression": "#id, #outcome",
                    "ExpressionAttributeNames": {"#id": "id", "#outcome": "outcome"},
                }
            }
            for round_ in range(self.ROUNDS):
                if round_:
                    time.sleep(0.05 * 2 ** (round_ - 1))  # DynamoDB left keys unread: it is throttling us
                answer = self._client.batch_get_item(RequestItems=wanted)
                for item in answer.get("Responses", {}).get(self._table, []):
                    if item.get("outcome", {}).get("S") not in (None, "deferred"):
                        found.add(item["id"]["S"])
                wanted = answer.get("UnprocessedKeys") or {}
                if not wanted:
                    break
            else:
                # Unread, they are not sent: the run fails, and its retry reads them again.
                raise PurgeError(f"outcome records of {len(wanted[self._table]['Keys'])} deferred requests unread")
        return found


@dataclass(frozen=True)
class Outgoing:
    provider: str
    body: str
    item: DeferredItem | None = None


def plan_message(target: RyngCancel | PlumCancel, purge_date: date) -> Outgoing:
    """The cancel request for a planned target: carried out now, under that night's request_id."""
    body = target.model_dump(mode="json", exclude_none=True, exclude={"when"})
    body["request_id"] = purge_request_id(purge_date, target.provider, target.account, target.target)
    return Outgoing(target.provider, json.dumps(body))


class Enqueuer:
    """SendMessageBatch, 10 at a time; refused entries are retried, then handed back."""

    def __init__(self, client: "SQSClient", queue_url: str) -> None:
        self._client = client
        self._queue_url = queue_url

    def send(self, messages: Sequence[Outgoing]) -> tuple[list[Outgoing], set[str]]:
        """The messages SQS accepted, and the error codes of those it kept refusing."""
        accepted: list[Outgoing] = []
        codes: set[str] = set()
        for start in range(0, len(messages), SQS_BATCH):
            batch = messages[start : start + SQS_BATCH]
            refused = self._send_batch(batch)
            accepted += [m for i, m in enumerate(batch) if str(i) not in refused]
            codes |= set(refused.values())
        return accepted, codes

    def _send_batch(self, batch: Sequence[Outgoing]) -> dict[str, str]:
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
                return {}
        return {f["Id"]: f["Code"] for f in failures}


class Pipeline:
    """Units of work on the purge's threads, at most `in_flight` at once: `submit` blocks while all are busy.

    After the first failure (an exception, or entries SQS refused), `failed` is set and the producer stops
    submitting; what is already in flight finishes.
    """

    def __init__(self, executor: ThreadPoolExecutor, in_flight: int) -> None:
        self._executor = executor
        self._slots = threading.Semaphore(in_flight)
        self._futures: list[Future[PurgeResult]] = []
        self.failed = threading.Event()

    def submit(self, work: Callable[[], PurgeResult]) -> None:
        self._slots.acquire()
        future = self._executor.submit(work)
        future.add_done_callback(self._done)
        self._futures.append(future)

    def _done(self, future: "Future[PurgeResult]") -> None:
        self._slots.release()
        if future.exception() is not None or future.result().refused:
            self.failed.set()

    def wait(self) -> tuple[PurgeResult, BaseException | None]:
        """Everything that was carried out, and the first failure, once every unit has finished."""
        total, first_error = PurgeResult(), None
        for future in self._futures:
            error = future.exception()
            if error is None:
                total.add(future.result())
            first_error = first_error or error
        return total, first_error


class NightlyPurge:
    """Enqueue the plan, then drain the deferred table, in chunks of CHUNK, pipelined, until done or out of time.

    A chunk of deferred requests is sent, then marked enqueued, then deleted. What a crash at each step leaves:

    - before the send: the items untouched; the next run sends them.
    - between the send and the mark: unmarked items, which the next run sends again. A rerun of the same night
      (the retries of Lambda and Scheduler come within the hour; so does a run that stopped for time) reuses
      each deferral's request_id, which the worker's 24 h idempotency dedupes. When no run succeeds that night,
      the next night finds them older than LEFTOVER_AGE and reads their outcome records first (`OUTCOME_TABLE`):
      those the worker has received are deleted, not sent again after their idempotency record has expired.
    - between the mark and the delete (or a failed delete): marked items, which any later run deletes without
      sending them again.

    Nothing is deleted before SQS has accepted it, and nothing is sent twice within a night in a way the worker
    would carry out twice. A run that is near its end (`stop_margin_seconds`) starts nothing new, lets what is in
    flight finish, and fails with `PurgeIncomplete`, so that Lambda's retry resumes where it stopped.
    """

    def __init__(
        self,
        settings: PurgeSettings,
        plan: PlanSource,
        enqueuer: Enqueuer,
        deferred: DeferredStore | None,
        executor: ThreadPoolExecutor,
        *,
        leftovers: LeftoverCheck | None = None,
    ) -> None:
        self._settings = settings
        self._plan = plan
        self._enqueuer = enqueuer
        self._deferred = deferred
        self._executor = executor
        self._leftovers = leftovers

    def run(self, event: dict[str, Any], context: Clock | None = None, now: datetime | None = None) -> dict[str, Any]:
        started = now or datetime.now(UTC)
        metrics.add_metric(name="PurgeRuns", unit=MetricUnit.Count, value=1)
        purge_date = purge_date_of(event, started)
        # The whole plan is validated before anything is sent: never half a plan.
        plan = self._plan.load()
        # A target named twice (in two parameters, say) is sent once.
        first: dict[str, RyngCancel | PlumCancel] = {}
        for t in plan.targets:
            first.setdefault(purge_request_id(purge_date, t.provider, t.account, t.target), t)
        planned = [plan_message(t, purge_date) for t in first.values()]
        pipeline = Pipeline(self._executor, self._settings.max_in_flight)
        should_stop = functools.partial(self._should_stop, context, pipeline)
        stopped = False
        try:
            for start in range(0, len(planned), CHUNK):
                if stopped := should_stop():
                    break
                pipeline.submit(functools.partial(self._send_planned, planned[start : start + CHUNK]))
            if self._deferred is None:
                logger.warning("DEFERRED_TABLE is not set: only the purge plan is enqueued")
            elif not stopped:
                stopped = self._drain_deferred(self._deferred, purge_date, started, pipeline, should_stop)
        finally:
            # Even when a scan fails: work left running would go on in the next invocation's thaw.
            result, error = pipeline.wait()
        self._report(result, purge_date, complete=not (stopped or error or result.refused))
        self._raise_if_unfinished(result, error, stopped)
        return result.as_dict()

    def _should_stop(self, context: Clock | None, pipeline: Pipeline) -> bool:
        """After a failure, or with less than the stop margin left: start nothing new."""
        if pipeline.failed.is_set():
            return True
        return context is not None and context.get_remaining_time_in_millis() < self._settings.stop_margin_ms

    def _drain_deferred(
        self,
        store: DeferredStore,
        purge_date: date,
        started: datetime,
        pipeline: Pipeline,
        should_stop: Callable[[], bool],
    ) -> bool:
        """Submit every deferred request in chunks; True if it stopped before the end of the table."""
        # A request deferred after the purge started waits for the next night.
        for page in store.pages(deferred_until=iso_utc(started)):
            for start in range(0, len(page), CHUNK):
                if should_stop():
                    return True
                chunk = page[start : start + CHUNK]
                leftover_before = iso_utc(started - LEFTOVER_AGE)
                pipeline.submit(functools.partial(self._drain_chunk, store, chunk, purge_date, leftover_before))
        return False

    def _send_planned(self, messages: Sequence[Outgoing]) -> PurgeResult:
        accepted, codes = self._enqueuer.send(messages)
        self._log_refused(len(messages) - len(accepted), codes)
        return PurgeResult(enqueued=Counter(m.provider for m in accepted), refused=len(messages) - len(accepted))

    def _drain_chunk(
        self, store: DeferredStore, chunk: Sequence[DeferredItem], purge_date: date, leftover_before: str
    ) -> PurgeResult:
        """Send, mark, delete: the order the class docstring reasons about."""
        unmarked = [item for item in chunk if item.enqueued_on is None]
        already = [item for item in chunk if item.enqueued_on is not None]
        leftovers = [item.id for item in unmarked if item.deferred_at < leftover_before]
        received = self._leftovers.received(leftovers) if self._leftovers and leftovers else set()
        fresh = [self._deferred_message(item) for item in unmarked if item.id not in received]
        accepted, codes = self._enqueuer.send(fresh)
        self._log_refused(len(fresh) - len(accepted), codes)
        sent = [m.item for m in accepted if m.item is not None]
        store.mark_enqueued(sent, purge_date)
        store.delete([item.id for item in [*sent, *already]] + sorted(received))
        return PurgeResult(
            enqueued=Counter(m.provider for m in accepted),
            deferred_enqueued=len(sent),
            deferred_already_enqueued=len(already),
            deferred_already_received=len(received),
            refused=len(fresh) - len(accepted),
        )

    @staticmethod
    def _log_refused(refused: int, codes: set[str]) -> None:
        if refused:
            logger.error("SQS refused cancel requests", extra={"refused": refused, "codes": sorted(codes)})

    @staticmethod
    def _raise_if_unfinished(result: PurgeResult, error: BaseException | None, stopped: bool) -> None:
        if error is not None and not isinstance(error, Exception):
            raise error  # an interpreter exit, not ours to wrap
        if error is not None:
            raise PurgeError(f"purge failed part-way, to be resumed by its retry: {error!r}") from error
        if result.refused:
            raise PurgeError(
                f"SQS refused {result.refused} cancel requests after {SEND_ATTEMPTS} attempts; they stay deferred"
            )
        if stopped:
            raise PurgeIncomplete(
                f"purge stopped for time after {sum(result.enqueued.values())} requests; its retry resumes it"
            )

    @staticmethod
    def _deferred_message(item: DeferredItem) -> Outgoing:
        try:
            request = parse_cancel_request(item.body)
        except InvalidRequest as failure:
            # The worker validated it before storing it; if it no longer passes, the worker dead-letters it.
            logger.warning("deferred request no longer valid, enqueued as stored", extra={"reason": failure.reason})
            return Outgoing("unknown", item.body, item)
        body = json.loads(item.body)
        body["when"] = "now"
        # The deferral's own key (its request_id, or the original message id) stays the idempotency key, so a
        # rerun of the same night is deduped by the worker.
        body.setdefault("request_id", item.id)
        return Outgoing(request.provider, json.dumps(body), item)

    @staticmethod
    def _report(result: PurgeResult, purge_date: date, *, complete: bool) -> None:
        for provider, enqueued in sorted(result.enqueued.items()):
            count("PurgeEnqueued", enqueued, provider=provider)
        logger.info(
            "purge enqueued" if complete else "purge stopped part-way",
            extra={"purge_date": purge_date.isoformat(), "complete": complete, **result.as_dict()},
        )


# Once calls overlap, the purge is bound by the CPU its AWS calls take, and a Lambda has a share of a vCPU. The
# requests are built by this code, so botocore need not validate them; and given a user agent, botocore does not
# rebuild its own on every call. (Together a tenth of the purge's CPU.)
PURGE_CLIENT_CONFIG = Config(parameter_validation=False, user_agent=f"callcancel-purge botocore/{botocore.__version__}")


@functools.cache
def purge_for(settings: PurgeSettings) -> NightlyPurge:
    """One purge per container (and per distinct configuration): clients are built once."""
    config = PURGE_CLIENT_CONFIG.merge(Config(max_pool_connections=settings.max_in_flight + 1))
    enqueuer = Enqueuer(boto3.client("sqs", config=config), settings.cancel_queue_url)
    deferred = (
        DeferredStore(boto3.client("dynamodb", config=config), settings.deferred_table)
        if settings.deferred_table
        else None
    )
    plan = PlanSource(
        SSMProvider(boto3_client=boto3.client("ssm")), settings.purge_plan_parameter, settings.plan_max_age_seconds
    )
    executor = ThreadPoolExecutor(max_workers=settings.max_in_flight, thread_name_prefix="purge")
    leftovers = (
        LeftoverCheck(boto3.client("dynamodb", config=config), settings.outcome_table)
        if settings.outcome_table and deferred
        else None
    )
    return NightlyPurge(settings, plan, enqueuer, deferred, executor, leftovers=leftovers)
