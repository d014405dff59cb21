"""What a cancel costs on AWS: the requests of each kind counted during a run, times the published prices.

`AwsMeter` counts every AWS request any botocore client in this process sends (the worker's, Powertools', the
event source's, the producer's), by service and operation, as AWS bills them. `Usage` adds what is measured
rather than counted (Lambda invocations and GB-seconds, log bytes). `PRICES` is the one price table.
"""

import json
import math
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.handlers
from botocore.awsrequest import AWSPreparedRequest


@dataclass(frozen=True)
class Price:
    label: str  # what is counted, per cancel
    usd: float
    per: float  # the price is for this many units
    unit: str
    source: str  # where it is published
    valid_on: str  # the date it is believed valid on

    def of(self, quantity: float) -> float:
        return self.usd * quantity / self.per


# us-east-1, on-demand, no free tier. Written from memory without internet access on the machine that wrote them:
# check them against the sources before relying on a figure. Each was valid on its date as far as we know.
PRICES: Mapping[str, Price] = {
    "sqs_request": Price(
        "SQS requests",
        0.40,
        1e6,
        "SQS standard request (per 64 KB chunk)",
        "https://aws.amazon.com/sqs/pricing/",
        "2025-01-01",
    ),
    "dynamodb_write_unit": Price(
        "DynamoDB write units",
        0.625,
        1e6,
        "DynamoDB on-demand write request unit (1 KB)",
        "https://aws.amazon.com/dynamodb/pricing/on-demand/",
        "2024-11-01",
    ),
    "dynamodb_read_unit": Price(
        "DynamoDB read units",
        0.125,
        1e6,
        "DynamoDB on-demand read request unit (4 KB, strongly consistent)",
        "https://aws.amazon.com/dynamodb/pricing/on-demand/",
        "2024-11-01",
    ),
    "secrets_manager_call": Price(
        "Secrets Manager calls",
        0.05,
        1e4,
        "Secrets Manager API call",
        "https://aws.amazon.com/secrets-manager/pricing/",
        "2025-01-01",
    ),
    "eventbridge_event": Price(
        "EventBridge events",
        1.00,
        1e6,
        "EventBridge custom event put (per 64 KB chunk)",
        "https://aws.amazon.com/eventbridge/pricing/",
        "2025-01-01",
    ),
    "sns_publish": Price(
        "SNS publishes", 0.50, 1e6, "SNS publish (per 64 KB chunk)", "https://aws.amazon.com/sns/pricing/", "2025-01-01"
    ),
    "lambda_request": Price(
        "Lambda invocations", 0.20, 1e6, "Lambda request", "https://aws.amazon.com/lambda/pricing/", "2025-01-01"
    ),
    "lambda_gb_second": Price(
        "Lambda GB-seconds",
        0.0000133334,
        1,
        "Lambda duration, arm64, per GB-second (first 7.5 billion GB-s a month)",
        "https://aws.amazon.com/lambda/pricing/",
        "2025-01-01",
    ),
    "log_byte": Price(
        "CloudWatch Logs bytes",
        0.50,
        2**30,
        "CloudWatch Logs ingestion, Standard class, per GB",
        "https://aws.amazon.com/cloudwatch/pricing/",
        "2025-01-01",
    ),
    "xray_trace": Price(
        "X-Ray traces", 5.00, 1e6, "X-Ray trace recorded", "https://aws.amazon.com/xray/pricing/", "2025-01-01"
    ),
}

# What DESIGN.md's contracts make every cancel pay, however it is built, per cancel:
CONTRACT_FLOOR: Mapping[str, float] = {
    # the message is sent, received and deleted, 10 per request at best (SendMessageBatch, a batch of 10)
    "sqs_request": 3 / 10,
    # Powertools idempotency's lock and completion ("Idempotency"), and the outcome record
    "dynamodb_write_unit": 3,
    # the outcome event ("Outcome events")
    "eventbridge_event": 1,
}


def contract_floor_usd_per_million() -> float:
    """The least a million cancels can cost under the contracts, with Lambda, logs and secrets free."""
    return sum(PRICES[item].of(quantity) * 1e6 for item, quantity in CONTRACT_FLOOR.items())


# Services billed per request (per 64 KB chunk of it), by the name botocore's events give them.
_SERVICE_ITEM = {"sqs": "sqs_request", "secrets-manager": "secrets_manager_call", "sns": "sns_publish"}
_CHUNK = 64 * 1024
# Lambda's own lines per invocation (START, END, and REPORT with its X-Ray ids): about 380 bytes.
PLATFORM_LOG_BYTES = 380
# X-Ray's default sampling rule records the first request each second and 5 % of the others.
XRAY_SAMPLED = 0.05


def item_bytes(item: Mapping[str, Any]) -> int:
    """A DynamoDB item's size as DynamoDB bills it: names plus values (numbers counted as their digits)."""
    return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


