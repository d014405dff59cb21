"""`make bench`: batch concurrency, measured as a ratio against a sequential baseline in the same run.

A batch of 10 cancels against a provider that answers in 300 ms must take well under 2 x 300 ms. The
baseline is the same worker with MAX_IN_FLIGHT=1 (the sequential loop, about 10 x 300 ms). Each figure is
the median of several warm batches, through the real handler (idempotency on, as deployed), moto server
and the simulator on loopback.

The operator tools at scale (`publish --csv` of 1,000,000 rows, the DLQ tools over 10,000 letters) are in
`bench_operators`.

The nightly purge at 100,000 deferred requests: see bench_purge.
"""

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import boto3
from aws_lambda_powertools.utilities import parameters

from callcancel_local import bench_operators
from callcancel_local.bench_purge import bench_purge
from callcancel_local.embedded_aws import EmbeddedAws, create_table_keyed_by_id
from callcancel_local.lambda_runtime import LocalLambdaContext, load_handler
from callcancel_local.simulator import ProviderSimulator
from callcancel_local.sqs_source import SqsEventSource

LATENCY = 0.3
BATCH = 10
ROUNDS = 5
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
    with tempfile.TemporaryDirectory() as tmp:
        operators = bench_operators.main(Path(tmp))  # publish --csv of 1,000,000 rows; the DLQ tools at 10,000
    return 0 if ok and purged and operators else 1


if __name__ == "__main__":
    sys.exit(main())
