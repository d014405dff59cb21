"""The dead-letter queue, for operators: read it, and move or discard what a fix has dealt with.

Moving is never lossy: a message leaves the DLQ only after SQS accepted its copy on CancelQueue.

A run ends, and handles each dead letter at most once, even while the worker dead-letters the moved copies
again (with new message ids) or other letters keep arriving. It takes only the letters that were on the DLQ
when it began: those SQS stamped (SentTimestamp) before the start, by SQS's own clock, and not the ones
whose `source_message_id` is one of its own copies. It stops at an empty receive, or when receives stop
bringing letters from before the start that it has not seen. (The DLQ's depth is approximate: it only
sizes the progress bar.) What it does not take off the DLQ is hidden only while the run lasts, so that the
run ends, then made visible again at once.

A dead letter is counted once per `source_message_id`: a worker killed between its dead-letter send and
its ack leaves two copies. A redrive moves one and deletes the other; a discard deletes both.
"""

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from callcancel.dead_letter import UNCLASSIFIED, StoredDeadLetter, distinct
from callcancel.errors import FailureClass
from callcancel.peek import peek, show_again

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

CLASSES = (*(str(c) for c in FailureClass), UNCLASSIFIED)
# What redrive and discard do to the matching messages of one receive: the ids it could not handle, with why.
Action = Callable[[list["MessageTypeDef"]], dict[str, str]]
Progress = Callable[[int, int], None]  # (letters looked at so far, the DLQ's depth at the start)
HIDE_SECONDS = 120  # while a run holds a message; a run of 10,000 letters takes seconds
RECEIVERS = 8  # receive -> act loops at once: 10,000 letters are 1,000 receives
IDLE_RECEIVES = 5  # receives in a row with no letter from before the start: the rest is new arrivals
# Long polling: SQS then asks all its hosts, so an empty answer means an empty queue, not an unlucky sample.
RECEIVE_WAIT_SECONDS = 1


class Listing(NamedTuple):
    letters: list[StoredDeadLetter]  # each `source_message_id` once
    read: int  # messages read, copies included: `limit` of them means there may be more


def list_letters(
    sqs: "SQSClient", dlq_url: str, limit: int = 100, on_progress: Callable[[int], None] | None = None
) -> Listing:
    """Up to `limit` dead letters, left on the queue."""
    items = peek(sqs, dlq_url, limit, on_progress)
    return Listing(distinct([StoredDeadLetter.from_peeked(item) for item in items]), len(items))


def find_letter(sqs: "SQSClient", dlq_url: str, message_id: str, limit: int = 1000) -> dict[str, Any] | None:
    """The dead letter with this DLQ message id or this source (CancelQueue) message id, as `peek` gives it:
    the body and every attribute."""
    return next(
        (x for x in peek(sqs, dlq_url, limit) if message_id in (x["message_id"], x.get("source_message_id"))), None
    )


@dataclass
class Sweep:
    """What a redrive or discard did: matching letters, by class, and how many were handled or left."""

    dry_run: bool
    matched: Counter[str] = field(default_factory=Counter)
    done: int = 0
    kept: int = 0  # letters from before the start that did not match, left on the DLQ
    newer: int = 0  # letters that arrived after the start (the worker's own, again): skipped, left
    duplicates: int = 0  # second copies of a letter handled here: deleted with it (or would be)
    failed: dict[str, str] = field(default_factory=dict)  # message id -> why it stayed

    @property
    def left(self) -> int:
        return self.kept + self.newer + len(self.failed)


def _class_of(message: "MessageTypeDef") -> str:
    attribute: Any = message.get("MessageAttributes", {}).get("failure_class", {})
    return str(attribute.get("StringValue") or UNCLASSIFIED)


def _key_of(message: "MessageTypeDef") -> str:
    # As StoredDeadLetter.key: the CancelQueue message it came from. The queue's redrive policy keeps the id.
    attribute: Any = message.get("MessageAttributes", {}).get("source_message_id", {})
    return str(attribute.get("StringValue") or message["MessageId"])


def _check_class(failure_class: str | None) -> None:
    if failure_class is not None and failure_class not in CLASSES:
        raise ValueError(f"unknown failure class {failure_class!r}: one of {', '.join(CLASSES)}")


