"""`make soak`: the whole job on the local stack under provider faults, AWS faults and worker crashes.

The real template is deployed into the embedded AWS (moto), SOAK_N cancel requests are published, and the
deployed CancelWorker drains the queue in killable processes (`crash_runner`), whose AWS calls go through a
fault-injecting proxy (`fault_proxy`) and whose provider calls meet the simulator's chaos. Halfway through,
two accounts' credentials are rotated. At the end, every request is checked against the simulator's own
record of what it cancelled, and one summary line is printed (README, "Soak"). Exit status 1 if a request
was lost or a credential leaked.
"""

import hashlib
import json
import os
import random
import re
import secrets
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import inf
from pathlib import Path
from typing import Any

import boto3

from callcancel_local.crash_runner import CrashRunner, Kill, KillPlan
from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.fault_proxy import FaultProxy, ProxiedCall
from callcancel_local.runner import FunctionOutput
from callcancel_local.simulator import ECHO_FORMATS, Chaos, ProviderSimulator, SimCall
from callcancel_local.stack import DeployedStack, DeployError, deploy

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
# The demo's fast retries, five attempts, and a 1 s provider read timeout (the template's minimum).
SOAK_PARAMETERS = {
    "RetryBaseSeconds": "1",
    "RetryMaxSeconds": "2",
    "MaxAttempts": "5",
    "ProviderTimeoutSeconds": "1",
    "LogLevel": "INFO",
}
PROVIDER_TIMEOUT = 1.0
# Lambda's timeout and the queue's visibility timeout, shortened from the template's 60 s and 360 s so that
# what a crash leaves behind (an in-progress lock, an invisible message) comes back within the run. The
# timeout still leaves room for the worker's attempt budget (2 x (3.05 + 1) + 2 s); the visibility timeout
# is still longer than the timeout, so a running invocation's messages never reappear.
FUNCTION_TIMEOUT = 12.0
VISIBILITY_TIMEOUT = 15
IDEMPOTENCY_PREFIX = "callcancel.cancel"  # the worker's key_prefix
MAY_HAVE_CANCELLED = re.compile(r"may (already )?have (been )?cancel", re.IGNORECASE)

RYNG_ACCOUNTS = ("acme", "globex", "initech", "umbrella")
PLUM_ACCOUNTS = {"acme": "ops@acme.example", "hooli": "noc@hooli.example"}
ROTATED = (("ryng", "acme"), ("plum", "hooli"))


@dataclass(frozen=True)
class SoakConfig:
    requests: int = 2000
    seed: int = 10
    workers: int = 4
    provider_faults: float = 0.30
    aws_faults: Mapping[str, float] = field(
        default_factory=lambda: {"sqs": 0.05, "dynamodb": 0.05, "secretsmanager": 0.10}
    )
    kills: KillPlan = field(default_factory=KillPlan)
    window_kill_fraction: float = 0.01  # idempotency completions at which the worker process is killed
    repeat_fraction: float = 0.05
    request_id_fraction: float = 0.3
    not_found_fraction: float = 0.04
    auth_fraction: float = 0.02
    echo_fraction: float = 0.02
    drain_seconds: float = 270.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "SoakConfig":
        return cls(
            requests=int(environ.get("SOAK_N") or 2000),
            seed=int(environ.get("SOAK_SEED") or 10),
            workers=int(environ.get("SOAK_WORKERS") or 4),
            drain_seconds=float(environ.get("SOAK_DRAIN_SECONDS") or 270),
        )


@dataclass(frozen=True)
class SoakRequest:
    body: str
    provider: str
    account: str
    target: str
    request_id: str | None
    expect: str  # cancelled | not_found | auth


# -- setup --------------------------------------------------------------------------------------------


@dataclass
class Credentials:
    """Every credential value of the run, old and new: none of them may appear in any output."""

    ryng: dict[str, str] = field(default_factory=dict)  # subdomain -> token
    plum: dict[str, str] = field(default_factory=dict)  # account -> developer key
    every_value: set[str] = field(default_factory=set)

    def new(self) -> str:
        value = secrets.token_urlsafe(18)
        self.every_value.add(value)
        return value


