"""`make demo`: the whole job on this machine, from the real template, with no AWS account and no Docker.

It starts an embedded AWS (moto server) and the provider simulator, deploys template.yaml into it, publishes
a realistic mix of cancel requests (one of them as an EventBridge event), runs the deployed worker until the
queue is drained (with fast demo retry settings), and prints what happened: outcomes per class, each dead
letter with its reason, the provider calls made, and what `callcancel status` tells a producer.
"""

import contextlib
import io
import json
import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from callcancel.peek import peek
from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.runner import EventSourceRunner
from callcancel_local.simulator import ProviderSimulator
from callcancel_local.stack import DeployedStack, DeployError, deploy, not_created_lines
from callcancel_tools.cli import main as callcancel_cli

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
ALARM_EVENT = REPO / "events" / "eventbridge_dlq_alarm.json"
# Fast retries so that the demo finishes in seconds; production keeps 30 s / 900 s and 5 attempts.
DEMO_PARAMETERS = {"RetryBaseSeconds": "1", "RetryMaxSeconds": "2", "MaxAttempts": "3", "LogLevel": "WARNING"}
OUTCOME_CLASSES = (
    "cancelled",
    "duplicate",
    "deferred",
    "invalid",
    "config",
    "not_found",
    "auth",
    "rejected",
    "exhausted",
)
DEAD_LETTER_CLASSES = OUTCOME_CLASSES[3:]
PURGE_PLAN = {"targets": [{"provider": "plum", "account": "acme", "application_id": "7001", "deployment_id": "3"}]}
# Sent as a Cancel Requested event on the stack's bus, the second way in.
EVENT_REQUEST = ["ryng", "--account", "acme", "--call-id", "e-1", "--request-id", "crm-88:cancel"]
# What a producer asks at the end: a cancelled, an EventBridge, a deferred-then-purged and a dead-lettered request.
STATUS_OF = ["crm-77:cancel", "crm-88:cancel", "crm-90:nightly", "crm-91:cancel"]
# The README's example subscriber: every failure of one account, on a queue of its own.
FAILURES_OF_ACME = {"source": ["callcancel"], "detail-type": ["Cancel Failed"], "detail": {"account": ["acme"]}}


@dataclass(frozen=True)
class DemoAccounts:
    """Demo tenants, seeded both at the simulator and in Secrets Manager."""

    ryng_token: str = "demo-ryng-token"  # noqa: S105  (a demo value for the local simulator)
    plum_email: str = "ops@acme.example"
    plum_key: str = "demo-plum-key"
    initech_token: str = "demo-initech-token"  # noqa: S105


def seed(simulator: ProviderSimulator, accounts: DemoAccounts = DemoAccounts()) -> None:
    secrets = boto3.client("secretsmanager")
    simulator.add_ryng_account("acme", accounts.ryng_token)
    simulator.add_ryng_account("globex", "globex-current-token")
    simulator.add_ryng_account("initech", accounts.initech_token)  # known to Ryng; its secret is missing at first
    simulator.add_plum_account(accounts.plum_email, accounts.plum_key)
    for name, value in {
        "callcancel/ryng/acme": {"subdomain": "acme", "access_token": accounts.ryng_token},
        "callcancel/ryng/globex": {"subdomain": "globex", "access_token": "globex-revoked-token"},
        "callcancel/plum/acme": {"email": accounts.plum_email, "developer_key": accounts.plum_key},
    }.items():
        secrets.create_secret(Name=name, SecretString=json.dumps(value))


