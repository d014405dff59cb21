"""`make bench`, the operator tools at scale: `publish --csv` of 1,000,000 rows, and the DLQ tools over 10,000 letters.

SQS is a stub inside the process (`SqsStub`): it answers each call after a fixed round trip (25 ms, as within a
region), from as many threads as call it, with the semantics the tools rely on (visibility, receipt handles,
SentTimestamp, the Date header). moto cannot serve this: its receive and send costs grow with the queue's length.

Figures, each against a baseline measured in the same run:
- `publish --csv`, in a child process through the CLI: peak RSS of 1,000,000 rows sent to a sink (the stub with
  no round trip) against the same process's RSS before it read the file; rows per second at a 25 ms round trip
  against one call in flight.
- `dlq list --limit 10000`, `dlq redrive --class auth` and the digest over 10,000 letters at a 25 ms round
  trip, against the floor of a plain loop: one SQS call per 10 letters, one at a time.
"""

import contextlib
import hashlib
import heapq
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any, cast

import boto3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.compat import HTTPHeaders

from callcancel.dead_letter import DeadLetter
from callcancel.digest import DigestSender
from callcancel.errors import AuthDenied, Exhausted, NotFound
from callcancel_local.figures import Figure
from callcancel_tools import cli
from callcancel_tools.producer import CSV_COLUMNS, IN_FLIGHT, BatchSender, CsvFile

ROUND_TRIP = 0.025
CSV_ROWS = 1_000_000
CSV_ROWS_TIMED = 50_000  # at a 25 ms round trip
CSV_ROWS_BASELINE = 2_000  # one call in flight: 25 ms per 10 rows
LETTERS = 10_000
RSS_TARGET_MIB = 150
REGION = "us-east-1"
ACCOUNT_URL = f"https://sqs.{REGION}.amazonaws.com/123456789012"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION}


@dataclass
class _Message:
    message_id: str
    body: str
    attributes: dict[str, Any]
    sent: int  # epoch ms
    handle: str = ""
    receives: int = 0


@dataclass
class _Queue:
    messages: dict[str, _Message] = field(default_factory=dict)
    visible: deque[str] = field(default_factory=deque)
    hidden: list[tuple[float, str, str]] = field(default_factory=list)  # (visible again at, id, handle)


