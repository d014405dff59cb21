"""The cancel worker: an SQS batch in, each record cancelled, retried later, or dead-lettered with its reason."""

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field

from callcancel.backoff import backoff_seconds
from callcancel.canceller import Canceller
from callcancel.credentials import SecretStore
from callcancel.dead_letter import DeadLetter
from callcancel.deferred import DeferredItem, DeferredStore, iso_utc
from callcancel.errors import MAY_HAVE_CANCELLED, CancelFailure, ConfigError, InvalidRequest, NotFound, TransientFailure
from callcancel.idempotency import CancelRecords, KeyLocks, lock_expires_in
from callcancel.models import PlumCancel, RyngCancel, parse_cancel_request
from callcancel.observability import OutcomeCounts, count, count_records, logger
from callcancel.outcomes import Outcome, OutcomeRecorder
from callcancel.providers import PROVIDERS, provider_session
from callcancel.queues import WorkerQueues
from callcancel.settings import Settings

IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60
IDEMPOTENCY_KEY_PREFIX = "callcancel.cancel"


class RetryLater(Exception):
    """Reported to SQS as a batch item failure: the message comes back after its visibility timeout."""


class LockHeld(TransientFailure):
    """Another delivery holds the request's lock: wait until it expires, then take over or replay its result."""


@dataclass
class Attempt:
    """What one attempt learnt on its way through the idempotency layer, for the outcome after it."""

    after_earlier_attempt: bool = False  # it took over a lock or record an earlier attempt left
    confirmed: bool = False  # the provider confirmed the cancel


class CancelJob(BaseModel):
    """What the idempotency layer sees: the key, and the target it must not be reused for."""

    model_config = ConfigDict(frozen=True)
    key: str
    request: RyngCancel | PlumCancel = Field(discriminator="provider")


def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
    return {**response, "replayed": True}


