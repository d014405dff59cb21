"""Redrive of the whole DLQ through SQS's own message move task, and the fallback where it is not offered (Stubber)."""

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from callcancel import dlq

DLQ_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/dead-letters"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/cancel-requests"
DLQ_ARN = "arn:aws:sqs:us-east-1:123456789012:dead-letters"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:cancel-requests"


def client() -> Any:
    return boto3.client("sqs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


@pytest.fixture
def stubber(monkeypatch: pytest.MonkeyPatch) -> Stubber:
    """The SQS client of a redrive of all: it first reads both queues' ARNs."""
    monkeypatch.setattr(dlq, "MOVE_TASK_POLL_SECONDS", 0)
    stubber = Stubber(client())
    for url, arn in ((DLQ_URL, DLQ_ARN), (QUEUE_URL, QUEUE_ARN)):
        stubber.add_response(
            "get_queue_attributes", {"Attributes": {"QueueArn": arn}}, {"QueueUrl": url, "AttributeNames": ["QueueArn"]}
        )
    return stubber


def redrive(stubber: Stubber, **kwargs: Any) -> dlq.Sweep:
    with stubber:
        sweep = dlq.redrive(stubber.client, DLQ_URL, QUEUE_URL, **kwargs)
        stubber.assert_no_pending_responses()
    return sweep


def test_redrive_of_all_lets_sqs_move_them_and_waits_for_the_task(stubber: Stubber) -> None:
    stubber.add_response(
        "start_message_move_task", {"TaskHandle": "task-1"}, {"SourceArn": DLQ_ARN, "DestinationArn": QUEUE_ARN}
    )
    for answer in (
        {"Results": []},  # just started: not listed yet
        {"Results": [{"Status": "RUNNING", "ApproximateNumberOfMessagesMoved": 3}]},
        {"Results": [{"Status": "COMPLETED", "ApproximateNumberOfMessagesMoved": 7}]},
    ):
        stubber.add_response("list_message_move_tasks", answer, {"SourceArn": DLQ_ARN, "MaxResults": 1})

    sweep = redrive(stubber)

    assert (sweep.move_task, sweep.done, sweep.failed) == ("task-1", 7, {})


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("500", 500),  # moto: HTTP 500 with an HTML page, so botocore makes the status the code
        ("AWS.SimpleQueueService.UnsupportedOperation", 400),
        ("UnsupportedOperation", 400),
    ],
)
def test_where_the_task_is_not_offered_redrive_moves_message_by_message(
    stubber: Stubber, code: str, status: int
) -> None:
    stubber.add_client_error("start_message_move_task", code, "not here", http_status_code=status)
    stubber.add_response("receive_message", {"Messages": []})  # the message-by-message sweep: an empty DLQ

    sweep = redrive(stubber)

    assert (sweep.move_task, sweep.done, sweep.failed) == (None, 0, {})


def test_any_other_refusal_of_the_task_is_reported(stubber: Stubber) -> None:
    stubber.add_client_error("start_message_move_task", "AccessDenied", "not authorized", http_status_code=403)

    with pytest.raises(ClientError, match="AccessDenied"):
        redrive(stubber)


def test_a_failed_move_task_is_reported(stubber: Stubber) -> None:
    stubber.add_response("start_message_move_task", {"TaskHandle": "task-2"})
    stubber.add_response(
        "list_message_move_tasks",
        {"Results": [{"Status": "FAILED", "ApproximateNumberOfMessagesMoved": 2, "FailureReason": "AccessDenied"}]},
    )

    sweep = redrive(stubber)

    assert (sweep.done, sweep.failed) == (2, {"task-2": "move task FAILED: AccessDenied"})


def test_the_task_is_tried_with_the_client_given_for_it(stubber: Stubber) -> None:
    once = client()
    with Stubber(once) as task_stubber:
        task_stubber.add_client_error("start_message_move_task", "500", http_status_code=500)
        stubber.add_response("receive_message", {"Messages": []})

        sweep = redrive(stubber, task_sqs=once)
        task_stubber.assert_no_pending_responses()

    assert sweep.move_task is None


def test_a_class_filter_or_a_dry_run_never_starts_a_task() -> None:
    sqs = client()
    with Stubber(sqs) as only_receives:
        only_receives.add_response("receive_message", {"Messages": []})
        only_receives.add_response("receive_message", {"Messages": []})

        assert dlq.redrive(sqs, DLQ_URL, QUEUE_URL, failure_class="auth").move_task is None
        assert dlq.redrive(sqs, DLQ_URL, QUEUE_URL, dry_run=True).dry_run
        only_receives.assert_no_pending_responses()


def test_an_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown failure class 'notfound'"):
        dlq.discard(None, DLQ_URL, failure_class="notfound")  # type: ignore[arg-type]
