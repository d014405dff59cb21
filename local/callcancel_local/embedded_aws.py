"""AWS on loopback: moto in server mode, a real HTTP endpoint that boto3 reaches through AWS_ENDPOINT_URL."""

import logging
import socket
from types import TracebackType
from typing import Any

import boto3
import requests
from moto.events.models import EventBus, Rule
from moto.server import ThreadedMotoServer

# moto accepts any credentials; these make boto3 sign requests without touching a real account.
LOCAL_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class EmbeddedAws:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.endpoint_url = ""

    def start(self) -> "EmbeddedAws":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per AWS call is noise here
        patch_moto()
        # moto binds inside its thread and would wait forever for a port that is taken: check first.
        host, port = self._address
        if port:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
                try:
                    probe.bind((host, port))
                except OSError as exc:
                    raise SystemExit(
                        f"error: cannot start the embedded AWS on {host}:{port}: {exc.strerror}. "
                        "Stop what uses that port or choose another (CALLCANCEL_AWS_PORT)."
                    ) from None
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def environment(self) -> dict[str, str]:
        """What a process needs to talk to this AWS instead of the real one."""
        return {**LOCAL_ENVIRONMENT, "AWS_ENDPOINT_URL": self.endpoint_url}

    def reset(self) -> None:
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> "EmbeddedAws":
        return self.start()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def patch_moto() -> None:
    """Where moto's EventBridge differs from AWS in a way the stack depends on. Idempotent; moto runs in this process.

    - `!Ref` of an AWS::Events::EventBus is its name in AWS; moto's CloudFormation hands over the bus object.
    - A target's InputPath: see `_honour_input_path`.
    """
    if not hasattr(EventBus, "physical_resource_id"):
        EventBus.physical_resource_id = property(lambda bus: bus.name)  # type: ignore[attr-defined]
    _honour_input_path()


def _honour_input_path() -> None:
    """Make moto's EventBridge honour a target's InputPath, as AWS does (moto sends the whole event).

    The stack's Cancel Requested rule sends only `$.detail` to CancelQueue. moto delivers to SQS targets
    itself, inside PutEvents, and applies InputTransformer but not InputPath: for the length of one delivery,
    each InputPath target is given the equivalent transformer.
    """
    send = Rule.send_to_targets
    if getattr(send, "honours_input_path", False):
        return

    def send_to_targets(rule: Rule, event: Any, transform_input: bool = True) -> None:
        targets = rule.targets
        rule.targets = [_input_path_as_transformer(target) for target in targets]
        try:
            send(rule, event, transform_input)
        finally:
            rule.targets = targets

    send_to_targets.honours_input_path = True  # type: ignore[attr-defined]
    Rule.send_to_targets = send_to_targets  # type: ignore[method-assign, assignment]


def _input_path_as_transformer(target: dict[str, Any]) -> dict[str, Any]:
    if "InputPath" not in target or "InputTransformer" in target:
        return target
    transformer = {"InputPathsMap": {"value": target["InputPath"]}, "InputTemplate": "<value>"}
    return {**target, "InputTransformer": transformer}


def create_table_keyed_by_id(name: str) -> None:
    """An on-demand table with the string partition key `id`, like the stack's idempotency and deferred tables."""
    boto3.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
