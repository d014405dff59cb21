"""Reading a queue without consuming it, for operators (CLI, digest).

Apart from `callcancel.queues` because that module starts the worker's Powertools logger, which a
producer or an operator command must not do.
"""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

IN_FLIGHT = 8  # SQS calls at once: 10,000 messages are 1,000 receives and 1,000 visibility changes
HIDE_SECONDS = 60  # while a peek holds a message; 10,000 take seconds


def peek(
    client: "SQSClient", queue_url: str, limit: int = 100, on_progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """Up to `limit` messages with their String attributes flattened, left on the queue.

    Each receive hides what it returned, so the next one returns new messages; at the end every message
    is made visible again at once. Several receives run at once; `on_progress` gets the count read so far.
    """
    seen: dict[str, dict[str, Any]] = {}
    handles: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def receive() -> None:
        try:
            while not done.is_set():
                with lock:
                    wanted = min(10, limit - len(seen))
                messages = client.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=max(wanted, 1),
                    MessageAttributeNames=["All"],
                    AttributeNames=["All"],
                    VisibilityTimeout=HIDE_SECONDS,
                ).get("Messages", [])
                with lock:
                    handles.extend(message["ReceiptHandle"] for message in messages)
                    for message in messages:
                        if len(seen) < limit:
                            seen.setdefault(message["MessageId"], _flat(message))
                    if not messages or len(seen) >= limit:
                        done.set()
                    count = len(seen)
                if on_progress:
                    on_progress(count)
        finally:
            done.set()  # one receive's end (an empty answer, the limit, an error) ends the others

    try:
        _at_once(receive, min(IN_FLIGHT, -(-limit // 10)))
    finally:
        show_again(client, queue_url, handles)
    return list(seen.values())


def _flat(message: Any) -> dict[str, Any]:
    attributes = {
        # Producers' own attributes travel into the DLQ through the redrive policy: Binary ones too.
        k: v.get("StringValue", f"({v['DataType']})")
        for k, v in message.get("MessageAttributes", {}).items()
    }
    return {"message_id": message["MessageId"], "body": message["Body"], **attributes}


def _at_once(work: Callable[[], None], times: int) -> None:
    """Run `work` in `times` threads; the first error is raised once they all finished."""
    with ThreadPoolExecutor(max_workers=times, thread_name_prefix="peek") as pool:
        for future in [pool.submit(work) for _ in range(times)]:
            future.result()


def show_again(client: "SQSClient", queue_url: str, handles: list[str]) -> None:
    """Make received messages visible again at once, 10 per call, several calls at a time."""
    chunks = iter([handles[start : start + 10] for start in range(0, len(handles), 10)])
    lock = threading.Lock()

    def change() -> None:
        while True:
            with lock:
                chunk = next(chunks, None)
            if chunk is None:
                return
            client.change_message_visibility_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0} for i, handle in enumerate(chunk)
                ],
            )

    if handles:
        _at_once(change, min(IN_FLIGHT, -(-len(handles) // 10)))
