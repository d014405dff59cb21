"""`make bench`, the nightly purge at scale: 100,000 deferred requests and a plan of 1,000 targets.

AWS is modelled by `FakeAws`: every SQS, DynamoDB and SSM call is answered after a fixed round trip (20 ms, a
call within a region), in the calling thread, so calls in flight overlap as they would against AWS. moto cannot
serve this: its SendMessageBatch slows down with the queue's depth and it serves one request at a time, which
would measure moto, not the purge. The purge runs as deployed (16 units of work in flight); the baseline is the
same purge with one unit in flight, on fewer requests (its rate does not depend on their number).
"""

import hashlib
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import boto3
from aws_lambda_powertools.utilities.parameters import SSMProvider
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.compat import HTTPHeaders
from botocore.config import Config

from callcancel.deferred import DeferredStore, iso_utc
from callcancel.purge import PURGE_CLIENT_CONFIG, Enqueuer, NightlyPurge, PlanSource
from callcancel.settings import PurgeSettings
from callcancel_local.figures import Figure
from callcancel_local.lambda_runtime import LocalLambdaContext

ROUND_TRIP = 0.020
DEFERRED = 100_000
BASELINE_DEFERRED = 4_000
PLAN_TARGETS = 1_000
PER_PARAMETER = 40  # targets in one standard (4 KB) parameter
TARGET_PER_SECOND = 2_000
TIMEOUT_SECONDS = 300  # NightlyPurge's Timeout in template.yaml
PLAN = "/bench/purge-plan"
TABLE = "bench-deferred"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/bench-cancel"
LONG_AGO = "2026-01-01T00:00:00.000000Z"


class _RawBody(io.BytesIO):
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


class FakeAws:
    """Just enough of SQS, DynamoDB and SSM for the purge, over botocore's `before-send`: no server, no sockets.

    The deferred table keeps its scan order (insertion order) and honours Limit, ExclusiveStartKey and the
    purge's `deferred_at <= :until` filter; BatchWriteItem applies puts and deletes; SendMessageBatch counts.
    """

    def __init__(self, round_trip: float) -> None:
        self.round_trip = round_trip
        self.calls = 0
        self.cpu_seconds = 0.0
        self.sent: list[str] = []
        self._order: list[str] = []
        self._position: dict[str, int] = {}
        self._items: dict[str, tuple[str, str, str | None]] = {}
        self._parameters: dict[str, str] = {}
        self._lock = threading.Lock()

    def defer(self, count: int) -> None:
        for n in range(count):
            item_id = f"r-{n}"
            body = json.dumps({"provider": "ryng", "account": "acme", "call_id": f"c-{n}", "when": "nightly"})
            self._position[item_id] = len(self._order)
            self._order.append(item_id)
            self._items[item_id] = (body, LONG_AGO, None)

    def put_parameter(self, name: str, value: str) -> None:
        self._parameters[name] = value

    def deferred_left(self) -> int:
        return len(self._items)

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-send", self)
        return client

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        time.sleep(self.round_trip)
        # The CPU this fake spends is AWS's work, not the purge's: counted apart.
        cpu_started = time.thread_time()
        operation = cast(bytes, request.headers["X-Amz-Target"]).decode().rsplit(".", 1)[1]
        params = json.loads(cast(bytes, request.body))
        with self._lock:
            self.calls += 1
            answer = getattr(self, f"_{operation}")(params)
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/x-amz-json-1.0"
        response = AWSResponse(request.url, 200, headers, _RawBody(json.dumps(answer).encode()))
        with self._lock:
            self.cpu_seconds += time.thread_time() - cpu_started
        return response

    def _SendMessageBatch(self, params: dict[str, Any]) -> dict[str, Any]:
        entries = params["Entries"]
        self.sent += [entry["MessageBody"] for entry in entries]
        return {
            "Successful": [
                {
                    "Id": entry["Id"],
                    "MessageId": str(uuid.uuid4()),
                    "MD5OfMessageBody": hashlib.md5(entry["MessageBody"].encode(), usedforsecurity=False).hexdigest(),
                }
                for entry in entries
            ]
        }

    def _Scan(self, params: dict[str, Any]) -> dict[str, Any]:
        assert params["FilterExpression"] == "deferred_at <= :until"
        until = params["ExpressionAttributeValues"][":until"]["S"]
        start = 0
        if "ExclusiveStartKey" in params:
            start = self._position[params["ExclusiveStartKey"]["id"]["S"]] + 1
        keys = self._order[start : start + params["Limit"]]
        items = []
        for key in keys:
            if key in self._items and self._items[key][1] <= until:
                body, deferred_at, enqueued_on = self._items[key]
                item = {"id": {"S": key}, "body": {"S": body}, "deferred_at": {"S": deferred_at}}
                if enqueued_on:
                    item["enqueued_on"] = {"S": enqueued_on}
                items.append(item)
        answer: dict[str, Any] = {"Items": items, "Count": len(items), "ScannedCount": len(keys)}
        if start + len(keys) < len(self._order):
            answer["LastEvaluatedKey"] = {"id": {"S": keys[-1]}}
        return answer

    def _BatchWriteItem(self, params: dict[str, Any]) -> dict[str, Any]:
        (requests,) = params["RequestItems"].values()
        assert len(requests) <= 25
        for request in requests:
            if "DeleteRequest" in request:
                self._items.pop(request["DeleteRequest"]["Key"]["id"]["S"], None)
            else:
                item = request["PutRequest"]["Item"]
                self._items[item["id"]["S"]] = (item["body"]["S"], item["deferred_at"]["S"], item["enqueued_on"]["S"])
        return {"UnprocessedItems": {}}

    def _GetParameter(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["Name"]
        return {"Parameter": {"Name": name, "Type": "String", "Value": self._parameters[name], "Version": 1}}

    def _GetParametersByPath(self, params: dict[str, Any]) -> dict[str, Any]:
        below = sorted(name for name in self._parameters if name.startswith(params["Path"] + "/"))
        start = int(params.get("NextToken", 0))
        page = below[start : start + 10]
        answer: dict[str, Any] = {
            "Parameters": [{"Name": n, "Type": "String", "Value": self._parameters[n], "Version": 1} for n in page]
        }
        if start + 10 < len(below):
            answer["NextToken"] = str(start + 10)
        return answer


@dataclass
class PurgeRun:
    deferred: int
    in_flight: int
    seconds: float
    cpu_seconds: float
    enqueued: int
    calls: int

    @property
    def per_second(self) -> float:
        return self.deferred / self.seconds


def run_purge(deferred: int, in_flight: int, round_trip: float = ROUND_TRIP) -> PurgeRun:
    """One purge of `deferred` requests and the plan, on a fresh fake AWS, through NightlyPurge as deployed."""
    aws = FakeAws(round_trip)
    aws.defer(deferred)
    aws.put_parameter(PLAN, json.dumps({"targets": []}))
    for start in range(0, PLAN_TARGETS, PER_PARAMETER):
        targets = [
            {"provider": "ryng", "account": "acme", "call_id": f"p-{n}"} for n in range(start, start + PER_PARAMETER)
        ]
        aws.put_parameter(f"{PLAN}/part-{start:04}", json.dumps({"targets": targets}))
    settings = PurgeSettings(
        purge_plan_parameter=PLAN, cancel_queue_url=QUEUE_URL, deferred_table=TABLE, max_in_flight=in_flight
    )
    # The clients purge_for builds, with the same configuration.
    config = PURGE_CLIENT_CONFIG.merge(Config(max_pool_connections=in_flight + 1))
    # The fake AWS checks no keys.
    session = boto3.Session(
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106
    )
    clients = {name: aws.attach(session.client(name, config=config)) for name in ("sqs", "dynamodb", "ssm")}
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="purge") as executor:
        purge = NightlyPurge(
            settings,
            PlanSource(SSMProvider(boto3_client=clients["ssm"]), PLAN, max_age=0),
            Enqueuer(clients["sqs"], QUEUE_URL),
            DeferredStore(clients["dynamodb"], TABLE),
            executor,
        )
        context = LocalLambdaContext(function_name="NightlyPurge", timeout_seconds=TIMEOUT_SECONDS)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = purge.run({"time": iso_utc(datetime.now(UTC))}, context)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started - aws.cpu_seconds
    assert result["deferred_enqueued"] == deferred and aws.deferred_left() == 0, result
    assert len(aws.sent) == deferred + PLAN_TARGETS == len(set(aws.sent))
    return PurgeRun(deferred, in_flight, seconds, cpu_seconds, len(aws.sent), aws.calls)


