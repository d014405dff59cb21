"""The dead-letter queue, for operators: read it, and move or discard what a fix has dealt with.

Moving is never lossy: a message leaves the DLQ only after SQS accepted its copy on CancelQueue. Within
one run a message is handled once, even if it comes back into view. The one window for a double is a
delete that fails after its send succeeded; the worker's idempotency then stops a second call for a
request with a `request_id`.
"""

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from callcancel.dead_letter import UNCLASSIFIED, StoredDeadLetter
from callcancel.errors import FailureClass
from callcancel.peek import peek, show_again

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

CLASSES = (*(str(c) for c in FailureClass), UNCLASSIFIED)
# What redrive and discard do to the matching messages of one receive: the ids it could not handle, with why.
Action = Callable[[list["MessageTypeDef"]], dict[str, str]]
HIDE_SECONDS = 300  # while a run holds a message: long enough for the slowest sweep of a full queue
MOVE_TASK_POLL_SECONDS = 2.0
# Long polling: SQS then asks all its hosts, so an empty answer means an empty queue, not an unlucky sample.
RECEIVE_WAIT_SECONDS = 1


def list_letters(sqs: "SQSClient", dlq_url: str, limit: int = 100) -> list[StoredDeadLetter]:
    """Up to `limit` dead letters, left on the queue."""
    return [StoredDeadLetter.from_peeked(item) for item in peek(sqs, dlq_url, limit)]


def find_letter(sqs: "SQSClient", dlq_url: str, message_id: str, limit: int = 1000) -> dict[str, Any] | None:
    """The dead letter with this DLQ message id or this source (CancelQueue) message id, as `peek` gives it:
    the body and every attribute."""
    return next(
        (x for x in peek(sqs, dlq_url, limit) if message_id in (x["message_id"], x.get("source_message_id"))), None
    )


@dataclass
class Sweep:
    """What a redrive or discard did: matching letters, by class, and how many were handled."""

    dry_run: bool
    matched: Counter[str] = field(default_factory=Counter)
    done: int = 0
    kept: int = 0  # letters that did not match, left on the DLQ
    failed: dict[str, str] = field(default_factory=dict)  # message id -> why it stayed
    move_task: str | None = None  # the StartMessageMoveTask handle, when SQS moved them itself


def _class_of(message: "MessageTypeDef") -> str:
    attribute: Any = message.get("MessageAttributes", {}).get("failure_class", {})
    return str(attribute.get("StringValue") or UNCLASSIFIED)


def _check_class(failure_class: str | None) -> None:
    if failure_class is not None and failure_class not in CLASSES:
        raise ValueError(f"unknown failure class {failure_class!r}: one of {', '.join(CLASSES)}")


def _receive(sqs: "SQSClient", dlq_url: str) -> list["MessageTypeDef"]:
    return sqs.receive_message(
        QueueUrl=dlq_url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=HIDE_SECONDS,
        MessageAttributeNames=["All"],
        WaitTimeSeconds=RECEIVE_WAIT_SECONDS,
    ).get("Messages", [])


def _sweep(sqs: "SQSClient", dlq_url: str, failure_class: str | None, act: Action | None) -> Sweep:
    """Receive every message once; hand the matching ones to `act` (None: a dry run).

    Whatever `act` did not take off the queue stays hidden until the end, so that the loop ends, and is
    then made visible again at once, even when the run stops on an error.
    """
    sweep = Sweep(dry_run=act is None)
    seen: set[str] = set()
    held: dict[str, str] = {}  # message id -> latest receipt handle, for what is still on the DLQ
    try:
        while messages := _receive(sqs, dlq_url):
            held |= {m["MessageId"]: m["ReceiptHandle"] for m in messages}
            fresh = [m for m in messages if m["MessageId"] not in seen]
            seen.update(m["MessageId"] for m in fresh)
            matching = [m for m in fresh if failure_class in (None, _class_of(m))]
            sweep.kept += len(fresh) - len(matching)
            sweep.matched.update(_class_of(m) for m in matching)
            if act and matching:
                for message_id in _act(sweep, act, matching):
                    del held[message_id]
    finally:
        show_again(sqs, dlq_url, list(held.values()))
    return sweep


def _act(sweep: Sweep, act: Action, messages: list["MessageTypeDef"]) -> list[str]:
    """The ids of the messages `act` took off the DLQ."""
    failed = act(messages)
    sweep.failed |= failed
    gone = [m["MessageId"] for m in messages if m["MessageId"] not in failed]
    sweep.done += len(gone)
    return gone