def scenario(simulator: ProviderSimulator) -> list[str]:
    """The demo's cancel requests, with the provider behaviour each one meets."""
    simulator.add_ryng_calls("acme", "r-1001", "r-1002", "1003", "r-2001", "n-1", "n-2", "e-1")
    simulator.add_plum_deployment("ops@acme.example", "7001", "3", pending=30)  # in the nightly purge plan
    simulator.add_ryng_calls("globex", "g-1")
    simulator.add_ryng_calls("initech", "i-1")
    simulator.add_plum_deployment("ops@acme.example", "7001", "1", pending=12)
    simulator.add_plum_deployment("ops@acme.example", "7001", "2", pending=4)
    simulator.inject("plum", 503, times=2, target="7001/2")  # an outage that recovers
    simulator.inject("ryng", 500, times=-1, target="r-2001", body={"error": True, "message": "Dialer unavailable"})
    requests: list[dict[str, Any] | str] = [
        {"provider": "ryng", "account": "acme", "call_id": "r-1001", "reason": "order cancelled"},
        {"provider": "ryng", "account": "acme", "call_id": "r-1002", "request_id": "crm-77:cancel"},
        {"provider": "ryng", "account": "acme", "call_id": "r-1002", "request_id": "crm-77:cancel"},  # a retry
        {"provider": "ryng", "account": "acme", "call_id": 1003},
        {"provider": "plum", "account": "acme", "application_id": "7001", "deployment_id": "1"},
        {"provider": "plum", "account": "acme", "application_id": "7001", "deployment_id": "2"},
        {"provider": "ryng", "account": "acme", "call_id": "r-9999"},  # unknown call
        {"provider": "plum", "account": "acme", "application_id": "7001", "deployment_id": "404"},  # unknown
        {"provider": "ryng", "account": "globex", "call_id": "g-1"},  # a revoked token
        {"provider": "ryng", "account": "initech", "call_id": "i-1"},  # no secret for this account
        {"provider": "ryng", "account": "acme", "call_id": "../../admin"},  # invalid
        '{"provider": "plum", "account": "acme"',  # not even JSON
        # an outage that does not recover
        {"provider": "ryng", "account": "acme", "call_id": "r-2001", "request_id": "crm-91:cancel"},
        # held for the purge
        {"provider": "ryng", "account": "acme", "call_id": "n-1", "when": "nightly", "request_id": "crm-90:nightly"},
        {"provider": "ryng", "account": "acme", "call_id": "n-2", "when": "nightly"},
    ]
    return [body if isinstance(body, str) else json.dumps(body) for body in requests]


def _target(body: str) -> str:
    try:
        request = json.loads(body)
        return f"{request['provider']}/{request['account']}/" + str(
            request.get("call_id") or f"{request.get('application_id')}/{request.get('deployment_id')}"
        )
    except (ValueError, KeyError, TypeError):
        return body[:21] + "..."


@dataclass
class DemoReport:
    published: int
    purged: int  # requests the nightly purge put on the queue (its PurgeEnqueued metric)
    outcomes: dict[str, int]  # from the worker's own Outcome metrics, as CloudWatch would sum them
    retries: int
    dead_letters: list[dict[str, Any]]
    provider_calls: Counter[tuple[str, int]]
    digest: dict[str, str]  # the DLQ alarm's digest as AlertTopic delivered it: Subject and Message
    fix: "OperatorFix"
    via_eventbridge: "Command"  # `callcancel publish ... --via eventbridge`
    status: "Command"  # `callcancel status ...` at the end
    acme_failures: list[dict[str, Any]]  # the Cancel Failed events the README's example rule caught

    @property
    def unaccounted(self) -> int:
        # Each published, purged or redriven request ends in one outcome; a deferred one ends again once purged.
        return self.published + self.purged + self.fix.redriven - sum(self.outcomes.values())


@dataclass
class Command:
    """A `callcancel` command the demo ran, as a person would, with what it printed."""

    line: str
    output: str
    status: int


def callcancel(*argv: str) -> Command:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = callcancel_cli(list(argv))
    return Command(shlex.join(["callcancel", *argv]), output.getvalue().rstrip(), status)


