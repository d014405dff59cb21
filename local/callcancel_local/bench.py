"""`make bench`: batch concurrency, measured as a ratio against a sequential baseline in the same run.

A batch of 10 cancels against a provider that answers in 300 ms must take well under 2 x 300 ms. The
baseline is the same worker with MAX_IN_FLIGHT=1 (the sequential loop, about 10 x 300 ms). Each figure is
the median of several warm batches, through the real handler (idempotency on, as deployed), moto server
and the simulator on loopback.

`callcancel publish --csv` of 10,000 rows must take seconds: every row validated, then SendMessageBatch with
8 calls in flight, against the same sender with 1 call in flight (the baseline).

The nightly purge at 100,000 deferred requests: see bench_purge.
"""

import contextlib
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import boto3
from aws_lambda_powertools.utilities import parameters
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.compat import HTTPHeaders

from callcancel.producer import CSV_COLUMNS, IN_FLIGHT, BatchSender, read_csv_file
from callcancel_local.bench_purge import bench_purge
from callcancel_local.embedded_aws import EmbeddedAws, create_table_keyed_by_id
from callcancel_local.lambda_runtime import LocalLambdaContext, load_handler
from callcancel_local.simulator import ProviderSimulator
from callcancel_local.sqs_source import SqsEventSource

LATENCY = 0.3
BATCH = 10
ROUNDS = 5
CSV_ROWS = 10_000
SQS_ROUND_TRIP = 0.025  # a SendMessageBatch call within a region
REPO = Path(__file__).resolve().parents[2]


def _median_batch_seconds(
    source: SqsEventSource, simulator: ProviderSimulator, max_in_flight: int, *, idempotency: bool = True
) -> float:
    os.environ["MAX_IN_FLIGHT"] = str(max_in_flight)
    os.environ["IDEMPOTENCY_TABLE"] = "bench-idempotency" if idempotency else ""
    handler = load_handler(REPO / "functions" / "cancel_worker", "app.lambda_handler")
    sqs = boto3.client("sqs")
    timings = []
    for round_ in range(ROUNDS + 1):  # the first round warms the container: clients, pools, secret cache
        call_ids = [f"b{max_in_flight}{idempotency:d}-{round_}-{i}" for i in range(BATCH)]
        simulator.add_ryng_calls("bench", *call_ids)
        for call_id in call_ids:
            body = json.dumps({"provider": "ryng", "account": "bench", "call_id": call_id})
            sqs.send_message(QueueUrl=source.queue_url, MessageBody=body)
        event = source.receive()
        assert event is not None and len(event["Records"]) == BATCH
        with contextlib.redirect_stdout(io.StringIO()):  # the metrics' EMF lines
            started = time.perf_counter()
            result = source.invoke(handler, event, LocalLambdaContext(function_name="CancelWorker"))
            elapsed = time.perf_counter() - started
        assert result.failed == [], result.response
        if round_:
            timings.append(elapsed)
    return statistics.median(timings)


class _SqsRoundTrip:
    """Answers SendMessageBatch after a fixed round trip, without a server: what the sender's concurrency is
    measured against. moto cannot serve this: its SendMessageBatch cost grows with the queue's length
    (2,000 rows take 32 s), which would measure moto, not the sender."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.received = 0
        self._lock = threading.Lock()

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        entries = json.loads(cast(bytes, request.body))["Entries"]
        time.sleep(self.seconds)
        with self._lock:
            self.received += len(entries)
        successful = [
            {
                "Id": entry["Id"],
                "MessageId": str(uuid.uuid4()),
                "MD5OfMessageBody": hashlib.md5(entry["MessageBody"].encode(), usedforsecurity=False).hexdigest(),
            }
            for entry in entries
        ]
        raw = _RawBody(json.dumps({"Successful": successful}).encode())
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/x-amz-json-1.0"
        return AWSResponse(request.url, 200, headers, raw)


class _RawBody(io.BytesIO):
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


def _publish_csv_seconds(csv_path: Path, in_flight: int) -> tuple[float, int]:
    """`callcancel publish --csv`'s path: validate every row, then SendMessageBatch, `in_flight` calls at once."""
    sqs: Any = boto3.client("sqs")
    round_trip = _SqsRoundTrip(SQS_ROUND_TRIP)
    sqs.meta.events.register("before-send.sqs.SendMessageBatch", round_trip)
    started = time.perf_counter()
    bodies = read_csv_file(csv_path)
    report = BatchSender(sqs, "https://sqs.us-east-1.amazonaws.com/123456789012/bench", in_flight=in_flight).send(
        bodies
    )
    elapsed = time.perf_counter() - started
    assert not report.failed and round_trip.received == len(bodies), report.failed
    return elapsed, report.sent