def seed_accounts(simulator: ProviderSimulator, credentials: Credentials) -> None:
    sm = boto3.client("secretsmanager")
    for subdomain in RYNG_ACCOUNTS:
        credentials.ryng[subdomain] = token = credentials.new()
        simulator.add_ryng_account(subdomain, token)
        sm.create_secret(
            Name=f"callcancel/ryng/{subdomain}",
            SecretString=json.dumps({"subdomain": subdomain, "access_token": token}),
        )
    for account, email in PLUM_ACCOUNTS.items():
        credentials.plum[account] = key = credentials.new()
        simulator.add_plum_account(email, key)
        sm.create_secret(
            Name=f"callcancel/plum/{account}", SecretString=json.dumps({"email": email, "developer_key": key})
        )


def rotate(simulator: ProviderSimulator, credentials: Credentials) -> None:
    """New credentials in the secret and at the provider at the same moment; workers hold the old ones cached."""
    sm = boto3.client("secretsmanager")
    for provider, account in ROTATED:
        value = credentials.new()
        if provider == "ryng":
            credentials.ryng[account] = value
            secret = {"subdomain": account, "access_token": value}
        else:
            credentials.plum[account] = value
            secret = {"email": PLUM_ACCOUNTS[account], "developer_key": value}
        sm.put_secret_value(SecretId=f"callcancel/{provider}/{account}", SecretString=json.dumps(secret))
        if provider == "ryng":
            simulator.add_ryng_account(account, value)
        else:
            simulator.add_plum_account(PLUM_ACCOUNTS[account], value)


def scenario(simulator: ProviderSimulator, config: SoakConfig) -> list[SoakRequest]:
    """SOAK_N requests, Ryng and Plum mixed; the simulator is told which calls exist and which always fail."""
    rng = random.Random(config.seed)  # noqa: S311  (a reproducible workload)
    requests: list[SoakRequest] = []
    while len(requests) < config.requests:
        previous = requests[-1] if requests else None
        # Only requests with a request_id are repeated: without one, a second message is a second request.
        if previous and previous.request_id and rng.random() < config.repeat_fraction / config.request_id_fraction:
            requests.append(previous)  # a producer's retry, sent right after: the two meet in the worker
            continue
        requests.append(_new_request(simulator, config, rng, len(requests)))
    return requests


def _new_request(simulator: ProviderSimulator, config: SoakConfig, rng: random.Random, i: int) -> SoakRequest:
    roll = rng.random()
    expect = (
        "not_found"
        if roll < config.not_found_fraction
        else "auth"
        if roll < config.not_found_fraction + config.auth_fraction
        else "cancelled"
    )
    request_id = f"soak-{i}:cancel" if rng.random() < config.request_id_fraction else None
    fields: dict[str, Any] = {"reason": "soak"} | ({"request_id": request_id} if request_id else {})
    if rng.random() < 0.6:
        account = rng.choice(RYNG_ACCOUNTS)
        call_id: str | int = 900_000 + i if rng.random() < 0.1 else f"c-{i}"
        target = str(call_id)
        if expect != "not_found":
            simulator.add_ryng_calls(account, target)
        body = {"provider": "ryng", "account": account, "call_id": call_id, **fields}
    else:
        account = rng.choice(list(PLUM_ACCOUNTS))
        application = str(7000 + list(PLUM_ACCOUNTS).index(account))
        target = f"{application}/{i}"
        if expect != "not_found":
            simulator.add_plum_deployment(PLUM_ACCOUNTS[account], application, str(i), pending=3)
        body = {"provider": "plum", "account": account, "application_id": application, "deployment_id": str(i)}
        body |= fields
    if expect == "auth":  # a permanent refusal for this one target, echoing the credentials it was sent
        simulator.inject_echo(body["provider"], 403, ECHO_FORMATS[i % len(ECHO_FORMATS)], times=-1, target=target)
    elif expect == "cancelled" and rng.random() < config.echo_fraction:  # an outage that echoes them, once
        simulator.inject_echo(body["provider"], 500, "json", target=target)
    return SoakRequest(json.dumps(body), body["provider"], account, target, request_id, expect)