class CancelWorker:
    def __init__(
        self,
        settings: Settings,
        canceller: Canceller,
        queues: WorkerQueues,
        idempotency_table: str | None,
        deferred: DeferredStore | None = None,
        *,
        outcomes: OutcomeRecorder | None = None,
    ):
        self._settings = settings
        self._deferred = deferred
        self._outcomes = outcomes or OutcomeRecorder.create(None, None)
        self._canceller = canceller
        self._queues = queues
        self._executor = ThreadPoolExecutor(max_workers=settings.max_in_flight, thread_name_prefix="cancel")
        # Every record of a failed batch is a batch item failure; the invocation itself did not fail.
        self._processor = AsyncBatchProcessor(EventType.SQS, raise_on_entire_batch_failure=False)
        self._idempotency: IdempotencyConfig | None = None
        self._records: CancelRecords | None = None
        self._keys = KeyLocks()
        self._counts = OutcomeCounts()  # this batch's, flushed when it ends
        self._cancel_once = self._cancel
        if idempotency_table:
            self._records = CancelRecords(idempotency_table)
            self._idempotency = IdempotencyConfig(
                event_key_jmespath="key",
                # The same request_id reused for another target is a producer bug, not a duplicate.
                payload_validation_jmespath="request.[provider, account, call_id, application_id, deployment_id]",
                raise_on_no_idempotency_key=True,
                expires_after_seconds=IDEMPOTENCY_TTL_SECONDS,
                response_hook=_mark_replayed,
            )
            # Configured here, once: Powertools would configure it on the first call, from several records'
            # threads at a time, and marks it configured before it has applied the settings.
            self._records.configure(self._idempotency, key_prefix=IDEMPOTENCY_KEY_PREFIX)
            self._cancel_once = idempotent_function(
                self._cancel,
                data_keyword_argument="job",
                persistence_store=self._records,
                config=self._idempotency,
                key_prefix=IDEMPOTENCY_KEY_PREFIX,
            )
        else:
            logger.warning("IDEMPOTENCY_TABLE is not set: idempotency is off, a redelivered cancel calls again")

    def process_batch(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        if self._idempotency:
            # Lets Powertools expire an in-progress lock when this invocation times out.
            self._idempotency.register_lambda_context(context)
        count_records(len(event.get("Records", [])))
        try:
            return dict(async_process_partial_response(event, self._handle_record, self._processor, context))
        finally:
            self._counts.flush()

    async def _handle_record(self, record: SQSRecord, lambda_context: LambdaContext) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.process_record, record, lambda_context)

    def process_record(self, record: SQSRecord, context: LambdaContext) -> str:
        """Return the outcome once the message may be deleted; raise `RetryLater` to keep it on the queue."""
        attempt = int(record.attributes.approximate_receive_count or 1)
        remaining_ms = context.get_remaining_time_in_millis()
        if remaining_ms < self._settings.attempt_budget_seconds * 1000:
            # Not started, so not lost: back on the queue at once for an invocation with time to spare.
            self._queues.delay(record, 0)
            raise RetryLater(f"not started: {remaining_ms} ms left in this invocation")
        try:
            request = parse_cancel_request(record.body)
        except InvalidRequest as failure:
            return self._dead_letter(record, failure, attempt, None)

        logger.thread_safe_append_keys(
            correlation_id=request.request_id or record.message_id,
            message_id=record.message_id,
            provider=request.provider,
            account=request.account,
            target=request.target,
            attempt=attempt,
        )
        try:
            return self._carry_out(record, request, attempt)
        finally:
            logger.thread_safe_clear_keys()

    def _carry_out(self, record: SQSRecord, request: RyngCancel | PlumCancel, attempt: int) -> str:
        key = request.request_id or record.message_id
        # Two records of one batch with one key: the second waits here for the first, its outcome recorded, then
        # replays it, instead of meeting its lock in the table and waiting for the lock to expire.
        with self._keys.hold(key):
            return self._carry_out_held(record, request, attempt, key)

    def _carry_out_held(self, record: SQSRecord, request: RyngCancel | PlumCancel, attempt: int, key: str) -> str:
        try:
            outcome = self._cancel_or_defer(request, key=key, body=record.body)
        except CancelFailure as failure:
            return self._dead_letter(record, failure, attempt, request)
        except TransientFailure as failure:
            # A lock wait may use one receive beyond MAX_ATTEMPTS: the queue's redrive allows MAX_ATTEMPTS + 2.
            if attempt >= self._settings.max_attempts + isinstance(failure, LockHeld):
                return self._dead_letter(record, failure.exhausted(attempt), attempt, request)
            delay = backoff_seconds(
                attempt,
                base=self._settings.retry_base_seconds,
                cap=self._settings.retry_max_seconds,
                retry_after=failure.retry_after,
            )
            self._queues.delay(record, delay)
            self._counts.add(request.provider, "retry")
            self._outcomes.record(Outcome.of(record, request, "retrying", failure))
            logger.info("will retry", extra={"reason": failure.reason, "delay_seconds": delay})
            raise RetryLater(failure.reason) from None
        self._counts.add(request.provider, outcome)
        logger.info(outcome)
        self._outcomes.record(Outcome.of(record, request, outcome))
        return outcome

    def _cancel_or_defer(self, request: RyngCancel | PlumCancel, key: str, body: str) -> str:
        """The outcome: cancelled, duplicate when an earlier delivery already cancelled it, or deferred."""
        if request.when == "nightly":
            return self._defer(request, key, body)
        attempt = Attempt()
        try:
            result = self._cancel_once(job=CancelJob(key=key, request=request), attempt=attempt)
        except Exception as exc:
            if attempt.confirmed:
                # The provider cancelled it; only our own record of that failed. Acked: a redelivery would
                # call again and be told "does not exist".
                logger.warning("cancelled, but the idempotency record was not completed", extra={"error": str(exc)})
                count("IdempotencyRecordNotSaved")
                return "cancelled"
            failure = _failure_of(exc, key)
            if attempt.after_earlier_attempt:
                # What an earlier attempt may have done stays known to every later one, and to the operator.
                if isinstance(failure, NotFound):
                    raise NotFound(
                        f"{failure.reason}; {MAY_HAVE_CANCELLED}",
                        http_status=failure.http_status,
                        provider_message=failure.provider_message,
                    ) from None
                if isinstance(failure, TransientFailure):
                    failure.ambiguous = True
            raise failure from None
        return "duplicate" if result.get("replayed") else "cancelled"

    def _defer(self, request: RyngCancel | PlumCancel, key: str, body: str) -> str:
        """Hold the request, as sent, for the nightly purge; no provider call now."""
        if self._deferred is None:
            raise ConfigError("when=nightly needs a deferred-cancel store (DEFERRED_TABLE), which is not configured")
        try:
            held = self._deferred.put(DeferredItem(id=key, body=body, deferred_at=iso_utc(datetime.now(UTC))))
        except (BotoCoreError, ClientError) as exc:
            raise TransientFailure(f"deferred-cancel store unavailable: {exc}") from None
        if held is None:
            return "deferred"
        if _target_of(held.body) == (request.provider, request.account, request.target):
            return "duplicate"
        raise InvalidRequest(f"request_id {key} was already used for a different target")

    def _cancel(self, *, job: CancelJob, attempt: Attempt) -> dict[str, Any]:
        if self._records is not None:
            attempt.after_earlier_attempt = self._records.took_over_earlier_attempt()
        self._canceller.cancel(job.request)
        attempt.confirmed = True
        return {"outcome": "cancelled"}

    def _dead_letter(
        self, record: SQSRecord, failure: CancelFailure, attempt: int, request: RyngCancel | PlumCancel | None
    ) -> str:
        self._queues.dead_letter(DeadLetter(record.body, failure, attempt, record.message_id))
        self._counts.add(request.provider if request else "unknown", failure.failure_class)
        logger.warning(
            "dead-lettered",
            extra={
                "failure_class": failure.failure_class,
                "failure_reason": failure.reason,
                "http_status": failure.http_status,
            },
        )
        self._outcomes.record(Outcome.of(record, request, str(failure.failure_class), failure))
        return str(failure.failure_class)