def _delete(sqs: "SQSClient", dlq_url: str, messages: list["MessageTypeDef"]) -> dict[str, str]:
    answer = sqs.delete_message_batch(
        QueueUrl=dlq_url,
        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
    )
    return {messages[int(f["Id"])]["MessageId"]: f"delete refused: {f['Code']}" for f in answer.get("Failed", [])}


def _attributes(message: "MessageTypeDef") -> dict[str, Any]:
    # As received, minus what SendMessage does not take: the failure attributes travel with the request.
    keep = ("DataType", "StringValue", "BinaryValue")
    return {
        name: {k: v for k, v in value.items() if k in keep}
        for name, value in message.get("MessageAttributes", {}).items()
    }


def _mover(sqs: "SQSClient", dlq_url: str, queue_url: str) -> Action:
    def move(messages: list["MessageTypeDef"]) -> dict[str, str]:
        answer = sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "MessageBody": m["Body"], "MessageAttributes": _attributes(m)}
                for i, m in enumerate(messages)
            ],
        )
        refused = {messages[int(f["Id"])]["MessageId"]: f"send refused: {f['Code']}" for f in answer.get("Failed", [])}
        sent = [m for m in messages if m["MessageId"] not in refused]
        return refused | (_delete(sqs, dlq_url, sent) if sent else {})

    return move


def _queue_arn(sqs: "SQSClient", url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


# Answers meaning "this service does not offer message move tasks" (or not for this queue), not "you may not".
_NOT_OFFERED = {
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
    "InvalidAction",
    "NotImplemented",
}
_TASK_ACTIVE = ("RUNNING", "CANCELLING")


def _not_offered(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code")
    # moto answers an action it does not implement with HTTP 500 and an HTML page; botocore then makes the
    # status the code. SQS itself always names its error.
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _NOT_OFFERED or code == str(status)


def _move_task(sqs: "SQSClient", task_sqs: "SQSClient", dlq_url: str, queue_url: str) -> Sweep | None:
    """Let SQS move everything (StartMessageMoveTask) and wait for it; None where the service does not offer it."""
    source, destination = _queue_arn(sqs, dlq_url), _queue_arn(sqs, queue_url)
    try:
        handle = task_sqs.start_message_move_task(SourceArn=source, DestinationArn=destination)["TaskHandle"]
    except ClientError as exc:
        if _not_offered(exc):
            return None  # moving message by message is always correct, only slower
        raise
    while True:
        results = sqs.list_message_move_tasks(SourceArn=source, MaxResults=1).get("Results", [])
        task = results[0] if results else {"Status": "RUNNING"}  # just started: not listed yet
        if task.get("Status") not in _TASK_ACTIVE:
            break
        time.sleep(MOVE_TASK_POLL_SECONDS)
    sweep = Sweep(dry_run=False, done=int(task.get("ApproximateNumberOfMessagesMoved", 0)), move_task=handle)
    if task.get("Status") != "COMPLETED":
        sweep.failed[handle] = f"move task {task.get('Status')}: {task.get('FailureReason', 'no reason given')}"
    return sweep


def redrive(
    sqs: "SQSClient",
    dlq_url: str,
    queue_url: str,
    *,
    failure_class: str | None = None,
    dry_run: bool = False,
    task_sqs: "SQSClient | None" = None,
) -> Sweep:
    """Send dead letters (all, or one class) back to CancelQueue, with their bodies and attributes as they are.

    All of them: SQS moves them itself (StartMessageMoveTask) where it can. `task_sqs` is the client that
    tries it (default `sqs`): give one without retries, since where the task is not offered (moto answers
    HTTP 500) botocore's retries only delay the fallback by seconds.
    """
    _check_class(failure_class)
    if failure_class is None and not dry_run and (sweep := _move_task(sqs, task_sqs or sqs, dlq_url, queue_url)):
        return sweep
    return _sweep(sqs, dlq_url, failure_class, None if dry_run else _mover(sqs, dlq_url, queue_url))


def discard(sqs: "SQSClient", dlq_url: str, *, failure_class: str | None, dry_run: bool = False) -> Sweep:
    """Delete dead letters (all, or one class) that must not be sent again."""
    _check_class(failure_class)
    return _sweep(sqs, dlq_url, failure_class, None if dry_run else lambda ms: _delete(sqs, dlq_url, ms))
