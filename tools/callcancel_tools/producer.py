"""Publishing cancel requests: one (`callcancel.publish`), or a whole CSV file, validated as the worker validates.

What is validated is the exact body that is sent: compact JSON of the given fields, absent ones left out.
"""

import csv
import functools
import itertools
import json
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, NamedTuple

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from callcancel.errors import InvalidRequest
from callcancel.models import parse_cancel_request
from callcancel_tools.locate import QueueLocator

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

CSV_COLUMNS = ("provider", "account", "call_id", "application_id", "deployment_id", "when", "reason", "request_id")
SQS_BATCH = 10
IN_FLIGHT = 8  # SendMessageBatch calls at once: 10,000 rows are 1,000 calls
RETRIES = 3  # for entries SQS refuses for its own reasons (not the sender's)
MAX_ERRORS_SHOWN = 20
MAX_FAILED_KEPT = 1000  # rows SQS refused, kept with the reason
MAX_ERRORS_KEPT = 1000  # a file of a million bad rows must not hold a million messages
# A valid row is under 5 KB (a reason of 500 characters, quoted); a longer line is refused unread.
MAX_LINE_BYTES = 64 * 1024


def encode(fields: Mapping[str, Any]) -> str:
    """The message body for these fields; raises `InvalidRequest` naming every bad field."""
    body = json.dumps({k: v for k, v in fields.items() if v is not None and v != ""}, separators=(",", ":"))
    parse_cancel_request(body)
    return body


# The way in through EventBridge (DESIGN.md): the stack's rule sends this detail-type's detail to CancelQueue.
CANCEL_REQUESTED = "Cancel Requested"
PRODUCER_SOURCE = "callcancel.publish"


@functools.cache
def _sqs(region: str | None) -> "SQSClient":
    # One client per process (and region): producers may call publish() once per request.
    return boto3.client("sqs", region_name=region)


@functools.cache
def _events(region: str | None) -> Any:
    return boto3.client("events", region_name=region)


class PublishRefused(Exception):
    """AWS answered, but did not take the request (an EventBridge entry it refused)."""


def publish(
    request: Mapping[str, Any] | None = None,
    /,
    *,
    queue_url: str | None = None,
    stack_name: str | None = None,
    sqs: "SQSClient | None" = None,
    via: Literal["sqs", "eventbridge"] = "sqs",
    event_bus: str | None = None,
    events: Any = None,
    **fields: Any,
) -> str:
    """Validate one cancel request and put it on CancelQueue; return the SQS message id.

    `callcancel.publish(provider="ryng", account="acme", call_id="8f3c2a")`, or a mapping. The queue is
    `queue_url`, else $CALLCANCEL_QUEUE_URL, else the CancelQueueUrl output of `stack_name` (or of
    samconfig.toml's stack): one DescribeStacks per call, so pass the URL when publishing often.
    Raises `InvalidRequest` before any AWS call when the request breaks a rule.

    `via="eventbridge"` puts it on the stack's bus instead (`event_bus`, else $CALLCANCEL_EVENT_BUS, else
    the EventBusName output) as a `Cancel Requested` event, and returns its `request_id`: the SQS message
    id is EventBridge's to know, so a request without one is given a fresh one, which `status` takes.
    """
    fields = {**(request or {}), **fields}
    if via == "eventbridge":
        return _put_cancel_requested(fields, event_bus, stack_name, events)
    body = encode(fields)
    region = sqs.meta.region_name if sqs else None
    if queue_url is None:
        locator = QueueLocator(stack_name=stack_name, region=region)
        queue_url, region = locator.cancel_queue(), locator.region
    return (sqs or _sqs(region)).send_message(QueueUrl=queue_url, MessageBody=body)["MessageId"]


def _put_cancel_requested(fields: dict[str, Any], event_bus: str | None, stack_name: str | None, events: Any) -> str:
    # EventBridge may deliver an event twice: a request_id makes the second delivery a duplicate.
    request_id = fields.get("request_id") or f"evt-{uuid.uuid4()}"
    body = encode({**fields, "request_id": request_id})
    region = events.meta.region_name if events else None
    if event_bus is None:
        locator = QueueLocator(stack_name=stack_name, region=region)
        event_bus, region = locator.event_bus(), locator.region
    entry = {"EventBusName": event_bus, "Source": PRODUCER_SOURCE, "DetailType": CANCEL_REQUESTED, "Detail": body}
    answer = (events or _events(region)).put_events(Entries=[entry])
    if answer.get("FailedEntryCount"):
        [refused] = answer["Entries"]
        raise PublishRefused(
            f"EventBridge refused the event: {refused.get('ErrorCode')}: {refused.get('ErrorMessage')}"
        )
    return str(request_id)


def capped(lines: Sequence[str], limit: int = MAX_ERRORS_SHOWN) -> list[str]:
    """At most `limit` lines, then how many more there were."""
    more = len(lines) - limit
    return [*lines[:limit], f"... and {more} more"] if more > 0 else list(lines)


