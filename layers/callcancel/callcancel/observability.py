"""Powertools logger, tracer and metrics, shared by the handlers and the package."""

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

# The template sets the Powertools variables; these defaults keep names right wherever else the code runs.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "callcancel"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "Callcancel"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)


def count(name: str, value: float = 1, **dimensions: str) -> None:
    """A count with its own dimensions, flushed at once (Metrics holds one set of dimensions per flush)."""
    with single_metric(name=name, unit=MetricUnit.Count, value=value, namespace=NAMESPACE) as metric:
        for dimension, dimension_value in dimensions.items():
            metric.add_dimension(name=dimension, value=dimension_value)


def count_outcome(provider: str, outcome: str) -> None:
    """One `Outcome` data point per record, by provider and outcome class (cancelled, auth, retry...)."""
    count("Outcome", provider=provider, outcome=outcome)


def count_records(records: int) -> None:
    metrics.add_metric(name="RecordsReceived", unit=MetricUnit.Count, value=records)