def bench_purge() -> list[Figure]:
    pipelined = run_purge(DEFERRED, in_flight=PurgeSettings.model_fields["max_in_flight"].default)
    baseline = run_purge(BASELINE_DEFERRED, in_flight=1)
    ratio = pipelined.per_second / baseline.per_second
    print(
        f"\nnightly purge, {DEFERRED:,} deferred requests and a plan of {PLAN_TARGETS:,} targets,"
        f" every AWS call answered after {ROUND_TRIP * 1000:.0f} ms"
    )
    print(
        f"  {pipelined.in_flight} units in flight: {pipelined.seconds:6.1f} s, {pipelined.per_second:,.0f} requests/s"
        f" ({pipelined.calls:,} AWS calls); {TIMEOUT_SECONDS - pipelined.seconds:.0f} s of the"
        f" {TIMEOUT_SECONDS} s timeout to spare"
    )
    print(
        f"  1 unit in flight:  {baseline.seconds:6.1f} s for {BASELINE_DEFERRED:,},"
        f" {baseline.per_second:,.0f} requests/s   (baseline)"
    )
    # Once calls overlap the purge is CPU-bound: what one vCPU would carry, whatever else this machine runs.
    cpu_per_request_us = pipelined.cpu_seconds / (DEFERRED + PLAN_TARGETS) * 1e6
    print(
        f"  speed-up: {ratio:.1f}x; the purge's CPU: {cpu_per_request_us:.0f} us per request (one vCPU:"
        f" {1e6 / cpu_per_request_us:,.0f} requests/s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    figures = [
        Figure(
            "purge_requests_per_second",
            pipelined.per_second,
            baseline.per_second,
            f">={TARGET_PER_SECOND}",
            unit="requests/s",
            target_on="value",
            extra={"aws_round_trip_ms": f"{ROUND_TRIP * 1000:.0f}"},
        ),
        # 100,000 within half the function's timeout: the rest is the margin.
        Figure(f"purge_{DEFERRED}_seconds_of_timeout", pipelined.seconds, TIMEOUT_SECONDS, "<=0.5"),
    ]
    for figure in figures:
        print(f"  {figure.name}: {figure.status}")
    return figures


if __name__ == "__main__":
    raise SystemExit(any(figure.failed for figure in bench_purge()))