class SqsStub:
    """SQS in memory, answering after `round_trip` seconds, concurrently: what the tools' concurrency meets."""

    def __init__(self, round_trip: float, *, sink: bool = False) -> None:
        self.round_trip = round_trip
        self.sink = sink  # count what is sent, keep none of it: the memory measured is the sender's
        self.sunk = 0
        self.calls = 0
        self._queues: dict[str, _Queue] = {}
        self._lock = threading.Lock()

    def client(self) -> Any:
        sqs = boto3.client(
            "sqs",
            region_name=REGION,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # noqa: S106
        )
        sqs.meta.events.register("before-send.sqs", cast(Any, self))
        return sqs

    def put(self, url: str, body: str, attributes: dict[str, Any] | None = None) -> str:
        """A message on the queue, as if sent a second ago."""
        with self._lock:
            queue = self._queues.setdefault(url, _Queue())
            message = _Message(str(uuid.uuid4()), body, attributes or {}, int(time.time() * 1000) - 1000)
            queue.messages[message.message_id] = message
            queue.visible.append(message.message_id)
            return message.message_id

    def depth(self, url: str) -> int:
        return len(self._queues.get(url, _Queue()).messages)

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        target = request.headers["X-Amz-Target"]
        action = (target.decode() if isinstance(target, bytes) else target).removeprefix("AmazonSQS.")
        params = json.loads(cast(bytes, request.body) or b"{}")
        if self.round_trip:
            time.sleep(self.round_trip)
        with self._lock:
            self.calls += 1
            answer = getattr(self, f"_{action}")(self._queues.setdefault(params["QueueUrl"], _Queue()), params)
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/x-amz-json-1.0"
        headers["Date"] = formatdate(usegmt=True)
        return AWSResponse(request.url, 200, headers, _RawBody(json.dumps(answer).encode()))

    def _SendMessageBatch(self, queue: _Queue, params: dict[str, Any]) -> dict[str, Any]:
        successful = []
        for entry in params["Entries"]:
            if self.sink:
                self.sunk += 1
                md5 = hashlib.md5(entry["MessageBody"].encode(), usedforsecurity=False).hexdigest()
                successful.append({"Id": entry["Id"], "MessageId": str(uuid.uuid4()), "MD5OfMessageBody": md5})
                continue
            message = _Message(str(uuid.uuid4()), entry["MessageBody"], entry.get("MessageAttributes", {}), _now_ms())
            queue.messages[message.message_id] = message
            queue.visible.append(message.message_id)
            md5 = hashlib.md5(message.body.encode(), usedforsecurity=False).hexdigest()
            successful.append({"Id": entry["Id"], "MessageId": message.message_id, "MD5OfMessageBody": md5})
        return {"Successful": successful}

    def _ReceiveMessage(self, queue: _Queue, params: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        while queue.hidden and queue.hidden[0][0] <= now:
            _, message_id, handle = heapq.heappop(queue.hidden)
            message = queue.messages.get(message_id)
            if message and message.handle == handle:
                queue.visible.append(message_id)
        taken: list[dict[str, Any]] = []
        while queue.visible and len(taken) < params.get("MaxNumberOfMessages", 1):
            message = queue.messages.get(queue.visible.popleft())
            if message is None:
                continue
            message.receives += 1
            message.handle = f"{message.message_id}#{message.receives}"
            heapq.heappush(
                queue.hidden, (now + params.get("VisibilityTimeout", 30), message.message_id, message.handle)
            )
            taken.append(
                {
                    "MessageId": message.message_id,
                    "ReceiptHandle": message.handle,
                    "Body": message.body,
                    "MD5OfBody": hashlib.md5(message.body.encode(), usedforsecurity=False).hexdigest(),
                    "Attributes": {"SentTimestamp": str(message.sent)},
                    "MessageAttributes": message.attributes,
                }
            )
        return {"Messages": taken} if taken else {}

    def _DeleteMessageBatch(self, queue: _Queue, params: dict[str, Any]) -> dict[str, Any]:
        for entry in params["Entries"]:
            message_id = entry["ReceiptHandle"].split("#")[0]
            message = queue.messages.get(message_id)
            if message and message.handle == entry["ReceiptHandle"]:
                del queue.messages[message_id]
        return {"Successful": [{"Id": entry["Id"]} for entry in params["Entries"]]}

    def _ChangeMessageVisibilityBatch(self, queue: _Queue, params: dict[str, Any]) -> dict[str, Any]:
        for entry in params["Entries"]:
            message = queue.messages.get(entry["ReceiptHandle"].split("#")[0])
            if message and message.handle == entry["ReceiptHandle"] and entry["VisibilityTimeout"] == 0:
                message.handle = ""
                queue.visible.append(message.message_id)
        return {"Successful": [{"Id": entry["Id"]} for entry in params["Entries"]]}

    def _GetQueueAttributes(self, queue: _Queue, params: dict[str, Any]) -> dict[str, Any]:
        hidden = sum(1 for m in queue.messages.values() if m.handle)
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(len(queue.messages) - hidden),
                "ApproximateNumberOfMessagesNotVisible": str(hidden),
            }
        }


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


class _RawBody(io.BytesIO):
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


# ---- publish --csv --------------------------------------------------------------------------------


def _write_csv(path: Path, rows: int) -> Path:
    with path.open("w") as out:
        out.write(",".join(CSV_COLUMNS) + "\n")
        out.writelines(f"ryng,acme,r-{i},,,,,crm-{i}:cancel\n" for i in range(rows))
    return path


