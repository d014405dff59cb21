"""CancelWorker: SQS cancel requests carried out at the providers. Domain logic lives in callcancel.worker."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from callcancel.observability import logger, metrics, tracer
from callcancel.settings import Settings
from callcancel.worker import worker_for


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return worker_for(Settings.from_env()).process_batch(event, context)