class InvalidCsv(Exception):
    """Rows that are not valid cancel requests: nothing was sent.

    `errors` keeps the first MAX_ERRORS_KEPT; `count` says how many rows were bad in all.
    """

    def __init__(self, errors: list[str], count: int | None = None) -> None:
        self.errors = errors[:MAX_ERRORS_KEPT]
        self.count = len(errors) if count is None else count
        more = self.count - MAX_ERRORS_SHOWN
        super().__init__("\n".join([*self.errors[:MAX_ERRORS_SHOWN], *([f"... and {more} more"] if more > 0 else [])]))


class Row(NamedTuple):
    number: int  # as a spreadsheet numbers it: the header is row 1
    body: str


class _BadRow(Exception):
    pass


def _lines(data: BinaryIO) -> Iterator[bytes]:
    """Each line of the file without its ending. A line is a record: nothing joins two lines.

    A line longer than MAX_LINE_BYTES is never held whole: it comes out cut, one byte over the limit.
    """
    while line := data.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := data.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
        yield line.removesuffix(b"\n").removesuffix(b"\r")


def _cells(line: bytes) -> list[str]:
    """One record's cells, read strictly: a quote opened in a cell closes in it, and no cell holds a line break."""
    if len(line) > MAX_LINE_BYTES:
        raise _BadRow(f"longer than {MAX_LINE_BYTES} bytes")
    if b"\r" in line:
        raise _BadRow("a cell holds a line break")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRow("not UTF-8 text: save the file as CSV UTF-8") from None
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as exc:
        # The line is whole, so a quote left open means the cell ran into the next line, which is not allowed.
        hint = "a quoted cell must close on its own line, and a quote inside it is written twice"
        raise _BadRow(f"{exc}: {hint}") from None


def _columns(header: bytes | None) -> list[str]:
    try:
        cells = _cells(header) if header else []
    except _BadRow as exc:
        raise InvalidCsv([f"row 1: {exc}"]) from None
    if not any(cells):
        raise InvalidCsv([f"row 1: no header; the columns are {','.join(CSV_COLUMNS)}"])
    columns = [name.strip() for name in cells]
    unknown = [name or f"(column {i} has no name)" for i, name in enumerate(columns, 1) if name not in CSV_COLUMNS]
    if unknown:
        raise InvalidCsv([f"row 1: unknown column(s) {', '.join(unknown)}; the columns are {','.join(CSV_COLUMNS)}"])
    twice = sorted({name for name in columns if columns.count(name) > 1})
    if twice:
        raise InvalidCsv([f"row 1: column(s) {', '.join(twice)} given twice"])
    return columns


def _read(data: BinaryIO) -> Iterator[Row | str]:
    """Each row's message body, or what is wrong with it ("row N: ..."). Blank rows are skipped but counted."""
    lines = _lines(data)
    first = next(lines, None)
    columns = _columns(first.removeprefix(b"\xef\xbb\xbf") if first else None)  # spreadsheets write a BOM
    for number, line in enumerate(lines, start=2):
        try:
            cells = _cells(line)
            if not any(cells):
                continue
            if len(cells) > len(columns):
                raise _BadRow(f"{len(cells)} cells, but the header names {len(columns)} columns")
            yield Row(number, encode(dict(zip(columns, cells, strict=False))))
        except _BadRow as exc:
            yield f"row {number}: {exc}"
        except InvalidRequest as exc:
            yield f"row {number}: {str(exc).removeprefix('invalid cancel request: ')}"


def check_csv(data: BinaryIO) -> int:
    """How many rows the file holds, all valid; else `InvalidCsv` naming each bad row. Reads it as a stream."""
    rows, bad, errors = 0, 0, list[str]()
    for item in _read(data):
        if isinstance(item, Row):
            rows += 1
        else:
            bad += 1
            if len(errors) < MAX_ERRORS_KEPT:
                errors.append(item)
    if bad:
        raise InvalidCsv(errors, bad)
    return rows


def csv_rows(data: BinaryIO) -> Iterator[Row]:
    """The rows of a file `check_csv` passed, as a stream; `InvalidCsv` at the first bad row."""
    for item in _read(data):
        if not isinstance(item, Row):
            raise InvalidCsv([item])
        yield item


def read_csv(data: BinaryIO) -> list[Row]:
    """Every row's message body, for a small file; raises `InvalidCsv` listing each bad row."""
    check_csv(data)
    data.seek(0)
    return list(csv_rows(data))


