"""Where the queues, the outcome table and the event bus are, for producers and operators: a flag, else an
environment variable, else the stack's outputs.

The stack is `--stack-name`, else the one samconfig.toml in the current directory deploys (`sam deploy
[--config-env ENV]`), in that file's region unless one is given.
"""

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

QUEUE_URL_ENV = "CALLCANCEL_QUEUE_URL"
DLQ_URL_ENV = "CALLCANCEL_DLQ_URL"
OUTCOME_TABLE_ENV = "CALLCANCEL_OUTCOME_TABLE"
EVENT_BUS_ENV = "CALLCANCEL_EVENT_BUS"
SAMCONFIG = Path("samconfig.toml")


class LocateError(Exception):
    """The queue cannot be found; the message says what to pass."""


@dataclass(frozen=True)
class SamConfig:
    stack_name: str
    region: str | None


def read_samconfig(path: Path = SAMCONFIG, config_env: str = "default") -> SamConfig | None:
    """The stack (and region) `sam deploy --config-env <config_env>` deploys, as samconfig.toml names it."""
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None
    except tomllib.TOMLDecodeError as exc:
        raise LocateError(f"{path} is not valid TOML: {exc}") from None
    parameters = config.get(config_env, {}).get("global", {}).get("parameters", {})
    name, region = parameters.get("stack_name"), parameters.get("region")
    if not isinstance(name, str) or not name:
        return None
    return SamConfig(name, region if isinstance(region, str) and region else None)


@dataclass
class QueueLocator:
    """Resolves each URL on first use, so a command needing only one queue never looks up the other.

    `region` is the one given, else samconfig.toml's once the stack came from there: use it for the
    SQS client too, after resolving.
    """

    queue_url: str | None = None
    dlq_url: str | None = None
    stack_name: str | None = None
    config_env: str = "default"
    region: str | None = None
    outcome_table_name: str | None = None
    event_bus_name: str | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    cloudformation: Any = None
    _outputs: dict[str, str] | None = field(default=None, repr=False)

    def cancel_queue(self) -> str:
        return self._resolve(self.queue_url, QUEUE_URL_ENV, "CancelQueueUrl", "--queue-url")

    def dead_letter_queue(self) -> str:
        return self._resolve(self.dlq_url, DLQ_URL_ENV, "DeadLetterQueueUrl", "--dlq-url")

    def outcome_table(self) -> str:
        return self._resolve(self.outcome_table_name, OUTCOME_TABLE_ENV, "OutcomeTableName", "--outcome-table", "table")

    def event_bus(self) -> str:
        return self._resolve(self.event_bus_name, EVENT_BUS_ENV, "EventBusName", "--event-bus", "event bus")

    def _resolve(self, given: str | None, env: str, output: str, flag: str, what: str = "queue") -> str:
        if given:
            return given
        if self.environ.get(env):
            return self.environ[env]
        outputs = self._stack_outputs(f"no {what}: pass {flag}, set {env}, or pass --stack-name")
        if output not in outputs:
            raise LocateError(f"stack {self.stack_name} has no output {output}: is it a callcancel stack?")
        return outputs[output]

    def _stack_outputs(self, nowhere: str) -> dict[str, str]:
        if self._outputs is None:
            if not self.stack_name:
                samconfig = read_samconfig(config_env=self.config_env)
                if samconfig is None:
                    raise LocateError(f"{nowhere} (or run where samconfig.toml names one)")
                self.stack_name, self.region = samconfig.stack_name, self.region or samconfig.region
            self._outputs = self._read_outputs(self.stack_name)
        return self._outputs

    def _read_outputs(self, stack: str) -> dict[str, str]:
        cloudformation = self.cloudformation or boto3.client("cloudformation", region_name=self.region)
        try:
            [description] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
        except ClientError as exc:
            # A stack that does not exist is a wrong argument; anything else (access, throttling) is AWS's answer.
            if exc.response.get("Error", {}).get("Code") == "ValidationError":
                raise LocateError(f"no stack {stack} in {cloudformation.meta.region_name}") from None
            raise
        return {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}
