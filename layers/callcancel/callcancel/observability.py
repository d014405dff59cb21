"""Powertools logger, tracer and metrics, shared by the handlers and the package."""

import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

# The template sets the Powertools variables; these defaults keep names right wherever else the code runs.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "callcancel"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "Callcancel"


class _Untraced(BaseProvider, BaseSegment):
    """The tracer's provider, and every segment it opens, when tracing is off: nothing is recorded.

    Powertools' default provider is the X-Ray SDK, imported even when tracing is off. That import (and the
    botocore machinery it pulls in) was a third of the worker's cold start; it is paid only where traces are sent.
    """

    @contextmanager
    def in_subsegment(self, name: str | None = None, **kwargs: Any) -> Iterator[BaseSegment]:
        yield self

    @asynccontextmanager
    async def in_subsegment_async(self, name: str | None = None, **kwargs: Any) -> AsyncIterator[BaseSegment]:
        yield self

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        pass

    def patch(self, modules: Sequence[str]) -> None:
        pass

    def patch_all(self) -> None:
        pass

    def close(self, end_time: int | None = None) -> None:
        pass

    def add_subsegment(self, subsegment: Any) -> None:
        pass

    def remove_subsegment(self, subsegment: Any) -> None:
        pass

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None:
        pass


def _tracer() -> Tracer:
    # Powertools' own rule: off with POWERTOOLS_TRACE_DISABLED, outside Lambda, and under sam local.
    if Tracer._is_tracer_disabled():
        return Tracer(service=SERVICE, disabled=True, provider=_Untraced())
    return Tracer(service=SERVICE)


logger = Logger(service=SERVICE)
tracer = _tracer()
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)


def count(name: str, value: float = 1, **dimensions: str) -> None:
    """A count with its own dimensions, flushed at once (Metrics holds one set of dimensions per flush)."""
    with single_metric(name=name, unit=MetricUnit.Count, value=value, namespace=NAMESPACE) as metric:
        for dimension, dimension_value in dimensions.items():
            metric.add_dimension(name=dimension, value=dimension_value)


class OutcomeCounts:
    """The `Outcome` metric of one batch, by provider and outcome class (cancelled, auth, retry...).

    Records add to it as they end; `flush` writes one data point per provider and outcome, so a batch of ten
    cancels is one log line, not ten (CloudWatch sums the same). Thread-safe: the records of a batch run at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, provider: str, outcome: str) -> None:
        with self._lock:
            self._counts[provider, outcome] += 1

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        for (provider, outcome), n in sorted(counts.items()):
            count("Outcome", n, provider=provider, outcome=outcome)


def count_records(records: int) -> None:
    metrics.add_metric(name="RecordsReceived", unit=MetricUnit.Count, value=records)