def subscribe(stack: DeployedStack, name: str, pattern: dict[str, Any]) -> str:
    """A rule on the stack's bus sending the events it matches to a new queue (moto delivers to SQS itself)."""
    sqs, events, bus = boto3.client("sqs"), boto3.client("events"), stack.outputs["EventBusName"]
    queue_url = sqs.create_queue(QueueName=f"{stack.name}-{name}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}])
    return queue_url


@dataclass
class OperatorFix:
    """The runbook's fix for the `config` dead letter: the missing secret, then the digest's redrive command."""

    secret: str
    command: str
    output: str
    status: int
    redriven: int


def run(simulator: ProviderSimulator) -> tuple[DeployedStack, DemoReport]:
    """Deploy, publish the scenario, drain the queue. AWS is whatever AWS_ENDPOINT_URL points at."""
    stack = deploy(
        TEMPLATE,
        parameters={**DEMO_PARAMETERS, "RyngBaseUrl": simulator.ryng_base_url, "PlumBaseUrl": simulator.plum_base_url},
    )
    runner = EventSourceRunner(stack)  # deploy() switched moto's own poller off: this is the only one
    seed(simulator)
    sqs = boto3.client("sqs")
    acme_failures = subscribe(stack, "acme-failures", FAILURES_OF_ACME)
    bodies = scenario(simulator)
    for body in bodies:
        sqs.send_message(QueueUrl=stack.outputs["CancelQueueUrl"], MessageBody=body)
    via_eventbridge = callcancel("publish", *EVENT_REQUEST, "--via", "eventbridge", "--stack-name", stack.name)
    boto3.client("ssm").put_parameter(
        Name=stack.outputs["PurgePlanParameter"], Value=json.dumps(PURGE_PLAN), Type="String", Overwrite=True
    )
    runner.run_until_drained(timeout=90)
    runner.fire_schedule("NightlyPurge")  # as EventBridge Scheduler would at 02:00
    runner.run_until_drained(timeout=60)
    digest = alert_digest(stack, runner)
    fix = fix_config_failure(stack, runner, digest["Message"])
    status = callcancel("status", *STATUS_OF, "--stack-name", stack.name)

    worker = runner.output["CancelWorker"]
    return stack, DemoReport(
        published=len(bodies) + (via_eventbridge.status == 0),
        purged=int(runner.output["NightlyPurge"].total("PurgeEnqueued")),
        outcomes={name: int(worker.total("Outcome", outcome=name)) for name in OUTCOME_CLASSES},
        retries=int(worker.total("Outcome", outcome="retry")),
        dead_letters=peek(sqs, stack.outputs["DeadLetterQueueUrl"]),
        provider_calls=Counter((call.provider, call.status) for call in simulator.calls()),
        digest=digest,
        fix=fix,
        via_eventbridge=via_eventbridge,
        status=status,
        acme_failures=[json.loads(m["body"]) for m in peek(sqs, acme_failures)],
    )


def fix_config_failure(
    stack: DeployedStack, runner: EventSourceRunner, digest: str, accounts: DemoAccounts = DemoAccounts()
) -> OperatorFix:
    """Do what the digest says for `config`: create the secret its reason names, run its command, drain."""
    [command] = [
        line.strip()
        for line in digest.splitlines()
        if line.strip().startswith("callcancel dlq redrive") and line.strip().endswith("--class config")
    ]
    secret = "callcancel/ryng/initech"  # noqa: S105  (a secret name)
    value = {"subdomain": "initech", "access_token": accounts.initech_token}
    boto3.client("secretsmanager").create_secret(Name=secret, SecretString=json.dumps(value))
    sqs, dlq_url = boto3.client("sqs"), stack.outputs["DeadLetterQueueUrl"]
    dead_letters = len(peek(sqs, dlq_url))
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = callcancel_cli(shlex.split(command)[1:])
    redriven = dead_letters - len(peek(sqs, dlq_url))
    runner.run_until_drained(timeout=60)
    return OperatorFix(secret, command, output.getvalue().strip(), status, redriven)


def dead_letter_alarm_event(stack_name: str) -> dict[str, Any]:
    """The event CloudWatch sends when the stack's DLQ alarm goes to ALARM (moto cannot create the alarm)."""
    text = ALARM_EVENT.read_text().replace("callcancel-dev-dead-letters", f"{stack_name}-dead-letters")
    event: dict[str, Any] = json.loads(text)
    event["time"] = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    event["detail"]["state"]["timestamp"] = event["time"]
    return event


def alert_digest(stack: DeployedStack, runner: EventSourceRunner) -> dict[str, str]:
    """Fire the DLQ alarm's state change through the deployed EventBridge rule; read what AlertTopic sent.

    An SQS queue subscribed to the topic stands in for the operator's email.
    """
    sqs, sns = boto3.client("sqs"), boto3.client("sns")
    inbox = sqs.create_queue(QueueName=f"{stack.name}-alert-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=stack.outputs["AlertTopicArn"], Protocol="sqs", Endpoint=inbox_arn)
    delivered = runner.put_event(dead_letter_alarm_event(stack.name))
    if not delivered.get("DlqDigest", {}).get("sent"):
        raise RuntimeError(f"the DLQ alarm's event did not produce a digest: {delivered}")
    [message] = sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=1).get("Messages", [])
    notification: dict[str, str] = json.loads(message["Body"])
    return {"Subject": notification["Subject"], "Message": notification["Message"]}


def print_summary(report: DemoReport) -> None:
    command = report.via_eventbridge
    print(f"\nOne of them came in as an EventBridge event:\n\n  $ {command.line}\n  {command.output}")
    print(
        f"\nOutcomes ({report.published} published, {report.purged} enqueued by the nightly purge,"
        f" {report.fix.redriven} redriven after the fix below, {report.retries} retries on the way):"
    )
    for name, count in report.outcomes.items():
        if count:
            print(f"  {name:<10} {count}")
    print(f"\nDead letters left ({len(report.dead_letters)}):")
    for letter in sorted(report.dead_letters, key=lambda item: item["failure_class"]):
        http = f" HTTP {letter['http_status']}" if "http_status" in letter else ""
        print(
            f"  {letter['failure_class']:<10} {_target(letter['body']):<24} attempts={letter['attempts']}{http:<9}"
            f" {letter['failure_reason']}"
        )
    print("\nProvider calls:")
    for (provider, status), count in sorted(report.provider_calls.items()):
        print(f"  {provider:<5} HTTP {status or 'dropped'}: {count}")
    print("\nThe DLQ alarm fired. AlertTopic sent this digest (DlqDigest, through the deployed EventBridge rule):")
    print(f"\n  Subject: {report.digest['Subject']}\n")
    print("\n".join(f"  | {line}" for line in report.digest["Message"].splitlines()))
    fix = report.fix
    print(f"\nThe operator follows it for `config`: creates the secret {fix.secret}, then runs the digest's command:")
    print(f"\n  $ {fix.command}")
    print("\n".join(f"  {line}" for line in fix.output.splitlines()))
    print(f"  (exit {fix.status}); the worker then cancelled i-1 at Ryng.")
    failures = Counter(event["detail"]["failure_class"] for event in report.acme_failures)
    print(
        "\nA subscriber's rule on the bus (Cancel Failed, account acme) caught"
        f" {len(report.acme_failures)} event(s): {', '.join(f'{n} {c}' for c, n in sorted(failures.items()))}"
    )
    print(f"\nWhat became of them? A producer asks:\n\n  $ {report.status.line}")
    print("\n".join(f"  {line}" for line in report.status.output.splitlines()))
    lost = report.unaccounted
    print(f"\nEvery message accounted for: {'yes' if lost == 0 else f'NO, {lost} unaccounted'}")


def main() -> int:
    started = time.monotonic()
    with EmbeddedAws() as aws, ProviderSimulator() as simulator:
        os.environ.update(aws.environment())
        print(f"Embedded AWS at {aws.endpoint_url}; provider simulator at {simulator.base_url}")
        try:
            stack, report = run(simulator)
        except DeployError as exc:
            print(f"error: the template cannot be deployed locally: {exc}", file=sys.stderr)
            return 2
        print(f"Deployed {TEMPLATE.name} as stack {stack.name!r}: functions {', '.join(stack.functions)}")
        print("\n".join(not_created_lines(stack)))
        print_summary(report)
    print(f"Done in {time.monotonic() - started:.1f} s.")
    return 0 if report.unaccounted == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
