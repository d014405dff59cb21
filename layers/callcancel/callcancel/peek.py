"""Reading a queue without consuming it, for operators (CLI, digest).

Apart from `callcancel.queues` because that module starts the worker's Powertools logger, which a
producer or an operator command must not do.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


def peek(client: "SQSClient", queue_url: str, limit: int = 100) -> list[dict[str, Any]]:
    """Up to `limit` messages with their String attributes flattened, left on the queue.

    Each receive hides what it returned, so the next one returns new messages; at the end every message
    is made visible again at once.
    """
    seen: dict[str, dict[str, Any]] = {}
    handles: list[str] = []
    while len(seen) < limit:
        messages = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, limit - len(seen)),
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
            VisibilityTimeout=60,
        ).get("Messages", [])
        if not messages:
            break
        for message in messages:
            handles.append(message["ReceiptHandle"])
            attributes = {
                # Producers' own attributes travel into the DLQ through the redrive policy: Binary ones too.
                k: v.get("StringValue", f"({v['DataType']})")
                for k, v in message.get("MessageAttributes", {}).items()
            }
            seen[message["MessageId"]] = {"message_id": message["MessageId"], "body": message["Body"], **attributes}
    show_again(client, queue_url, handles)
    return list(seen.values())


def show_again(client: "SQSClient", queue_url: str, handles: list[str]) -> None:
    """Make received messages visible again at once, 10 per call."""
    for start in range(0, len(handles), 10):
        client.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for i, handle in enumerate(handles[start : start + 10])
            ],
        )