class Producer:
    """Publishes the requests in order, 10 per call, keeping at most `backlog` of them unfinished.

    A steady producer rather than one burst: moto's ReceiveMessage scans the whole queue, at about 0.3 ms of
    CPU per message, so 2,000 waiting messages would make every receive cost half a second.
    """

    def __init__(self, queue_url: str, requests: list[SoakRequest], backlog: int = 150) -> None:
        self._sqs = boto3.client("sqs")
        self._queue_url = queue_url
        self._requests = requests
        self._backlog = backlog
        self.message_ids: list[str] = []

    @property
    def done(self) -> bool:
        return len(self.message_ids) == len(self._requests)

    def top_up(self, finished: int) -> None:
        """Publish while fewer than `backlog` published requests are unfinished."""
        while not self.done and len(self.message_ids) - finished < self._backlog:
            chunk = self._requests[len(self.message_ids) : len(self.message_ids) + 10]
            answer = self._sqs.send_message_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": str(i), "MessageBody": r.body} for i, r in enumerate(chunk)],
            )
            if answer.get("Failed"):
                raise RuntimeError(f"publishing failed: {answer['Failed']}")
            by_entry = {entry["Id"]: entry["MessageId"] for entry in answer["Successful"]}
            self.message_ids.extend(by_entry[str(i)] for i in range(len(chunk)))


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """Everything the verdict is computed from."""

    requests: list[SoakRequest]
    message_ids: list[str]
    sim_calls: list[SimCall]
    sim_cancelled: set[tuple[str, str]]
    letters: list[dict[str, Any]]
    leftovers: set[str]  # message ids still on CancelQueue when the run ended
    kills: list[Kill]
    proxy_calls: list[ProxiedCall]
    outputs: dict[str, str]  # name -> text of everything the run wrote (worker logs, handler errors)
    credentials: Credentials
    metrics: Counter[str] = field(default_factory=Counter)
    # The outcome table at the end: request key -> `outcome` (None: the table was not read)
    outcome_records: dict[str, str] | None = None
    # The outcome events put on the stack's bus: request key -> their detail types (None: not subscribed)
    announced: dict[str, set[str]] | None = None
    rotated_at: float | None = None
    invocations: int = 0
    cold_starts: int = 0
    drained: bool = True


def run(config: SoakConfig, aws: EmbeddedAws, simulator: ProviderSimulator, log_dir: Path) -> RunRecord:
    """Deploy, seed, publish and drain under every fault; return what happened."""
    stack = deploy(
        TEMPLATE,
        parameters={**SOAK_PARAMETERS, "RyngBaseUrl": simulator.ryng_base_url, "PlumBaseUrl": simulator.plum_base_url},
    )
    boto3.client("sqs").set_queue_attributes(
        QueueUrl=stack.outputs["CancelQueueUrl"], Attributes={"VisibilityTimeout": str(VISIBILITY_TIMEOUT)}
    )
    soak = _Soak(config, stack, simulator, aws.endpoint_url, log_dir)
    with soak.proxy:
        soak.runner.start()
        try:
            soak.drain()
        finally:
            soak.runner.stop()
    simulator.set_chaos("*", None)
    return soak.record()


