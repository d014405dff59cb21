"""NightlyPurge: the purge plan and the deferred cancels onto CancelQueue. Domain logic lives in callcancel.purge."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from callcancel.observability import logger, metrics, tracer
from callcancel.purge import purge_for
from callcancel.settings import PurgeSettings


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return purge_for(PurgeSettings.from_env()).run(event, context)
