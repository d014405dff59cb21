"""A worker stack on moto server: CancelQueue, DeadLetterQueue, idempotency table, secrets; and the handler."""

import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from botocore.client import BaseClient

from callcancel.peek import peek
from callcancel_local.embedded_aws import EmbeddedAws, create_table_keyed_by_id
from callcancel_local.lambda_runtime import LocalLambdaContext, load_handler
from callcancel_local.simulator import ProviderSimulator
from callcancel_local.sqs_source import BatchResult, SqsEventSource
from tests.support import REPO

RYNG_TOKEN = "ryng-token-SENSITIVE-1f3a"
PLUM_KEY = "plum-key-SENSITIVE-9c2e"
PLUM_EMAIL = "ops@acme.example"

Handler = Callable[[dict[str, Any], Any], Any]


@pytest.fixture(scope="session")
def worker_handler() -> Handler:
    return load_handler(REPO / "functions" / "cancel_worker", "app.lambda_handler")


@dataclass
class WorkerStack:
    handler: Handler
    simulator: ProviderSimulator
    sqs: Any = field(default_factory=lambda: boto3.client("sqs"))
    secrets: Any = field(default_factory=lambda: boto3.client("secretsmanager"))

    def __post_init__(self) -> None:
        self.dlq_url = self.sqs.create_queue(QueueName="dead-letters")["QueueUrl"]
        self.queue_url = self.sqs.create_queue(QueueName="cancel-requests")["QueueUrl"]
        create_table_keyed_by_id("idempotency")
        self.source = SqsEventSource(self.sqs, self.queue_url)

    def environment(self) -> dict[str, str]:
        return {
            "CANCEL_QUEUE_URL": self.queue_url,
            "DEAD_LETTER_QUEUE_URL": self.dlq_url,
            "IDEMPOTENCY_TABLE": "idempotency",
            "RYNG_BASE_URL": self.simulator.ryng_base_url,
            "PLUM_BASE_URL": self.simulator.plum_base_url,
            "MAX_ATTEMPTS": "3",
            "RETRY_BASE_SECONDS": "0",
            "PROVIDER_TIMEOUT_SECONDS": "2",
            "POWERTOOLS_SERVICE_NAME": "callcancel",
            "POWERTOOLS_METRICS_NAMESPACE": "Callcancel",
        }

    def put_secret(self, name: str, value: dict[str, Any] | str) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        try:
            self.secrets.create_secret(Name=name, SecretString=text)
        except self.secrets.exceptions.ResourceExistsException:
            self.secrets.put_secret_value(SecretId=name, SecretString=text)

    def send(self, body: dict[str, Any] | str) -> str:
        text = body if isinstance(body, str) else json.dumps(body)
        return str(self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=text)["MessageId"])

    def run_batch(self, context: Any = None) -> BatchResult:
        """One receive, one invocation, settled as Lambda settles it."""
        event = self.source.receive()
        assert event is not None, "nothing to receive"
        return self.source.invoke(self.handler, event, context or LocalLambdaContext(function_name="CancelWorker"))

    def run_until_empty(self, max_batches: int = 50) -> list[BatchResult]:
        results = []
        while (event := self.source.receive()) is not None:
            results.append(self.source.invoke(self.handler, event, LocalLambdaContext(function_name="CancelWorker")))
            assert len(results) <= max_batches, "the queue does not drain"
        return results

    def dead_letters(self) -> list[dict[str, Any]]:
        """Everything on the DLQ, left there, with attributes flattened."""
        return [{k: v for k, v in letter.items() if k != "message_id"} for letter in peek(self.sqs, self.dlq_url)]

    def queue_depth(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def stack(
    embedded_aws: EmbeddedAws, simulator: ProviderSimulator, worker_handler: Handler, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkerStack]:
    embedded_aws.reset()
    parameters.clear_caches()
    stack = WorkerStack(worker_handler, simulator)
    for name, value in stack.environment().items():
        monkeypatch.setenv(name, value)
    simulator.add_ryng_account("acme", RYNG_TOKEN)
    simulator.add_plum_account(PLUM_EMAIL, PLUM_KEY)
    stack.put_secret("callcancel/ryng/acme", {"subdomain": "acme", "access_token": RYNG_TOKEN})
    stack.put_secret("callcancel/plum/acme", {"email": PLUM_EMAIL, "developer_key": PLUM_KEY})
    yield stack
    parameters.clear_caches()


@pytest.fixture
def secret_fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SecretIds of every GetSecretValue call made from now on (a spy: the real call still goes to moto)."""
    fetched: list[str] = []
    make_api_call = BaseClient._make_api_call

    def spy(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation == "GetSecretValue":
            fetched.append(params["SecretId"])
        return make_api_call(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spy)
    return fetched


@pytest.fixture
def worker_logs(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The JSON lines the worker's Powertools logger writes (what CloudWatch Logs would receive)."""
    buffer = io.StringIO()
    for handler in logging.getLogger("callcancel").handlers:
        monkeypatch.setattr(handler, "stream", buffer)
    return buffer


PURGE_PLAN_PARAMETER = "/callcancel/purge-plan"


@pytest.fixture(scope="session")
def purge_handler() -> Handler:
    return load_handler(REPO / "functions" / "nightly_purge", "app.lambda_handler")


@dataclass
class PurgeStack:
    """The worker stack plus what the nightly purge needs: the deferred table and the SSM purge plan."""

    worker: WorkerStack
    handler: Handler
    dynamodb: Any = field(default_factory=lambda: boto3.client("dynamodb"))
    ssm: Any = field(default_factory=lambda: boto3.client("ssm"))
    table: str = "deferred"

    def __post_init__(self) -> None:
        create_table_keyed_by_id(self.table)
        self.set_plan({"targets": []})

    def environment(self) -> dict[str, str]:
        return {
            "DEFERRED_TABLE": self.table,
            "PURGE_PLAN_PARAMETER": PURGE_PLAN_PARAMETER,
            "PLAN_MAX_AGE_SECONDS": "0",
        }

    def set_plan(self, plan: dict[str, Any] | str, name: str = PURGE_PLAN_PARAMETER) -> None:
        text = plan if isinstance(plan, str) else json.dumps(plan)
        assert len(text) <= 4096, "a standard parameter holds at most 4 KB"
        self.ssm.put_parameter(Name=name, Value=text, Type="String", Overwrite=True)
        parameters.clear_caches()

    def run(self, event: dict[str, Any] | None = None) -> Any:
        event = {"time": "2026-11-23T20:30:00Z"} if event is None else event
        return self.handler(event, LocalLambdaContext(function_name="NightlyPurge", timeout_seconds=300))

    def defer(self, items: list[dict[str, str]]) -> None:
        """Store deferred requests directly, as the worker would: {id, body, deferred_at}."""
        for start in range(0, len(items), 25):
            self.dynamodb.batch_write_item(
                RequestItems={
                    self.table: [
                        {"PutRequest": {"Item": {k: {"S": v} for k, v in item.items()}}}
                        for item in items[start : start + 25]
                    ]
                }
            )

    def deferred_ids(self) -> set[str]:
        ids: set[str] = set()
        for page in self.dynamodb.get_paginator("scan").paginate(TableName=self.table):
            ids |= {item["id"]["S"] for item in page["Items"]}
        return ids

    def queued(self) -> list[dict[str, Any]]:
        return [json.loads(m["body"]) for m in peek(self.worker.sqs, self.worker.queue_url, limit=2000)]


@pytest.fixture
def purge(stack: WorkerStack, purge_handler: Handler, monkeypatch: pytest.MonkeyPatch) -> PurgeStack:
    purge = PurgeStack(stack, purge_handler)
    for name, value in purge.environment().items():
        monkeypatch.setenv(name, value)
    return purge


@pytest.fixture
def aws_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The operation names of every AWS call made from now on (a spy: the real call still goes to moto)."""
    calls: list[str] = []
    make_api_call = BaseClient._make_api_call

    def spy(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        calls.append(operation)
        return make_api_call(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spy)
    return calls


@pytest.fixture
def sqs_sink(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """SendMessageBatch calls answered here with success, their bodies recorded (one list per call).

    For volume tests only: moto's SendMessageBatch slows down linearly with the queue's depth.
    """
    batches: list[list[str]] = []
    make_api_call = BaseClient._make_api_call

    def sink(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation != "SendMessageBatch":
            return make_api_call(client, operation, params)
        batches.append([entry["MessageBody"] for entry in params["Entries"]])
        return {"Successful": [{"Id": entry["Id"]} for entry in params["Entries"]], "Failed": []}

    monkeypatch.setattr(BaseClient, "_make_api_call", sink)
    return batches
