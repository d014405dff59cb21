"""DlqDigest: on the DLQ alarm going to ALARM, a digest of the dead letters to AlertTopic. Logic: callcancel.digest."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from callcancel.digest import digest_for
from callcancel.observability import logger, tracer
from callcancel.settings import DigestSettings


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return digest_for(DigestSettings.from_env()).send(event)