def _rss_kib() -> int:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux carries that over fork and exec, so a child of
    `make bench`, whose process holds hundreds of MiB by then, would report its parent's peak as its own."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def publish_child(csv_path: str, round_trip: float) -> None:
    """In a child process: `callcancel publish --csv` through the CLI, SQS answered by the stub. Prints JSON."""
    stub = SqsStub(round_trip, sink=True)
    args = cli.parser().parse_args(["publish", "--csv", csv_path, "--queue-url", f"{ACCOUNT_URL}/bench"])
    command = cli.Cli(args)
    command.__dict__["sqs"] = stub.client()  # the CLI's cached client, answered by the stub
    floor = _rss_kib()
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = command.run()
    seconds = time.perf_counter() - started
    sent = stub.sunk
    print(json.dumps({"status": status, "sent": sent, "seconds": seconds, "floor_kib": floor, "peak_kib": _rss_kib()}))


def _run_publish_child(csv_path: Path, round_trip: float) -> dict[str, Any]:
    result = subprocess.run(  # noqa: S603  (this interpreter, this module)
        [sys.executable, "-m", "callcancel_local.bench_operators", "publish-child", str(csv_path), str(round_trip)],
        env={**os.environ, **FAKE_CREDENTIALS},
        capture_output=True,
        text=True,
        check=True,
    )
    return cast(dict[str, Any], json.loads(result.stdout.strip().splitlines()[-1]))


def _one_call_in_flight(csv_path: Path) -> float:
    """The baseline: the same rows, checked and sent with one SendMessageBatch at a time. Rows per second."""
    stub = SqsStub(ROUND_TRIP)
    started = time.perf_counter()
    csv_file = CsvFile(csv_path)
    csv_file.check()
    report = BatchSender(stub.client(), f"{ACCOUNT_URL}/bench", in_flight=1).send(csv_file.read())
    return report.sent / (time.perf_counter() - started)


def bench_publish(tmp: Path) -> tuple[list[Figure], bool]:
    big = _run_publish_child(_write_csv(tmp / "million.csv", CSV_ROWS), 0)
    timed = _run_publish_child(_write_csv(tmp / "timed.csv", CSV_ROWS_TIMED), ROUND_TRIP)
    baseline = _one_call_in_flight(_write_csv(tmp / "baseline.csv", CSV_ROWS_BASELINE))
    peak_mib, floor_mib = big["peak_kib"] / 1024, big["floor_kib"] / 1024
    rate = timed["sent"] / timed["seconds"]
    print("\npublish --csv through the CLI (a child process), checked in one pass and sent in a second")
    print(f"  {CSV_ROWS:,} rows to a sink: {big['seconds']:.1f} s ({big['sent'] / big['seconds']:,.0f} rows/s)")
    print(f"  peak RSS: {peak_mib:.0f} MiB; before it read the file: {floor_mib:.0f} MiB (baseline)")
    print(f"  {CSV_ROWS_TIMED:,} rows at a {ROUND_TRIP * 1000:.0f} ms round trip, {IN_FLIGHT} calls in flight:")
    print(f"    {rate:,.0f} rows/s")
    print(f"  1 call in flight: {baseline:,.0f} rows/s (baseline); speed-up {rate / baseline:.1f}x")
    ok = big["status"] == timed["status"] == 0 and big["sent"] == CSV_ROWS and timed["sent"] == CSV_ROWS_TIMED
    print(f"  every row sent, exit status 0: {'yes' if ok else 'NO'}")
    figures = [
        Figure("publish_csv_peak_rss", peak_mib, floor_mib, f"<={RSS_TARGET_MIB}", unit="MiB", target_on="value"),
        Figure(
            "publish_csv_rows_per_second",
            rate,
            baseline,
            ">=4",
            unit="rows/s",
            extra={"sqs_round_trip_ms": f"{ROUND_TRIP * 1000:.0f}"},
        ),
    ]
    return figures, ok


# ---- the DLQ tools --------------------------------------------------------------------------------


DLQ_URL = f"{ACCOUNT_URL}/bench-dlq"
QUEUE_URL = f"{ACCOUNT_URL}/bench-cancel"