class CsvFile:
    """A CSV file of cancel requests, read twice as a stream: first every row is checked, then sent.

    So memory does not grow with the file, and still nothing is sent unless every row is valid.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.changed: str | None = None  # set when the second read met what the first did not
        self._stamp: tuple[int, int, int] | None = None

    def check(self) -> int:
        """How many rows the file holds, every one valid; else `InvalidCsv`."""
        with self._open() as data:
            self._stamp = _stamp(data)
            self.rows = check_csv(data)
        return self.rows

    def read(self) -> Iterator[Row]:
        """The rows `check` passed, read again; stops (and says so in `changed`) if the file changed meanwhile."""
        with self._open() as data:
            if _stamp(data) != self._stamp:
                raise InvalidCsv([f"{self.path} changed after it was checked: check it again"])
            read = 0
            for item in _read(data):
                if not isinstance(item, Row):
                    self.changed = f"{self.path} changed while it was sent: {item}"
                    return
                read += 1
                yield item
            if read != self.rows:
                self.changed = f"{self.path} changed while it was sent: {read} rows, not {self.rows}"

    def _open(self) -> BinaryIO:
        try:
            return self.path.open("rb")
        except OSError as exc:
            raise InvalidCsv([f"cannot read {self.path}: {exc}"]) from None


def _stamp(data: BinaryIO) -> tuple[int, int, int]:
    status = os.fstat(data.fileno())
    return status.st_ino, status.st_size, status.st_mtime_ns


@dataclass
class SendReport:
    sent: int = 0
    failures: int = 0  # rows SQS refused
    failed: dict[int, str] = field(default_factory=dict)  # the first MAX_FAILED_KEPT of them -> why
    interrupted: bool = False
    not_sent_from: int | None = None  # interrupted: no row from this one on was tried

    def add(self, chunk: Sequence[Row], failed: dict[int, str]) -> None:
        self.sent += len(chunk) - len(failed)
        self.failures += len(failed)
        room = max(MAX_FAILED_KEPT - len(self.failed), 0)
        self.failed |= dict(itertools.islice(failed.items(), room))


class BatchSender:
    """SendMessageBatch, 10 rows per call and several calls in flight; refused entries retried a few times.

    Rows are read as they are sent: no more than a few calls' worth are held at a time.
    """

    def __init__(self, sqs: "SQSClient", queue_url: str, *, in_flight: int = IN_FLIGHT) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._in_flight = in_flight

    def send(self, rows: Iterable[Row], on_progress: Callable[[int], None] | None = None) -> SendReport:
        """Every row ends sent or refused; on Ctrl-C, the calls in flight finish, no other starts, and
        `not_sent_from` says where sending stopped."""
        report = SendReport()
        window: deque[tuple[Sequence[Row], Future[dict[int, str]]]] = deque()
        next_row: int | None = None  # the first row not handed to a call yet, when known
        with ThreadPoolExecutor(max_workers=self._in_flight, thread_name_prefix="publish") as pool:
            try:
                for chunk in itertools.batched(rows, SQS_BATCH, strict=False):
                    window.append((chunk, pool.submit(self._send_chunk, chunk)))
                    next_row = chunk[-1].number + 1
                    if len(window) >= 2 * self._in_flight:  # keep the pool busy, and memory flat
                        self._settle(report, window.popleft(), on_progress)
                next_row = None
                while window:
                    self._settle(report, window.popleft(), on_progress)
            except KeyboardInterrupt:
                pool.shutdown(cancel_futures=True)
                report.interrupted = True
                # The pool starts calls in order: the ones it never started are the last ones.
                not_started = [waiting[0].number for waiting, call in window if call.cancelled()]
                for waiting, call in window:
                    if not call.cancelled():
                        report.add(waiting, call.result())
                report.not_sent_from = not_started[0] if not_started else next_row
        return report

    @staticmethod
    def _settle(
        report: SendReport,
        call: tuple[Sequence[Row], "Future[dict[int, str]]"],
        on_progress: Callable[[int], None] | None,
    ) -> None:
        chunk, future = call
        report.add(chunk, future.result())
        if on_progress:
            on_progress(len(chunk))

    def _send_chunk(self, chunk: Sequence[Row]) -> dict[int, str]:
        """The rows SQS did not take, with its error code."""
        pending = {row.number: row.body for row in chunk}
        given_up: dict[int, str] = {}
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(0.1 * 2**attempt)
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {"Id": str(number), "MessageBody": body} for number, body in pending.items()
            ]
            try:
                answer = self._sqs.send_message_batch(QueueUrl=self._queue_url, Entries=entries)
            except ClientError as exc:
                # botocore already retried the call; sending again now could double what SQS did accept.
                return given_up | dict.fromkeys(pending, exc.response.get("Error", {}).get("Code", "ClientError"))
            except BotoCoreError as exc:
                return given_up | dict.fromkeys(pending, type(exc).__name__)
            refused = {int(f["Id"]): f for f in answer.get("Failed", [])}
            # The sender's fault (too big, bad characters) will not pass on a second try either.
            given_up |= {number: f["Code"] for number, f in refused.items() if f["SenderFault"]}
            pending = {number: pending[number] for number, f in refused.items() if not f["SenderFault"]}
            if not pending:
                return given_up
        return given_up | {number: refused[number]["Code"] for number in pending}


def publish_rows(
    rows: Iterable[Row],
    queue_url: str,
    *,
    sqs: "SQSClient | None" = None,
    on_progress: Callable[[int], None] | None = None,
) -> SendReport:
    """Send already validated rows (from `CsvFile.read`) to the queue."""
    return BatchSender(sqs or _sqs(None), queue_url).send(rows, on_progress)