def _start(sqs: "SQSClient", dlq_url: str) -> tuple[int, int]:
    """The start by SQS's clock (epoch ms, rounded up to its whole second) and the DLQ's depth then."""
    answer = sqs.get_queue_attributes(
        QueueUrl=dlq_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    depth = sum(int(value) for value in answer["Attributes"].values())
    # SQS's Date header, not this machine's clock: SentTimestamp is SQS's. It has whole seconds, so a letter
    # dead-lettered again within the first second counts as older; the copy ids catch those.
    date = answer["ResponseMetadata"]["HTTPHeaders"]["date"]
    return int(parsedate_to_datetime(date).timestamp() + 1) * 1000, depth


class _Sweeper:
    """Several receive -> act loops over one DLQ, sharing what they have seen."""

    def __init__(
        self,
        sqs: "SQSClient",
        dlq_url: str,
        *,
        failure_class: str | None,
        act: Action | None,
        on_progress: Progress | None,
        copies: set[str] | None = None,
    ) -> None:
        self._sqs = sqs
        self._dlq_url = dlq_url
        self._failure_class = failure_class
        self._act = act
        self._on_progress = on_progress
        self.sweep = Sweep(dry_run=act is None)
        self._copies = copies or set()  # CancelQueue message ids of what this run moved there
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen: set[str] = set()  # DLQ message ids looked at
        self._handled: dict[str, bool] = {}  # letter key -> taken off the DLQ (or would be, in a dry run)
        self._held: dict[str, str] = {}  # message id -> latest receipt handle, of what is still on the DLQ
        self._second_copies: dict[str, str] = {}  # message id -> key, for copies of a letter already looked at
        self._looked_at = 0
        self._idle = 0

    def run(self) -> Sweep:
        self._cutoff, self._depth = _start(self._sqs, self._dlq_url)
        try:
            with ThreadPoolExecutor(max_workers=RECEIVERS, thread_name_prefix="dlq") as pool:
                loops = [pool.submit(self._loop) for _ in range(RECEIVERS)]
                try:
                    for loop in loops:
                        loop.result()
                except BaseException:  # Ctrl-C or an AWS error: the other loops finish what they hold, then stop
                    self._stop.set()
                    raise
        finally:
            self._finish()
        return self.sweep

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                messages = self._receive()
                if not messages:
                    break
                matching = self._sort(messages)
                if matching and self._act:
                    failed = self._act(matching)
                    with self._lock:
                        self._settle(matching, failed)
        finally:
            self._stop.set()

    def _receive(self) -> list["MessageTypeDef"]:
        return self._sqs.receive_message(
            QueueUrl=self._dlq_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=HIDE_SECONDS,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["SentTimestamp"],
            WaitTimeSeconds=RECEIVE_WAIT_SECONDS,
        ).get("Messages", [])

    def _sort(self, messages: list["MessageTypeDef"]) -> list["MessageTypeDef"]:
        """The letters to handle now; everything else is held until the end."""
        matching, older = [], 0
        with self._lock:
            for message in messages:
                message_id = message["MessageId"]
                self._held[message_id] = message["ReceiptHandle"]
                if message_id in self._seen:
                    continue
                self._seen.add(message_id)
                key = _key_of(message)
                sent = int(message.get("Attributes", {}).get("SentTimestamp", "0"))
                if sent >= self._cutoff or key in self._copies:
                    self.sweep.newer += 1
                    continue
                older += 1
                if key in self._handled:
                    self._second_copies[message_id] = key
                elif self._failure_class in (None, _class_of(message)):
                    self._handled[key] = self._act is None
                    self.sweep.matched[_class_of(message)] += 1
                    matching.append(message)
                else:
                    self._handled[key] = False
                    self.sweep.kept += 1
            self._looked_at += older
            self._idle = 0 if older else self._idle + 1
            if self._idle >= IDLE_RECEIVES:
                self._stop.set()
            looked_at = self._looked_at
        if self._on_progress:
            self._on_progress(looked_at, self._depth)
        return matching

    def _settle(self, messages: list["MessageTypeDef"], failed: dict[str, str]) -> None:
        self.sweep.failed |= failed
        for message in messages:
            if message["MessageId"] not in failed:
                del self._held[message["MessageId"]]
                self._handled[_key_of(message)] = True
                self.sweep.done += 1

    def _finish(self) -> None:
        """Delete second copies of what was taken off the DLQ; make everything else visible again at once."""
        gone = {
            message_id: self._held[message_id]
            for message_id, key in self._second_copies.items()
            if self._handled[key] and message_id in self._held
        }
        self.sweep.duplicates = len(gone)
        self.sweep.kept += len(self._second_copies) - len(gone)
        if gone and self._act:
            refused = _delete_handles(self._sqs, self._dlq_url, gone)
            self.sweep.failed |= refused
            self.sweep.duplicates -= len(refused)
            gone = {k: v for k, v in gone.items() if k not in refused}
        else:
            gone = {}
        show_again(self._sqs, self._dlq_url, [h for message_id, h in self._held.items() if message_id not in gone])


def _delete_handles(sqs: "SQSClient", dlq_url: str, handles: dict[str, str]) -> dict[str, str]:
    """Delete by receipt handle, 10 per call; the ids SQS refused, with why."""
    refused: dict[str, str] = {}
    items = list(handles.items())
    for start in range(0, len(items), 10):
        chunk = items[start : start + 10]
        answer = sqs.delete_message_batch(
            QueueUrl=dlq_url, Entries=[{"Id": str(i), "ReceiptHandle": h} for i, (_, h) in enumerate(chunk)]
        )
        refused |= {chunk[int(f["Id"])][0]: f"delete refused: {f['Code']}" for f in answer.get("Failed", [])}
    return refused


def _delete(sqs: "SQSClient", dlq_url: str, messages: list["MessageTypeDef"]) -> dict[str, str]:
    return _delete_handles(sqs, dlq_url, {m["MessageId"]: m["ReceiptHandle"] for m in messages})


def _attributes(message: "MessageTypeDef") -> dict[str, Any]:
    # As received, minus what SendMessage does not take: the failure attributes travel with the request.
    keep = ("DataType", "StringValue", "BinaryValue")
    return {
        name: {k: v for k, v in value.items() if k in keep}
        for name, value in message.get("MessageAttributes", {}).items()
    }


def _mover(sqs: "SQSClient", dlq_url: str, queue_url: str, copies: set[str]) -> Action:
    def move(messages: list["MessageTypeDef"]) -> dict[str, str]:
        answer = sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "MessageBody": m["Body"], "MessageAttributes": _attributes(m)}
                for i, m in enumerate(messages)
            ],
        )
        # The worker names the copy in what it dead-letters (source_message_id): that is how it is recognised.
        copies.update(entry["MessageId"] for entry in answer.get("Successful", []))
        refused = {messages[int(f["Id"])]["MessageId"]: f"send refused: {f['Code']}" for f in answer.get("Failed", [])}
        sent = [m for m in messages if m["MessageId"] not in refused]
        return refused | (_delete(sqs, dlq_url, sent) if sent else {})

    return move


def redrive(
    sqs: "SQSClient",
    dlq_url: str,
    queue_url: str,
    *,
    failure_class: str | None = None,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> Sweep:
    """Send dead letters (all, or one class) back to CancelQueue, with their bodies and attributes as they are.

    Each letter that was on the DLQ at the start moves at most once, whatever the worker does with the copy.
    """
    _check_class(failure_class)
    copies: set[str] = set()
    act = None if dry_run else _mover(sqs, dlq_url, queue_url, copies)
    return _Sweeper(sqs, dlq_url, failure_class=failure_class, act=act, on_progress=on_progress, copies=copies).run()


def discard(
    sqs: "SQSClient",
    dlq_url: str,
    *,
    failure_class: str | None,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> Sweep:
    """Delete dead letters (all, or one class) that must not be sent again."""
    _check_class(failure_class)
    act = None if dry_run else lambda ms: _delete(sqs, dlq_url, ms)
    return _Sweeper(sqs, dlq_url, failure_class=failure_class, act=act, on_progress=on_progress).run()
