"""Lambda's SQS event source with Lambda's failure modes: each invocation runs in a worker process that may be
killed with SIGKILL, the way Lambda ends an invocation that timed out or ran out of memory.

Each slot is one execution environment: a long-lived process that loads the handler once (the init phase)
and runs one batch at a time. A killed process is replaced by a fresh one (a cold start). Processes are
forked from a fork server that has already imported the heavy libraries, so a cold start costs tens of
milliseconds of CPU, not seconds.

The poller (one thread per slot) does what the event source mapping does: receive a batch, invoke, then
delete what the response says succeeded. A killed invocation deletes nothing; its messages come back after
the queue's visibility timeout, or sooner if the worker had already set their visibility.

Kills:
- "random": at a moment drawn uniformly from the start of the invocation to `random_window` seconds;
- "timeout": the invocation ran past the function's timeout;
- "before_ack": the handler returned, the process dies before the poller deletes anything;
- "window" (`kill_slot`, called by the fault proxy): when the worker sends the idempotency completion, that
  is after the provider confirmed a cancel and before it is recorded.
"""

import multiprocessing
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import boto3

from callcancel_local.lambda_runtime import LocalLambdaContext, load_handler
from callcancel_local.sqs_source import BatchResult, SqsEventSource
from callcancel_local.stack import DeployedFunction

# Imported once by the fork server, so that a replacement process starts warm. Not callcancel itself: its
# modules read the function's environment at import time, which each process sets first. The main module
# (or, run with -m, the soak) is imported there too; a child would otherwise import it again.
_PRELOAD = [
    "__main__",
    "callcancel_local.soak",
    "boto3",
    "botocore.session",
    "requests",
    "pydantic",
    "jmespath",
    "aws_lambda_powertools.logging",
    "aws_lambda_powertools.metrics",
    "aws_lambda_powertools.tracing",
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.idempotency",
    "aws_lambda_powertools.utilities.parameters",
    "aws_lambda_powertools.utilities.data_classes",
    "callcancel_local.crash_runner",
]


@dataclass(frozen=True)
class KillPlan:
    random_fraction: float = 0.06  # invocations killed at a random moment
    random_window: float = 1.5  # seconds from the invocation's start
    before_ack_fraction: float = 0.03  # invocations killed after the handler returned, before the ack


@dataclass(frozen=True)
class Kill:
    kind: str  # random | timeout | before_ack | window
    slot: int
    started: float  # time.monotonic() when the invocation started
    at: float  # when the SIGKILL was sent
    message_ids: tuple[str, ...]
    bodies: tuple[str, ...]


@dataclass
class _Slot:
    index: int
    process: Any = None  # multiprocessing.Process
    conn: Connection | None = None
    event: dict[str, Any] | None = None  # the batch in flight
    started: float = 0.0
    killed: str | None = None  # set by whoever kills it, so that the poller knows why it died
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class RunnerStats:
    invocations: int = 0
    cold_starts: int = 0
    records: int = 0
    acked: int = 0
    handler_errors: list[str] = field(default_factory=list)


