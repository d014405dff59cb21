"""The fault proxy answers AWS's own errors, in each service's protocol, as botocore parses them."""

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from callcancel_local import fault_proxy
from callcancel_local.embedded_aws import EmbeddedAws, create_table_keyed_by_id
from callcancel_local.fault_proxy import FaultProxy

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})
SERVICES = ("sqs", "dynamodb", "secretsmanager")


@pytest.fixture(scope="module")
def aws(embedded_aws: EmbeddedAws) -> Iterator[dict[str, str]]:
    embedded_aws.reset()
    queue_url = boto3.client("sqs").create_queue(QueueName="proxied")["QueueUrl"]
    create_table_keyed_by_id("proxied")
    boto3.client("secretsmanager").create_secret(Name="proxied", SecretString="{}")
    yield {"upstream": embedded_aws.endpoint_url, "queue_url": queue_url}
    embedded_aws.reset()


def call(service: str, client: Any, queue_url: str) -> Any:
    calls: dict[str, Callable[[], Any]] = {
        "sqs": lambda: client.send_message(QueueUrl=queue_url, MessageBody="x"),
        "dynamodb": lambda: client.put_item(TableName="proxied", Item={"id": {"S": "a"}}),
        "secretsmanager": lambda: client.get_secret_value(SecretId="proxied"),
    }
    return calls[service]()


def only(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fault_proxy, "FAULT_KINDS", (kind,))


@pytest.mark.parametrize(
    ("service", "codes", "statuses"),
    [
        ("sqs", {"RequestThrottled", "ThrottlingException"}, {400, 403}),
        ("dynamodb", {"ProvisionedThroughputExceededException"}, {400}),
        ("secretsmanager", {"ThrottlingException"}, {400}),
    ],
)
def test_throttling_is_the_services_own_error(
    aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, service: str, codes: set[str], statuses: set[int]
) -> None:
    only("throttle", monkeypatch)
    with FaultProxy(aws["upstream"], {service: 1.0}, seed=1) as proxy:
        client = boto3.client(service, endpoint_url=proxy.urls[0], config=NO_RETRIES)
        seen = set()
        for _ in range(8):
            with pytest.raises(ClientError) as raised:
                call(service, client, aws["queue_url"])
            seen.add(
                (raised.value.response["Error"]["Code"], raised.value.response["ResponseMetadata"]["HTTPStatusCode"])
            )

    assert {code for code, _ in seen} == codes
    assert {status for _, status in seen} == statuses


@pytest.mark.parametrize("service", SERVICES)
def test_an_internal_error_is_a_500_and_a_drop_is_a_closed_connection(
    aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    only("error", monkeypatch)
    with FaultProxy(aws["upstream"], {service: 1.0}) as proxy:
        client = boto3.client(service, endpoint_url=proxy.urls[0], config=NO_RETRIES)
        with pytest.raises(ClientError) as raised:
            call(service, client, aws["queue_url"])
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500

    only("drop", monkeypatch)
    with FaultProxy(aws["upstream"], {service: 1.0}) as proxy:
        client = boto3.client(service, endpoint_url=proxy.urls[0], config=NO_RETRIES)
        with pytest.raises(ConnectionClosedError):
            call(service, client, aws["queue_url"])
        assert [(c.service, c.fault, c.status) for c in proxy.calls] == [(service, "drop", 0)]


def test_a_lost_answer_was_carried_out(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = boto3.client("sqs")
    sqs.purge_queue(QueueUrl=aws["queue_url"])
    only("lost_answer", monkeypatch)
    with FaultProxy(aws["upstream"], {"sqs": 1.0}) as proxy:
        client = boto3.client("sqs", endpoint_url=proxy.urls[0], config=NO_RETRIES)
        with pytest.raises(ConnectionClosedError):
            client.send_message(QueueUrl=aws["queue_url"], MessageBody="sent, though nobody heard")

    messages = sqs.receive_message(QueueUrl=aws["queue_url"], MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in messages] == ["sent, though nobody heard"]


def test_the_sdks_retries_get_through_a_fraction_of_faults(aws: dict[str, str]) -> None:
    with FaultProxy(aws["upstream"], dict.fromkeys(SERVICES, 0.3), seed=3) as proxy:
        for service in SERVICES:
            client = boto3.client(service, endpoint_url=proxy.urls[0])  # the default retry configuration
            for _ in range(10):
                call(service, client, aws["queue_url"])
        faults = proxy.counts()

    assert {service for (service, kind) in faults if kind != "ok"} == set(SERVICES)


def test_the_hook_sees_each_call_and_its_slot(aws: dict[str, str]) -> None:
    seen: list[tuple[int, str, str]] = []

    def hook(slot: int, service: str, operation: str, body: bytes) -> bool:
        seen.append((slot, service, operation))
        return operation == "GetSecretValue"  # "the caller was killed": dropped

    with FaultProxy(aws["upstream"], {}, slots=2, on_request=hook) as proxy:
        boto3.client("sqs", endpoint_url=proxy.urls[1]).get_queue_url(QueueName="proxied")
        with pytest.raises(ConnectionClosedError):
            boto3.client("secretsmanager", endpoint_url=proxy.urls[0], config=NO_RETRIES).get_secret_value(
                SecretId="proxied"
            )

    assert seen == [(1, "sqs", "GetQueueUrl"), (0, "secretsmanager", "GetSecretValue")]
    assert [c.fault for c in proxy.calls] == [None, "caller_killed"]


def test_only_modelled_services_take_faults(aws: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="no faults modelled"):
        FaultProxy(aws["upstream"], {"s3": 0.5})
