"""The sample events in events/ are real SQS event shapes whose bodies mean what their names say."""

import json

import pytest
from aws_lambda_powertools.utilities.data_classes import SQSEvent

from callcancel.errors import InvalidRequest
from callcancel.models import parse_cancel_request
from tests.support import EVENTS


@pytest.mark.parametrize(("name", "provider"), [("sqs_ryng_cancel.json", "ryng"), ("sqs_plum_cancel.json", "plum")])
def test_cancel_events_carry_valid_requests(name: str, provider: str) -> None:
    event = SQSEvent(json.loads((EVENTS / name).read_text()))
    [record] = list(event.records)
    assert record.attributes.approximate_receive_count == "1"
    assert parse_cancel_request(record.body).provider == provider


def test_the_invalid_event_is_refused() -> None:
    [record] = list(SQSEvent(json.loads((EVENTS / "sqs_invalid_body.json").read_text())).records)
    with pytest.raises(InvalidRequest, match="call_id"):
        parse_cancel_request(record.body)