def _csv_memory_per_row(csv_path: Path, rows: int) -> float:
    tracemalloc.start()
    read_csv_file(csv_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / rows


def bench_publish(tmp: Path) -> bool:
    csv_path = tmp / "cancels.csv"
    lines = [",".join(CSV_COLUMNS)] + [f"ryng,acme,r-{i},,,,,crm-{i}:cancel" for i in range(CSV_ROWS)]
    csv_path.write_text("\n".join(lines) + "\n")
    parallel, sent = _publish_csv_seconds(csv_path, in_flight=IN_FLIGHT)
    one_at_a_time, _ = _publish_csv_seconds(csv_path, in_flight=1)
    per_row = _csv_memory_per_row(csv_path, CSV_ROWS)
    print(
        f"\npublish --csv, {CSV_ROWS} rows validated, then SendMessageBatch answered after a"
        f" {SQS_ROUND_TRIP * 1000:.0f} ms round trip"
    )
    print(f"  {IN_FLIGHT} batches in flight: {parallel:6.1f} s ({sent / parallel:,.0f} rows/s)")
    print(f"  1 batch in flight:  {one_at_a_time:6.1f} s   (baseline)")
    print(f"  speed-up: {one_at_a_time / parallel:.1f}x; validation peak memory: {per_row:.0f} bytes per row")
    ok = sent == CSV_ROWS and parallel < 10 and one_at_a_time / parallel > 4 and per_row < 2048
    print(f"  target: under 10 s, > 4x the baseline, under 2 KB per row: {'met' if ok else 'MISSED'}")
    return ok


def main() -> int:
    with EmbeddedAws() as aws, ProviderSimulator() as simulator:
        os.environ.update(aws.environment())
        sqs = boto3.client("sqs")
        queue_url = sqs.create_queue(QueueName="bench-cancel")["QueueUrl"]
        os.environ.update(
            {
                "CANCEL_QUEUE_URL": queue_url,
                "DEAD_LETTER_QUEUE_URL": sqs.create_queue(QueueName="bench-dlq")["QueueUrl"],
                "RYNG_BASE_URL": simulator.ryng_base_url,
                "POWERTOOLS_LOG_LEVEL": "WARNING",
            }
        )
        create_table_keyed_by_id("bench-idempotency")
        boto3.client("secretsmanager").create_secret(
            Name="callcancel/ryng/bench", SecretString=json.dumps({"subdomain": "bench", "access_token": "t"})
        )
        simulator.add_ryng_account("bench", "t")
        simulator.set_latency("ryng", LATENCY)
        parameters.clear_caches()  # type: ignore[no-untyped-call]
        source = SqsEventSource(sqs, queue_url)

        concurrent = _median_batch_seconds(source, simulator, max_in_flight=10)
        sequential = _median_batch_seconds(source, simulator, max_in_flight=1)
        without_store = _median_batch_seconds(source, simulator, max_in_flight=10, idempotency=False)

        with tempfile.TemporaryDirectory() as tmp:
            published = bench_publish(Path(tmp))

    target = 2 * LATENCY
    print(f"batch of {BATCH}, provider latency {LATENCY * 1000:.0f} ms, median of {ROUNDS} warm batches")
    print(f"  concurrent (MAX_IN_FLIGHT=10): {concurrent * 1000:7.0f} ms")
    print(f"  sequential (MAX_IN_FLIGHT=1):  {sequential * 1000:7.0f} ms   (baseline)")
    # moto serves the 20 idempotency writes of a batch one after another; DynamoDB does not.
    print(f"  concurrent, idempotency off:   {without_store * 1000:7.0f} ms   (the provider calls alone)")
    print(f"  speed-up: {sequential / concurrent:.1f}x; concurrent / one round-trip: {concurrent / LATENCY:.2f}")
    ok = concurrent < target and sequential / concurrent > 4
    print(f"  target: under {target * 1000:.0f} ms and > 4x the baseline: {'met' if ok else 'MISSED'}")
    purged = bench_purge()
    return 0 if ok and published and purged else 1


if __name__ == "__main__":
    sys.exit(main())