def _child_main(
    conn: Connection, function: DeployedFunction, environment: dict[str, str], log_path: str, timeout: float
) -> None:
    """One execution environment: init (load the handler), then invocations until killed."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a TextIOWrapper
    os.environ.update(environment)
    handler = load_handler(function.code_dir, function.handler)
    while True:
        event = conn.recv()
        context = LocalLambdaContext(function_name=function.name, timeout_seconds=timeout)
        try:
            conn.send(("ok", handler(event, context)))
        except Exception as exc:  # the invocation failed: Lambda retries every record
            traceback.print_exc()
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class CrashRunner:
    """Runs `function` on its SQS queue in `len(endpoints)` killable processes, one AWS endpoint each."""

    def __init__(
        self,
        function: DeployedFunction,
        *,
        endpoints: list[str],
        log_dir: Path,
        timeout: float,
        plan: KillPlan = KillPlan(),
        seed: int | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        [mapping] = function.sqs_sources
        self._function = function
        self._mapping = mapping
        self._endpoints = endpoints
        self._log_dir = log_dir
        self._timeout = timeout
        self._plan = plan
        self._rng = random.Random(seed)  # noqa: S311  (fault injection, not cryptography)
        self._rng_lock = threading.Lock()
        self._on_batch = on_batch
        self._slots = [_Slot(i) for i in range(len(endpoints))]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._record_lock = threading.Lock()
        self.kills: list[Kill] = []
        self.stats = RunnerStats()
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_PRELOAD)

    @property
    def log_files(self) -> list[Path]:
        return sorted(self._log_dir.glob("worker-*.log"))

    def start(self) -> "CrashRunner":
        for slot in self._slots:
            thread = threading.Thread(target=self._poll, args=(slot,), name=f"esm-{slot.index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for slot in self._slots:
            self._end(slot)

    def busy(self) -> int:
        return sum(slot.event is not None for slot in self._slots)

    def kill_slot(self, index: int, kind: str = "window") -> bool:
        """SIGKILL the process of slot `index` if it is in an invocation. True if it was killed."""
        slot = self._slots[index]
        with slot.lock:
            if slot.process is None or slot.event is None or slot.killed:
                return False
            slot.killed = kind
            if slot.process.is_alive():  # polls first, so a process that already ended is never signalled
                slot.process.kill()  # SIGKILL
            self._record_kill(slot, kind)
            return True

    def _record_kill(self, slot: _Slot, kind: str) -> None:
        records = (slot.event or {}).get("Records", [])
        kill = Kill(
            kind,
            slot.index,
            slot.started,
            time.monotonic(),
            tuple(r["messageId"] for r in records),
            tuple(r["body"] for r in records),
        )
        with self._record_lock:
            self.kills.append(kill)

    def _draw(self) -> tuple[float | None, bool]:
        with self._rng_lock:
            r = self._rng.random()
            if r < self._plan.random_fraction:
                return self._rng.uniform(0, self._plan.random_window), False
            return None, r < self._plan.random_fraction + self._plan.before_ack_fraction

    def _spawn(self, slot: _Slot) -> None:
        parent, child = self._context.Pipe()
        environment = {**self._function.environment, "AWS_ENDPOINT_URL": self._endpoints[slot.index]}
        log_path = str(self._log_dir / f"worker-{slot.index}.log")
        process = self._context.Process(
            target=_child_main,
            args=(child, self._function, environment, log_path, self._timeout),
            name=f"worker-{slot.index}",
            daemon=True,
        )
        process.start()
        child.close()
        slot.process, slot.conn, slot.killed = process, parent, None
        with self._record_lock:
            self.stats.cold_starts += 1

    def _end(self, slot: _Slot) -> None:
        with slot.lock:
            process, conn = slot.process, slot.conn
            slot.process = slot.conn = None
            slot.event = None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join()
        if conn is not None:
            conn.close()

    def _poll(self, slot: _Slot) -> None:
        source = SqsEventSource(
            boto3.client("sqs"),
            self._mapping.queue_url,
            batch_size=self._mapping.batch_size,
            report_batch_item_failures=self._mapping.report_batch_item_failures,
        )
        while not self._stop.is_set():
            event = source.receive(wait_seconds=1)  # a long poll, as Lambda's poller does
            if event is None:
                continue
            if slot.process is None:
                self._spawn(slot)
            result = self._invoke(slot, event)
            if result is None:  # killed: nothing is deleted
                self._end(slot)
                continue
            settled = source.settle(event, *result)
            with self._record_lock:
                self.stats.acked += len(settled.deleted)
            if self._on_batch:
                self._on_batch(settled)

    def _invoke(self, slot: _Slot, event: dict[str, Any]) -> tuple[Any, BaseException | None] | None:
        """The handler's response (or its error), or None if the process died or was killed."""
        kill_at, kill_before_ack = self._draw()
        assert slot.conn is not None
        with slot.lock:
            slot.event, slot.started = event, time.monotonic()
        with self._record_lock:
            self.stats.invocations += 1
            self.stats.records += len(event["Records"])
        try:
            slot.conn.send(event)
            answer = self._wait(slot, kill_at)
        except (EOFError, OSError):  # killed from outside (kill_slot), or it crashed
            answer = None
        if answer is not None and kill_before_ack and self.kill_slot(slot.index, "before_ack"):
            answer = None
        with slot.lock:
            slot.event = None
        if answer is None:
            return None
        status, value = answer
        if status == "ok":
            return value, None
        with self._record_lock:
            self.stats.handler_errors.append(str(value))
        return None, RuntimeError(str(value))

    def _wait(self, slot: _Slot, kill_at: float | None) -> tuple[str, Any] | None:
        assert slot.conn is not None
        deadline = self._timeout + 0.5  # Lambda's timeout, and a little slack for the pipe
        if kill_at is not None and kill_at < deadline:
            if slot.conn.poll(kill_at):
                return tuple(slot.conn.recv())
            self.kill_slot(slot.index, "random")
            return None
        if slot.conn.poll(deadline):
            return tuple(slot.conn.recv())
        self.kill_slot(slot.index, "timeout")
        return None