def _value_bytes(value: Mapping[str, Any]) -> int:
    ((kind, data),) = value.items()
    if kind in ("S", "N", "B"):
        return len(str(data).encode())
    if kind == "M":
        return 3 + item_bytes(data)
    if kind == "L":
        return 3 + sum(1 + _value_bytes(element) for element in data)
    if kind in ("SS", "NS", "BS"):
        return sum(len(str(element).encode()) for element in data)
    return 1  # BOOL, NULL


class AwsMeter:
    """Counts the AWS requests every botocore session of this process sends, while `recording()`.

    It is one of botocore's built-in handlers, so clients that libraries build on sessions of their own (Powertools
    builds its Secrets Manager client so) are counted too: those created after it, as are boto3's default session's.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # "service.Operation", the service as botocore's events name it
        self.write_bytes: list[int] = []  # the item sizes of DynamoDB writes whose item the request holds
        self.writes = 0  # DynamoDB items written (put, updated or deleted)
        self.reads = 0.0  # DynamoDB read units
        self.events = 0  # EventBridge entries, per 64 KB chunk
        self.chunks: Counter[str] = Counter()  # SQS and SNS requests, per 64 KB chunk
        self._recording = False
        self._lock = threading.Lock()
        botocore.handlers.BUILTIN_HANDLERS.append(("before-send", self._count))
        if boto3.DEFAULT_SESSION is not None:  # made before: the clients it makes from now on are counted too
            boto3.DEFAULT_SESSION.events.register("before-send", self._count)

    def close(self) -> None:
        """Clients created from now on do without it."""
        botocore.handlers.BUILTIN_HANDLERS.remove(("before-send", self._count))
        if boto3.DEFAULT_SESSION is not None:
            boto3.DEFAULT_SESSION.events.unregister("before-send", self._count)

    @contextmanager
    def recording(self) -> Iterator["AwsMeter"]:
        self._recording = True
        try:
            yield self
        finally:
            self._recording = False

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.chunks.clear()
            self.write_bytes.clear()
            self.writes, self.reads, self.events = 0, 0.0, 0

    def _count(self, request: AWSPreparedRequest, event_name: str, **_: Any) -> None:
        if not self._recording:
            return
        service, operation = event_name.split(".")[1:3]
        body = request.body if isinstance(request.body, bytes | str) else b""
        size = len(body)
        with self._lock:
            self.calls[f"{service}.{operation}"] += 1
            if service in _SERVICE_ITEM:
                self.chunks[service] += max(1, math.ceil(size / _CHUNK))
            elif service == "dynamodb":
                self._dynamodb(operation, json.loads(body))
            elif service == "eventbridge" and operation == "PutEvents":
                entries = json.loads(body)["Entries"]
                self.events += sum(max(1, math.ceil(len(json.dumps(entry)) / _CHUNK)) for entry in entries)

    def _dynamodb(self, operation: str, params: dict[str, Any]) -> None:
        if operation == "PutItem":
            self.writes += 1
            self.write_bytes.append(item_bytes(params["Item"]))
        elif operation in ("UpdateItem", "DeleteItem"):
            self.writes += 1
        elif operation == "BatchWriteItem":
            for requests in params["RequestItems"].values():
                self.writes += len(requests)
                self.write_bytes += [item_bytes(r["PutRequest"]["Item"]) for r in requests if "PutRequest" in r]
        elif operation == "GetItem":
            self.reads += 1 if params.get("ConsistentRead") else 0.5


@dataclass
class Usage:
    """What one design used for `cancels` cancels: AWS requests counted, Lambda time and log bytes measured."""

    cancels: int
    memory_mb: int
    invocations: int = 0
    seconds: float = 0.0  # Lambda duration, each invocation rounded up to the millisecond as billed
    log_bytes: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    quantities: dict[str, float] = field(default_factory=dict)  # per price item, for all the cancels

    def add_invocation(self, seconds: float, log_bytes: int) -> None:
        self.invocations += 1
        self.seconds += math.ceil(seconds * 1000) / 1000
        self.log_bytes += log_bytes + PLATFORM_LOG_BYTES

    def take(self, meter: AwsMeter, largest_item_bytes: int) -> None:
        """Price what `meter` counted; a DynamoDB write is billed per KB of the larger of the item's two sizes."""
        write_units = max(1, math.ceil(largest_item_bytes / 1024))
        self.calls = Counter(meter.calls)
        self.quantities = {
            "sqs_request": meter.chunks["sqs"],
            "dynamodb_write_unit": meter.writes * write_units,
            "dynamodb_read_unit": meter.reads,
            "secrets_manager_call": meter.chunks["secrets-manager"],
            "eventbridge_event": meter.events,
            "sns_publish": meter.chunks["sns"],
            "lambda_request": self.invocations,
            "lambda_gb_second": self.seconds * self.memory_mb / 1024,
            "log_byte": self.log_bytes,
            "xray_trace": self.invocations * XRAY_SAMPLED,
        }

    def per_cancel(self, item: str) -> float:
        return self.quantities[item] / self.cancels

    def usd_per_million(self, item: str) -> float:
        return PRICES[item].of(self.per_cancel(item)) * 1e6

    @property
    def total_usd_per_million(self) -> float:
        return sum(self.usd_per_million(item) for item in PRICES)