def _fill_dlq(stub: SqsStub) -> None:
    """10,000 dead letters: half auth, and 1 in 100 left twice (a worker killed between its send and its ack)."""
    failures = [
        AuthDenied("ryng answered HTTP 403", http_status=403, provider_message="Unauthorized"),
        NotFound("ryng answered HTTP 500", http_status=500, provider_message="Call ID does not exist"),
        Exhausted("gave up after 5 attempts", http_status=503, provider_message="Service Unavailable"),
    ]
    for i in range(LETTERS):
        body = json.dumps({"provider": "ryng", "account": f"acct-{i % 7}", "call_id": f"c-{i}"})
        failure = failures[0] if i % 2 else failures[1 + i % 4 // 2]
        letter = DeadLetter(body, failure, attempts=5, source_message_id=f"src-{i}")
        stub.put(DLQ_URL, body, letter.message_attributes())
        if i % 100 == 1:
            stub.put(DLQ_URL, body, letter.message_attributes())


def _cli(stub: SqsStub, *argv: str) -> int:
    command = cli.Cli(cli.parser().parse_args([*argv, "--queue-url", QUEUE_URL, "--dlq-url", DLQ_URL]))
    command.__dict__["sqs"] = stub.client()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return command.run()


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def bench_dlq() -> tuple[list[Figure], bool]:
    stub = SqsStub(ROUND_TRIP)
    _fill_dlq(stub)
    letters = stub.depth(DLQ_URL)
    sqs = stub.client()
    # The floor of a plain loop: one SQS call per 10 letters, one call at a time.
    per_call = _timed(lambda: [sqs.get_queue_attributes(QueueUrl=DLQ_URL, AttributeNames=["All"]) for _ in range(20)])
    floor = per_call / 20 * letters / 10
    no_sns: Any = None  # the digest is built, not published
    digest = DigestSender(sqs, no_sns, dlq_url=DLQ_URL, topic_arn="-", stack_name="bench", region=REGION, limit=letters)

    listed = _timed(lambda: _cli(stub, "dlq", "list", "--limit", str(letters)))
    started = time.perf_counter()
    result = digest.digest()
    digested = time.perf_counter() - started
    redriven = _timed(lambda: _cli(stub, "dlq", "redrive", "--class", "auth"))
    moved = stub.depth(QUEUE_URL)

    print(f"\nthe DLQ tools over {letters:,} messages ({LETTERS:,} letters, 1 in 100 twice), 25 ms a call")
    print(f"  floor of a plain loop, one call per 10 letters, one at a time: {floor:5.1f} s (baseline)")
    print(f"  dlq list --limit {letters}: {listed:5.1f} s   ratio {listed / floor:.2f}")
    print(f"  the digest, every letter read: {digested:5.1f} s   ratio {digested / floor:.2f}")
    print(f"  dlq redrive --class auth:   {redriven:5.1f} s   ratio {redriven / floor:.2f} ({moved:,} moved)")
    ok = result.visible == LETTERS and moved == LETTERS // 2 and stub.depth(DLQ_URL) == LETTERS // 2
    print(f"  each letter counted once, each auth letter moved once (its copy deleted): {'yes' if ok else 'NO'}")
    # Target: under the floor of the plain loop.
    round_trip = {"sqs_round_trip_ms": f"{ROUND_TRIP * 1000:.0f}"}
    figures = [
        Figure(f"dlq_list_{LETTERS}_seconds", listed, floor, "<=1", extra=round_trip),
        Figure(f"dlq_digest_{LETTERS}_seconds", digested, floor, "<=1", extra=round_trip),
        Figure(f"dlq_redrive_{LETTERS}_seconds", redriven, floor, "<=1", extra=round_trip),
    ]
    return figures, ok


def main(tmp: Path) -> tuple[list[Figure], bool]:
    """Both sections' figures, and whether every row was sent and every letter counted and moved once."""
    publish_figures, published = bench_publish(tmp)
    dlq_figures, swept = bench_dlq()
    return [*publish_figures, *dlq_figures], published and swept


if __name__ == "__main__":
    if sys.argv[1:2] == ["publish-child"]:
        publish_child(sys.argv[2], float(sys.argv[3]))
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            figures, correct = main(Path(directory))
        for figure in figures:
            print(figure.line())
        sys.exit(0 if correct and not any(figure.failed for figure in figures) else 1)