class _Soak:
    def __init__(
        self, config: SoakConfig, stack: DeployedStack, simulator: ProviderSimulator, aws_url: str, log_dir: Path
    ) -> None:
        self.config, self.stack, self.simulator = config, stack, simulator
        self.events_queue_url = _subscribe_to_final_outcomes(stack.outputs["EventBusName"])
        self.credentials = Credentials()
        seed_accounts(simulator, self.credentials)
        self.requests = scenario(simulator, config)
        simulator.set_chaos(
            "*", Chaos(config.provider_faults, timeout_seconds=PROVIDER_TIMEOUT + 0.5), seed=config.seed
        )
        self.proxy = FaultProxy(
            aws_url,
            config.aws_faults,
            slots=config.workers,
            seed=config.seed,
            keep_bodies=lambda service, operation: service == "dynamodb" and operation.endswith("Item"),
        )
        self.runner = CrashRunner(
            stack.functions["CancelWorker"],
            endpoints=self.proxy.urls,
            log_dir=log_dir,
            timeout=FUNCTION_TIMEOUT,
            plan=config.kills,
            seed=config.seed,
        )
        self.proxy.on_request = self._kill_in_window
        self._window_rng = random.Random(config.seed + 1)  # noqa: S311  (fault injection)
        self.producer = Producer(stack.outputs["CancelQueueUrl"], self.requests)
        self.rotated_at: float | None = None
        self.drained = False

    def _kill_in_window(self, slot: int, service: str, operation: str, body: bytes) -> bool:
        # The idempotency record's completion: the provider has confirmed, the record still says in progress.
        completing = service == "dynamodb" and operation == "UpdateItem" and b'"COMPLETED"' in body
        if completing and self._window_rng.random() < self.config.window_kill_fraction:
            return self.runner.kill_slot(slot, "window")
        return False

    def drain(self) -> None:
        """Publish and run until all is published, CancelQueue is empty and no invocation runs. Rotate the
        credentials halfway."""
        sqs = boto3.client("sqs")
        deadline = time.monotonic() + self.config.drain_seconds
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            self.producer.top_up(self.runner.stats.acked)
            time.sleep(0.25)
            if self.rotated_at is None and self.runner.stats.acked >= self.config.requests // 2:
                rotate(self.simulator, self.credentials)
                self.rotated_at = time.monotonic()
            if not self.producer.done:
                continue
            attributes = sqs.get_queue_attributes(
                QueueUrl=self.stack.outputs["CancelQueueUrl"],
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            waiting = sum(int(value) for value in attributes.values())
            quiet = quiet + 1 if waiting == 0 and self.runner.busy() == 0 else 0
        self.drained = quiet >= 2

    def record(self) -> RunRecord:
        outputs = {str(path.name): path.read_text(errors="replace") for path in self.runner.log_files}
        outputs["handler errors"] = "\n".join(self.runner.stats.handler_errors)
        return RunRecord(
            requests=self.requests,
            message_ids=self.producer.message_ids,
            sim_calls=self.simulator.calls(),
            sim_cancelled={(p, target) for p in ("ryng", "plum") for target in self.simulator.cancelled(p)},
            # CancelQueue first: receiving can make its redrive policy move a message to the DLQ.
            leftovers={letter["message_id"] for letter in drain_queue(self.stack.outputs["CancelQueueUrl"])},
            letters=drain_queue(self.stack.outputs["DeadLetterQueueUrl"]),
            kills=list(self.runner.kills),
            proxy_calls=list(self.proxy.calls),
            outputs=outputs,
            credentials=self.credentials,
            metrics=_outcomes(outputs.values()),
            outcome_records=_outcome_records(self.stack.outputs["OutcomeTableName"]),
            announced=_announced(self.events_queue_url),
            rotated_at=self.rotated_at,
            invocations=self.runner.stats.invocations,
            cold_starts=self.runner.stats.cold_starts,
            drained=self.drained,
        )


def _subscribe_to_final_outcomes(bus: str) -> str:
    """A queue that an ordinary rule on the stack's bus copies every final outcome event to, as a producer's would."""
    sqs, events = boto3.client("sqs"), boto3.client("events")
    queue_url = sqs.create_queue(QueueName="soak-outcome-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["callcancel"], "detail-type": ["Cancel Succeeded", "Cancel Failed"]}
    events.put_rule(Name="soak-final-outcomes", EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule="soak-final-outcomes", EventBusName=bus, Targets=[{"Id": "soak", "Arn": arn}])
    return queue_url


def _announced(queue_url: str) -> dict[str, set[str]]:
    announced: dict[str, set[str]] = defaultdict(set)
    for message in drain_queue(queue_url):
        event = json.loads(message["body"])
        announced[event["detail"]["request_key"]].add(event["detail-type"])
    return dict(announced)


def _outcome_records(table: str) -> dict[str, str]:
    """Every outcome record's `outcome`, by request key (read directly, not through the fault proxy)."""
    pages = boto3.client("dynamodb").get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    return {item["id"]["S"]: item["outcome"]["S"] for page in pages for item in page["Items"]}


def _outcomes(logs: Iterable[str]) -> Counter[str]:
    """The worker's Outcome metric by outcome, and its failed outcome writes, read from its EMF lines as
    CloudWatch would."""
    emf = FunctionOutput()
    for text in logs:
        emf.write(text + "\n")
    outcomes: Counter[str] = Counter()
    for (name, dimensions), value in emf.metrics.items():
        if name == "Outcome":
            outcomes[dict(dimensions).get("outcome", "?")] += int(value)
        elif name in ("OutcomeRecordFailed", "OutcomeEventFailed"):
            outcomes[name] += int(value)
    return outcomes


def drain_queue(queue_url: str, *, visibility: int = 300) -> list[dict[str, Any]]:
    """Receive and delete everything on a queue: id, body, and String message attributes, flattened."""
    sqs = boto3.client("sqs")
    seen: dict[str, dict[str, Any]] = {}
    while True:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=visibility
        ).get("Messages", [])
        if not messages:
            return list(seen.values())
        for message in messages:
            attributes = {k: v.get("StringValue", "") for k, v in message.get("MessageAttributes", {}).items()}
            seen[message["MessageId"]] = {"message_id": message["MessageId"], "body": message["Body"], **attributes}
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


# -- the verdict --------------------------------------------------------------------------------------


def idempotency_id(key: str) -> str:
    """The worker's idempotency record id for a request key (Powertools: prefix#md5 of the key as JSON)."""
    return f"{IDEMPOTENCY_PREFIX}#{hashlib.md5(json.dumps(key).encode()).hexdigest()}"  # noqa: S324  (Powertools' choice)


@dataclass
class Verdict:
    requests: int = 0
    cancelled: int = 0
    dead_lettered: int = 0
    lost: int = 0
    double_calls: int = 0
    window_crashes: int = 0
    ambiguous: int = 0
    leaked_credentials: int = 0
    letters_by_class: Counter[str] = field(default_factory=Counter)
    false_alarms: Counter[str] = field(default_factory=Counter)  # dead letters for calls the provider cancelled
    wrong_class: Counter[str] = field(default_factory=Counter)  # "expected->got"
    unexplained_double_calls: list[str] = field(default_factory=list)
    duplicate_letters: int = 0
    lost_examples: list[str] = field(default_factory=list)
    false_alarm_examples: list[str] = field(default_factory=list)
    # Request keys whose outcome record does not tell their fate: "expected->recorded"
    outcomes_wrong: Counter[str] = field(default_factory=Counter)
    outcomes_wrong_examples: list[str] = field(default_factory=list)
    # Request keys whose fate was not announced: the detail type expected -> how many
    announcements_missing: Counter[str] = field(default_factory=Counter)
    announcements_missing_examples: list[str] = field(default_factory=list)
    leaks: Counter[str] = field(default_factory=Counter)  # where -> occurrences
    calls_after_unseen_success: int = 0

    def summary(self, seconds: float) -> str:
        return (
            f"requests={self.requests} cancelled={self.cancelled} dead_lettered={self.dead_lettered}"
            f" lost={self.lost} double_calls={self.double_calls} window_crashes={self.window_crashes}"
            f" ambiguous={self.ambiguous} leaked_credentials={self.leaked_credentials}"
            f" outcomes_wrong={sum(self.outcomes_wrong.values())}"
            f" announcements_missing={sum(self.announcements_missing.values())} seconds={seconds:.0f}"
        )


def _target_of(body: str) -> tuple[str, str] | None:
    try:
        request = json.loads(body)
        if request["provider"] == "ryng":
            return "ryng", str(request["call_id"])
        return "plum", f"{request['application_id']}/{request['deployment_id']}"
    except (ValueError, KeyError, TypeError):
        return None


def judge(record: RunRecord) -> Verdict:
    verdict = Verdict(requests=len(record.requests))
    letters = _letters_by_source(record, verdict)
    for request, message_id in zip(record.requests, record.message_ids, strict=True):
        _judge_request(request, message_id, letters.get(message_id), record, verdict)
    _judge_calls(record, verdict)
    _judge_leaks(record, verdict)
    if record.outcome_records is not None:
        _judge_outcome_records(record, record.outcome_records, letters, verdict)
    if record.announced is not None:
        _judge_announcements(record, record.announced, letters, verdict)
    return verdict


def _fates(record: RunRecord, letters: dict[str, dict[str, Any]]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per request key: its fates (`cancelled` if the provider cancelled it, else the classes it was dead-lettered
    with), and the classes a dead letter may also show because it said an earlier attempt may have cancelled it
    (the worker could not know). Repeats of one request share its key."""
    fates: dict[str, set[str]] = defaultdict(set)
    acceptable: dict[str, set[str]] = defaultdict(set)
    for request, message_id in zip(record.requests, record.message_ids, strict=True):
        key = request.request_id or message_id
        letter = letters.get(message_id)
        if (request.provider, request.target) in record.sim_cancelled:
            fates[key].add("cancelled")
            if letter is not None and MAY_HAVE_CANCELLED.search(letter.get("failure_reason", "")):
                acceptable[key].add(letter.get("failure_class", "unclassified"))
        elif letter is not None:
            fates[key].add(letter.get("failure_class", "unclassified"))
    return fates, acceptable


def _judge_announcements(
    record: RunRecord, announced: dict[str, set[str]], letters: dict[str, dict[str, Any]], verdict: Verdict
) -> None:
    """Each request key's fate against the events put for it: `Cancel Succeeded`, or `Cancel Failed`."""
    fates, acceptable = _fates(record, letters)
    for key, fate in sorted(fates.items()):
        if "unclassified" in fate:
            continue  # moved by the redrive policy: no worker ever ended it
        expected = {"Cancel Succeeded"} if "cancelled" in fate else {"Cancel Failed"}
        if acceptable[key]:
            expected.add("Cancel Failed")
        if not expected & announced.get(key, set()):
            wanted = " or ".join(sorted(expected))
            verdict.announcements_missing[wanted] += 1
            if len(verdict.announcements_missing_examples) < 5:
                verdict.announcements_missing_examples.append(f"{key}: {wanted}, got {sorted(announced.get(key, []))}")


def _judge_outcome_records(
    record: RunRecord, recorded: dict[str, str], letters: dict[str, dict[str, Any]], verdict: Verdict
) -> None:
    """Each request key's outcome record against its fate (see `_fates`)."""
    fates, acceptable = _fates(record, letters)
    for key, fate in sorted(fates.items()):
        expected = "cancelled" if "cancelled" in fate else "/".join(sorted(fate))
        outcome = recorded.get(key, "none")
        if outcome == expected or outcome in fate | acceptable[key] or "unclassified" in fate:
            continue  # a message the redrive policy moved (killed every time) never reached a worker's end
        verdict.outcomes_wrong[f"{expected}->{outcome}"] += 1
        if len(verdict.outcomes_wrong_examples) < 5:
            verdict.outcomes_wrong_examples.append(f"{key}: {expected}, recorded {outcome}")


def _letters_by_source(record: RunRecord, verdict: Verdict) -> dict[str, dict[str, Any]]:
    by_source: dict[str, dict[str, Any]] = {}
    for letter in record.letters:
        # The worker's letters name their source; the redrive policy's keep the message itself (no class).
        source = letter.get("source_message_id") or letter["message_id"]
        if source in by_source:
            verdict.duplicate_letters += 1
        by_source[source] = letter
    return by_source


def _judge_request(
    request: SoakRequest, message_id: str, letter: dict[str, Any] | None, record: RunRecord, verdict: Verdict
) -> None:
    target = (request.provider, request.target)
    cancelled = target in record.sim_cancelled
    if letter is not None:
        failure_class = letter.get("failure_class", "unclassified")
        verdict.dead_lettered += 1
        verdict.letters_by_class[failure_class] += 1
        explained = bool(MAY_HAVE_CANCELLED.search(letter.get("failure_reason", "")))
        verdict.ambiguous += explained
        if cancelled and not explained:
            verdict.false_alarms[failure_class] += 1
            if len(verdict.false_alarm_examples) < 5:
                answers = " ".join(
                    f"{call.status}" for call in record.sim_calls if (call.provider, call.target) == target
                )
                verdict.false_alarm_examples.append(
                    f"{message_id} {request.body}: {failure_class}, {letter.get('failure_reason', '')!r};"
                    f" the provider answered {answers}"
                )
        elif not cancelled and failure_class not in (request.expect, "exhausted", "unclassified"):
            verdict.wrong_class[f"{request.expect}->{failure_class}"] += 1
    elif cancelled:
        verdict.cancelled += 1
    else:
        verdict.lost += 1
        where = "still on the queue" if message_id in record.leftovers else "nowhere"
        if len(verdict.lost_examples) < 5:
            verdict.lost_examples.append(f"{message_id} {request.body} ({where})")


def _judge_calls(record: RunRecord, verdict: Verdict) -> None:
    """Second provider calls after a confirmed cancel, and the crashes in the window that explain them.

    A 2xx answer is a confirmation unless the worker treated it as a failure (it timed out first: its next
    step on the idempotency record was a release or a delete, or its process died before the answer was
    sent). A kill after the answer was sent and before the record was completed is a crash in the window.
    """
    ops = _record_ops(record.proxy_calls)
    calls: dict[tuple[str, str], list[SimCall]] = defaultdict(list)
    for call in record.sim_calls:
        if call.target is not None:
            calls[call.provider, call.target].append(call)
    kills: dict[tuple[str, str], list[Kill]] = defaultdict(list)
    for kill in record.kills:
        for body in kill.bodies:
            target = _target_of(body)
            if target is not None:
                kills[target].append(kill)
    window_kills: set[int] = set()
    for request, message_id in zip(record.requests, record.message_ids, strict=True):
        target = (request.provider, request.target)
        if target not in calls:
            continue
        history = _History(calls.pop(target), ops.get(idempotency_id(request.request_id or message_id), []))
        confirmation, crashes = history.confirmation(kills.get(target, []))
        window_kills.update(id(kill) for kill in crashes)
        verdict.calls_after_unseen_success += history.calls_after_unseen_success(confirmation)
        for call in history.calls_after(confirmation):
            verdict.double_calls += 1
            if not history.explained(call, crashes):
                verdict.unexplained_double_calls.append(f"{target[0]}/{target[1]} HTTP {call.status}")
    verdict.window_crashes = len(window_kills)


@dataclass(frozen=True)
class _RecordOp:
    """A worker's step on an idempotency record, as the proxy saw it."""

    at: float
    kind: str  # lock | complete | release | delete
    done: bool  # carried out by DynamoDB (False: refused, or dropped before it got there)


def _record_ops(proxy_calls: Iterable[ProxiedCall]) -> dict[str, list[_RecordOp]]:
    found: dict[str, list[_RecordOp]] = defaultdict(list)
    for call in proxy_calls:
        if not call.body or call.operation not in ("PutItem", "UpdateItem", "DeleteItem"):
            continue
        request = json.loads(call.body)
        record_id = (request.get("Key") or request.get("Item") or {}).get("id", {}).get("S")
        status = (request.get("ExpressionAttributeValues") or {}).get(":status", {}).get("S")
        kind = {"PutItem": "lock", "DeleteItem": "delete"}.get(call.operation) or (
            "complete" if status == "COMPLETED" else "release"
        )
        done = call.fault in (None, "lost_answer") and call.status == 200
        found[record_id].append(_RecordOp(call.at, kind, done))
    return found


@dataclass
class _History:
    """One target's provider calls and its idempotency record's steps, in time order."""

    calls: list[SimCall]
    ops: list[_RecordOp]

    def confirmation(self, kills: list[Kill]) -> tuple[SimCall | None, list[Kill]]:
        """The first 2xx the worker took for a cancel, and the kills in the window after it."""
        for answer in (c for c in self.calls if 200 <= c.status < 300 and c.delay < PROVIDER_TIMEOUT):
            sent = answer.at + answer.delay
            # The worker's next step on the record after this call: its completion, or a release or a delete
            # (it timed out first), or the next attempt's lock (it died around the answer).
            step = next((op for op in self.ops if op.at > answer.at), None)
            # The invocation that made this call, killed after the answer was sent and before its next step.
            kill = next((k for k in kills if k.started <= answer.at and sent < k.at < (step.at if step else inf)), None)
            if kill is None and (step is None or step.kind != "complete"):
                continue  # a cancel the worker never heard of
            completed_at = step.at if step is not None and step.kind == "complete" and step.done else inf
            return answer, [k for k in kills if k.started <= answer.at and sent < k.at < completed_at]
        return None, []

    def calls_after(self, confirmation: SimCall | None) -> list[SimCall]:
        return [] if confirmation is None else [c for c in self.calls if c.at > confirmation.at]

    def calls_after_unseen_success(self, confirmation: SimCall | None) -> int:
        first = next((c for c in self.calls if 200 <= c.status < 300), None)
        if first is None or first is confirmation:
            return 0
        end = confirmation.at if confirmation else float("inf")
        return sum(first.at < c.at <= end for c in self.calls)

    def explained(self, call: SimCall, crashes: list[Kill]) -> bool:
        if any(kill.at < call.at for kill in crashes):
            return True
        # The completion was refused or dropped (after the SDK's retries), and none reached the table before.
        completions = [op for op in self.ops if op.kind == "complete" and op.at < call.at]
        return bool(completions) and not any(op.done for op in completions)


def _judge_leaks(record: RunRecord, verdict: Verdict) -> None:
    texts = dict(record.outputs)
    texts["dead letters"] = json.dumps(record.letters)
    for where, text in texts.items():
        for value in record.credentials.every_value:
            found = text.count(value)
            if found:
                verdict.leaks[where] += found
                verdict.leaked_credentials += found


def details(record: RunRecord, verdict: Verdict) -> list[str]:
    """What the run did and found, for people; the summary line follows it."""
    kills = Counter(kill.kind for kill in record.kills)
    aws = Counter((call.service, call.fault) for call in record.proxy_calls if call.fault)
    provider = Counter(("late" if c.delay >= PROVIDER_TIMEOUT else str(c.status or "reset")) for c in record.sim_calls)
    lines = [
        f"invocations={record.invocations} cold_starts={record.cold_starts} kills: "
        + " ".join(f"{kind}={n}" for kind, n in sorted(kills.items())),
        "aws faults: " + " ".join(f"{s}/{f}={n}" for (s, f), n in sorted(aws.items())),
        "provider answers: " + " ".join(f"{k}={n}" for k, n in sorted(provider.items())),
        "worker outcomes: " + " ".join(f"{k}={n}" for k, n in sorted(record.metrics.items())),
        "dead letters: " + (" ".join(f"{k}={n}" for k, n in sorted(verdict.letters_by_class.items())) or "none"),
    ]
    exhausted = Counter(
        _reason_shape(letter.get("failure_reason", ""))
        for letter in record.letters
        if letter.get("failure_class") == "exhausted"
    )
    if exhausted:
        lines.append("exhausted, by last reason: " + "; ".join(f"{n} x {why}" for why, n in exhausted.most_common(4)))
    if not record.drained:
        lines.append(f"NOT DRAINED: {len(record.leftovers)} message(s) still on CancelQueue at the deadline")
    findings = {
        "false alarms (dead-lettered, but the provider cancelled it; the reason does not say it may have)": (
            verdict.false_alarms
        ),
        "wrong class (expected->got)": verdict.wrong_class,
        "credentials found in": verdict.leaks,
    }
    for title, counter in findings.items():
        if counter:
            lines.append(f"FOUND {title}: " + " ".join(f"{k}={n}" for k, n in sorted(counter.items())))
    if verdict.unexplained_double_calls:
        lines.append(
            f"FOUND {len(verdict.unexplained_double_calls)} double call(s) with no crash in the window before them: "
            + ", ".join(verdict.unexplained_double_calls[:5])
        )
    if verdict.duplicate_letters:
        lines.append(
            f"{verdict.duplicate_letters} request(s) on the DLQ twice (a crash or a lost answer after the dead-letter"
            " send; the CLI and the digest count a source_message_id once)"
        )
    if verdict.calls_after_unseen_success:
        lines.append(
            f"calls after a success the worker never saw (a read timeout): {verdict.calls_after_unseen_success}"
        )
    lines.extend(f"LOST {example}" for example in verdict.lost_examples)
    lines.extend(f"FALSE ALARM {example}" for example in verdict.false_alarm_examples)
    best_effort = (
        ("outcome records that do not tell the request's fate (expected->recorded)", "OutcomeRecordFailed", "OUTCOME",
         verdict.outcomes_wrong, verdict.outcomes_wrong_examples),
        ("fates never announced (the event expected)", "OutcomeEventFailed", "UNANNOUNCED",
         verdict.announcements_missing, verdict.announcements_missing_examples),
    )  # fmt: skip
    for title, metric, label, found, examples in best_effort:
        if found:
            counts = " ".join(f"{k}={n}" for k, n in sorted(found.items()))
            lines.append(f"FOUND {title}: {counts}; failed writes counted ({metric}): {record.metrics.get(metric, 0)}")
            lines.extend(f"{label} {example}" for example in examples)
    return lines


def _reason_shape(reason: str) -> str:
    """A failure reason without its ids and counts, so that like reasons group together."""
    reason = re.sub(r"^gave up after \d+ attempts: ", "", reason)
    return re.sub(r"request \S+ is", "request ... is", reason)[:80]


def main() -> int:
    started = time.monotonic()
    config = SoakConfig.from_env()
    with (
        EmbeddedAws() as aws,
        ProviderSimulator() as simulator,
        tempfile.TemporaryDirectory(prefix="callcancel-soak-") as logs,
    ):
        os.environ.update(aws.environment())
        try:
            record = run(config, aws, simulator, Path(logs))
        except DeployError as exc:
            print(f"error: the template cannot be deployed locally: {exc}", file=sys.stderr)
            return 2
        verdict = judge(record)
        lines = details(record, verdict)
    for value in record.credentials.every_value:  # what this prints is an output too
        verdict.leaked_credentials += sum(text.count(value) for text in lines)
    print("\n".join(lines))
    print(verdict.summary(time.monotonic() - started))
    # An outcome record may be wrong only where its write failed, which the worker counted.
    wrong_records = sum(verdict.outcomes_wrong.values()) > record.metrics.get("OutcomeRecordFailed", 0)
    unannounced = sum(verdict.announcements_missing.values()) > record.metrics.get("OutcomeEventFailed", 0)
    return 1 if verdict.lost or verdict.leaked_credentials or wrong_records or unannounced else 0


if __name__ == "__main__":
    sys.exit(main())
