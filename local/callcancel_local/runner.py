"""Lambda's event sources for a deployed stack, without Docker.

For every SQS event source mapping of the stack, the runner receives from that queue, builds the event
Lambda would, and calls the function's handler in this process, with the function's environment as
deployed. It carries no cancel logic: everything a message goes through is the function's own code.
The handler's output is read the way CloudWatch would read it: EMF lines become metrics, the rest logs.
"""

import io
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from moto.events.models import EventPattern

from callcancel_local.lambda_runtime import LocalLambdaContext, load_handler
from callcancel_local.sqs_source import BatchResult, SqsEventSource
from callcancel_local.stack import DeployedFunction, DeployedStack


@dataclass
class FunctionOutput(io.TextIOBase):
    """What a function prints: EMF lines are summed into metrics, other lines kept as its log."""

    metrics: Counter[tuple[str, frozenset[tuple[str, str]]]] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)
    _partial: str = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._take(line)
        return len(text)

    def _take(self, line: str) -> None:
        document = _json_object(line)
        if document is None or "_aws" not in document:
            self.log.append(line)
            return
        for directive in document["_aws"].get("CloudWatchMetrics", []):
            dimensions = frozenset(
                (name, str(document[name])) for names in directive.get("Dimensions", []) for name in names
            )
            for metric in directive.get("Metrics", []):
                values = document.get(metric["Name"], [])
                self.metrics[metric["Name"], dimensions] += sum(values) if isinstance(values, list) else values

    def total(self, name: str, **dimensions: str) -> float:
        """The sum of a metric over every data point whose dimensions include these."""
        wanted = set(dimensions.items())
        return sum(value for (metric, dims), value in self.metrics.items() if metric == name and wanted <= dims)


def _json_object(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        document = json.loads(line)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


@contextmanager
def _as_deployed(function: DeployedFunction, output: io.TextIOBase) -> Iterator[None]:
    """The function's deployed environment and its own stdout, for the duration of a load or an invocation."""
    saved = {name: os.environ.get(name) for name in function.environment}
    os.environ.update(function.environment)
    stdout, sys.stdout = sys.stdout, output
    try:
        yield
    finally:
        sys.stdout = stdout
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class EventSourceRunner:
    def __init__(self, stack: DeployedStack, *, on_batch: Callable[[str, BatchResult], None] | None = None) -> None:
        self._stack = stack
        self._on_batch = on_batch
        self.output: dict[str, FunctionOutput] = {name: FunctionOutput() for name in stack.functions}
        self._handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}
        sqs = boto3.client("sqs")
        self._sources = [
            (
                name,
                SqsEventSource(
                    sqs,
                    mapping.queue_url,
                    batch_size=mapping.batch_size,
                    report_batch_item_failures=mapping.report_batch_item_failures,
                ),
            )
            for name, function in stack.functions.items()
            for mapping in function.sqs_sources
        ]
        self._sqs = sqs

    def handler(self, name: str) -> Callable[[dict[str, Any], Any], Any]:
        if name not in self._handlers:
            function = self._stack.functions[name]
            with _as_deployed(function, self.output[name]):
                self._handlers[name] = load_handler(function.code_dir, function.handler)
        return self._handlers[name]

    def invoke(self, name: str, event: dict[str, Any]) -> Any:
        """A direct invocation (a schedule firing, for instance); exceptions propagate as Lambda reports them."""
        function = self._stack.functions[name]
        handler = self.handler(name)
        with _as_deployed(function, self.output[name]):
            return handler(event, LocalLambdaContext(function_name=function.name, timeout_seconds=function.timeout))

    def put_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Deliver an EventBridge event as the default bus would: to each function of the stack that a rule
        whose pattern matches the event targets. Returns each invoked function's result, by logical id.

        The rules and targets are the deployed ones, read from moto. Moto would run a matched Lambda target in
        Docker, so the match uses moto's own pattern engine and the function runs here.
        """
        events = boto3.client("events")
        by_name = {function.name: name for name, function in self._stack.functions.items()}
        results = {}
        for rule in events.list_rules()["Rules"]:
            pattern = EventPattern.load(rule.get("EventPattern"))
            if not rule.get("EventPattern") or not pattern.matches_event(event):  # type: ignore[arg-type]  # a TypedDict
                continue
            for target in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]:
                function = by_name.get(target["Arn"].split(":")[6])
                if function:
                    results[function] = self.invoke(function, event)
        return results

    def fire_schedule(self, name: str, at: datetime | None = None) -> Any:
        """Fire a scheduled function now, with the payload its schedule's Input gives: the scheduled time."""
        scheduled = (at or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
        return self.invoke(name, {"time": scheduled})

    def poll_once(self) -> int:
        """One receive per SQS mapping, each batch handed to its function. Returns the records delivered."""
        delivered = 0
        for name, source in self._sources:
            event = source.receive()
            if event is None:
                continue
            function = self._stack.functions[name]
            handler = self.handler(name)
            context = LocalLambdaContext(function_name=function.name, timeout_seconds=function.timeout)
            with _as_deployed(function, self.output[name]):
                result = source.invoke(handler, event, context)
            delivered += len(event["Records"])
            if self._on_batch:
                self._on_batch(name, result)
        return delivered

    def pending(self) -> int:
        """Messages on the mapped queues, visible or in flight (waiting out a retry delay)."""
        total = 0
        for _, source in self._sources:
            attributes = self._sqs.get_queue_attributes(
                QueueUrl=source.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            total += sum(int(value) for value in attributes.values())
        return total

    def run_until_drained(self, *, timeout: float = 90, idle_sleep: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while self.poll_once() or self.pending():
            if time.monotonic() > deadline:
                raise TimeoutError(f"queues not drained after {timeout:.0f} s: {self.pending()} messages left")
            time.sleep(idle_sleep)
