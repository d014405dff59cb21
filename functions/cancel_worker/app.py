"""CancelWorker: SQS cancel requests carried out at the providers. Domain logic lives in callcancel.worker."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from callcancel.observability import logger, metrics, tracer
from callcancel.worker import worker_for

# isort: split
# After the worker: Powertools' batch utility builds pydantic models of every event source it supports (a
# tenth of a second, unused here) if pydantic is already imported when it loads, and settings import pydantic.
from callcancel.settings import Settings


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return worker_for(Settings.from_env()).process_batch(event, context)