def _failure_of(exc: Exception, key: str) -> CancelFailure | TransientFailure:
    """The typed failure behind an exception from the idempotent call."""
    if isinstance(exc, CancelFailure | TransientFailure):
        return exc
    if isinstance(exc, IdempotencyValidationError):
        return InvalidRequest(f"request_id {key} was already used for a different target")
    if isinstance(exc, IdempotencyAlreadyInProgressError):
        # Wait until the lock expires (a second past it), then replay its result or take over a dead one.
        expires_in = lock_expires_in(exc)
        return LockHeld(
            f"request {key} is being carried out by another delivery",
            retry_after=None if expires_in is None else expires_in + 1,
        )
    if isinstance(exc, IdempotencyPersistenceLayerError):
        # Powertools could not delete or release the lock after our own failure: that failure, not the
        # store's, decides the outcome. The lock left behind expires with this invocation.
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, CancelFailure | TransientFailure):
                logger.warning("the idempotency lock was not cleared after a failure", extra={"error": str(exc)})
                return cause
            cause = cause.__cause__ or cause.__context__
        return TransientFailure(f"idempotency store unavailable: {exc}")
    # A bug or an unforeseen SDK error: retried, and dead-lettered as exhausted if it persists.
    logger.exception("unexpected error")
    return TransientFailure(f"unexpected error: {type(exc).__name__}")


def _target_of(body: str) -> tuple[str, str, str] | None:
    try:
        request = parse_cancel_request(body)
    except InvalidRequest:
        return None
    return request.provider, request.account, request.target


@functools.cache
def worker_for(settings: Settings) -> CancelWorker:
    """One worker per container (and per distinct configuration): clients, sessions and pools are built once."""
    session = provider_session(pool_size=settings.max_in_flight)
    timeout = (settings.provider_connect_timeout_seconds, settings.provider_timeout_seconds)
    base_urls = {"ryng": settings.ryng_base_url, "plum": settings.plum_base_url}
    clients = {name: client(session, base_urls[name], timeout) for name, client in PROVIDERS.items()}
    canceller = Canceller(clients, SecretStore(max_age=300), settings.secret_prefix)
    queues = WorkerQueues(boto3.client("sqs"), settings.dead_letter_queue_url, settings.cancel_queue_url)
    deferred = DeferredStore(boto3.client("dynamodb"), settings.deferred_table) if settings.deferred_table else None
    outcomes = OutcomeRecorder.create(
        settings.outcome_table, settings.event_bus_name, retention_days=settings.outcome_retention_days
    )
    return CancelWorker(settings, canceller, queues, settings.idempotency_table, deferred, outcomes=outcomes)
