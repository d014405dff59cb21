"""When our own bookkeeping fails, or an invocation dies, the provider's answer still decides the outcome.

Each case fails an AWS call on purpose (a spy in front of moto server) or kills a worker process with SIGKILL,
then checks what the redelivery does: a cancel the provider confirmed is never reported as a failure, and a
"does not exist" after an attempt that may have cancelled says so.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from callcancel_local.lambda_runtime import LocalLambdaContext
from callcancel_local.simulator import ProviderSimulator
from tests.integration.conftest import PLUM_EMAIL, PurgeStack, WorkerStack
from tests.support import REPO

pytestmark = pytest.mark.integration

RYNG = {"provider": "ryng", "account": "acme"}
PLUM = {"provider": "plum", "account": "acme", "application_id": "app1", "deployment_id": "dep1"}


@pytest.fixture
def fail_aws(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[str]]:
    """`fail_aws("UpdateItem")`: every call of that operation is refused (HTTP 500) from now on; returns the log."""
    make_api_call = BaseClient._make_api_call
    failing: set[str] = set()
    refused: list[str] = []

    def spy(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation in failing:
            refused.append(operation)
            error = {"Error": {"Code": "InternalServerError", "Message": "injected"}}
            raise ClientError(error, operation)  # type: ignore[arg-type]
        return make_api_call(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", spy)

    def fail(operation: str) -> list[str]:
        failing.add(operation)
        return refused

    return fail


def test_a_confirmed_cancel_whose_record_cannot_be_completed_is_acked_as_cancelled(
    stack: WorkerStack, simulator: ProviderSimulator, fail_aws: Callable[[str], list[str]]
) -> None:
    # Given Ryng will cancel the call, but the idempotency table refuses the completing UpdateItem
    simulator.add_ryng_calls("acme", "c-1")
    refused = fail_aws("UpdateItem")
    stack.send({**RYNG, "call_id": "c-1"})

    # When the worker carries it out
    result = stack.run_batch()

    # Then it is acked as cancelled, not retried into "Call ID does not exist"
    assert refused == ["UpdateItem"]
    assert result.response == {"batchItemFailures": []}
    assert stack.queue_depth() == 0
    assert stack.dead_letters() == []
    assert simulator.cancelled("ryng") == ["c-1"]


@pytest.mark.parametrize(
    ("body", "setup", "failure_class"),
    [
        ({**RYNG, "call_id": "ghost"}, None, "not_found"),
        ({**PLUM, "deployment_id": "ghost"}, None, "not_found"),
        ({**RYNG, "account": "nobody", "call_id": "c-1"}, None, "config"),
    ],
    ids=["ryng not_found", "plum not_found", "config"],
)
def test_a_final_failure_keeps_its_class_when_the_lock_cannot_be_deleted(
    stack: WorkerStack,
    simulator: ProviderSimulator,
    fail_aws: Callable[[str], list[str]],
    body: dict[str, Any],
    setup: Any,
    failure_class: str,
) -> None:
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1")
    refused = fail_aws("DeleteItem")
    stack.send(body)

    result = stack.run_batch()

    # Dead-lettered at once with its own class: never retried into "being carried out by another delivery"
    assert refused == ["DeleteItem"]
    assert result.response == {"batchItemFailures": []}
    [letter] = stack.dead_letters()
    assert letter["failure_class"] == failure_class
    assert letter["attempts"] == "1"


def _cancelled_after_our_timeout(
    stack: WorkerStack, simulator: ProviderSimulator, body: dict[str, Any] | None = None
) -> None:
    """One attempt that timed out (PROVIDER_TIMEOUT_SECONDS=2) on a cancel Ryng then carried out."""
    simulator.add_ryng_calls("acme", "c-1")
    simulator.set_latency("ryng", 2.5)
    stack.send(body or {**RYNG, "call_id": "c-1"})
    assert len(stack.run_batch().failed) == 1
    simulator.set_latency("ryng", 0)
    deadline = time.monotonic() + 10
    while not simulator.calls("ryng") and time.monotonic() < deadline:
        time.sleep(0.05)  # Ryng carries out the late request, after we stopped waiting for its answer


def test_not_found_after_a_read_timeout_says_the_earlier_attempt_may_have_cancelled_it(
    stack: WorkerStack, simulator: ProviderSimulator
) -> None:
    # Given Ryng cancels the call but answers after our read timeout
    _cancelled_after_our_timeout(stack, simulator)

    # When the retry is told the call does not exist (it was our own cancel)
    stack.run_until_empty()

    # Then the dead letter says that the earlier attempt may have cancelled it
    assert simulator.cancelled("ryng") == ["c-1"]
    [letter] = stack.dead_letters()
    assert letter["failure_class"] == "not_found"
    assert "earlier attempt of this request may have cancelled it" in letter["failure_reason"]
    assert letter["attempts"] == "2"


@pytest.mark.parametrize(
    ("after", "failure_class"),
    [("not_found", "not_found"), ("503 until the end", "exhausted")],
)
def test_a_later_transient_failure_keeps_what_the_timeout_may_have_done(
    stack: WorkerStack, simulator: ProviderSimulator, after: str, failure_class: str
) -> None:
    # Given Ryng cancels the call but answers after our read timeout, then answers 503 (MAX_ATTEMPTS=3)
    _cancelled_after_our_timeout(stack, simulator)
    simulator.inject("ryng", 503, times=1 if after == "not_found" else -1)
    assert len(stack.run_batch().failed) == 1

    # When the last attempt ends
    stack.run_until_empty()

    # Then its dead letter still says that the first attempt may have cancelled it
    [letter] = stack.dead_letters()
    assert letter["failure_class"] == failure_class
    assert "earlier attempt of this request may have cancelled it" in letter["failure_reason"]
    assert letter["attempts"] == "3"


def test_a_second_copy_of_the_request_is_told_too_that_the_first_may_have_cancelled(
    stack: WorkerStack, simulator: ProviderSimulator
) -> None:
    # Given a request whose first attempt timed out on a cancel Ryng carried out, and whose retry was then
    # dead-lettered as not_found, saying so
    body = {**RYNG, "call_id": "c-1", "request_id": "order-7:cancel"}
    _cancelled_after_our_timeout(stack, simulator, body)
    stack.run_until_empty()

    # When the producer sends the same request again (its own retry)
    stack.send(body)
    stack.run_until_empty()

    # Then the second copy's dead letter says it too: the first copy's dead letter did not erase the trace
    letters = stack.dead_letters()
    assert [letter["failure_class"] for letter in letters] == ["not_found", "not_found"]
    assert all(
        "earlier attempt of this request may have cancelled it" in letter["failure_reason"] for letter in letters
    )
    assert simulator.cancelled("ryng") == ["c-1"]


def test_the_idempotency_store_is_configured_before_the_first_batch(stack: WorkerStack) -> None:
    # Powertools configures it on first use, from several records' threads at once; half-configured, it
    # once wrote a lock without its payload hash and with a 1 h expiry.
    from callcancel.settings import Settings
    from callcancel.worker import CancelWorker, worker_for

    worker_for.cache_clear()
    worker: CancelWorker = worker_for(Settings.from_env())
    records = worker._records
    assert records is not None and records.configured
    assert records.payload_validation_enabled
    assert records.expires_after_seconds == 24 * 60 * 60


def test_not_found_on_a_first_attempt_says_nothing_of_earlier_attempts(stack: WorkerStack) -> None:
    stack.send({**RYNG, "call_id": "ghost"})
    stack.run_batch()
    [letter] = stack.dead_letters()
    assert letter["failure_reason"] == "ryng answered HTTP 500: Call ID does not exist"


def test_a_second_copy_in_the_same_batch_waits_for_the_first_and_is_a_duplicate(
    stack: WorkerStack, simulator: ProviderSimulator
) -> None:
    # Given two messages with one request_id, in one batch
    simulator.add_ryng_calls("acme", "c-1")
    simulator.set_latency("ryng", 0.3)
    request = {**RYNG, "call_id": "c-1", "request_id": "order-42:cancel"}
    stack.send(request)
    stack.send(request)

    result = stack.run_batch()

    # Then the copy waits for the first to finish in this invocation, and replays its result: no retry
    assert len(result.event["Records"]) == 2
    assert result.response == {"batchItemFailures": []}
    assert stack.queue_depth() == 0
    assert stack.dead_letters() == []
    assert len(simulator.calls("ryng")) == 1


@pytest.fixture
def child_env(stack: WorkerStack) -> Iterator[dict[str, str]]:
    # Provider timeouts that a loaded machine still meets (the call's deadline is their sum, 1.5 s), and an
    # attempt budget (2 x 1.5 + 2 s) that leaves a 7 s invocation time to start its record; its lock expires soon.
    yield {
        **os.environ,
        "PROVIDER_TIMEOUT_SECONDS": "1",
        "PROVIDER_CONNECT_TIMEOUT_SECONDS": "0.5",
        "CHILD_TIMEOUT_SECONDS": "7",
        "PYTHONPATH": str(REPO),
    }


def kill_when(env: dict[str, str], event: dict[str, Any], operations: str) -> None:
    """Run one invocation in a child process and SIGKILL it as it reaches one of `operations` (see worker_child)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.worker_child"],
        env={**env, "CHILD_HANG_ON": operations},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(json.dumps(event))
    child.stdin.close()
    lines = []
    while (line := child.stdout.readline()) and not line.startswith("hanging"):
        lines.append(line)  # the handler's own output (metrics) before it reaches the operation
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert line.strip().removeprefix("hanging ") in {o.partition("#")[0] for o in operations.split()}, lines


def test_killed_after_the_provider_confirmed_is_not_reported_as_a_plain_failure(
    stack: WorkerStack, simulator: ProviderSimulator, child_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an invocation killed after Ryng confirmed, before the idempotency record completed
    for name in ("PROVIDER_TIMEOUT_SECONDS", "PROVIDER_CONNECT_TIMEOUT_SECONDS"):
        monkeypatch.setenv(name, child_env[name])
    simulator.add_ryng_calls("acme", "c-1")
    stack.send({**RYNG, "call_id": "c-1"})
    event = stack.source.receive()
    assert event is not None
    kill_when(child_env, event, "UpdateItem")
    lock_expired = time.monotonic() + 7.2  # the lock was taken less than the child's 7 s timeout ago
    assert simulator.cancelled("ryng") == ["c-1"]

    # When Lambda redelivers it while the dead invocation's lock has not expired yet
    record = event["Records"][0]
    record["attributes"]["ApproximateReceiveCount"] = "2"
    first = stack.handler({"Records": [record]}, LocalLambdaContext(timeout_seconds=60))

    # Then it waits for the lock instead of spending its attempts on it
    assert first == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    assert stack.dead_letters() == []
    assert len(simulator.calls("ryng")) == 1

    # And once the lock has expired, the redelivery told "Call ID does not exist" says why
    time.sleep(max(0.0, lock_expired - time.monotonic()))
    record["attributes"]["ApproximateReceiveCount"] = "3"
    assert stack.handler({"Records": [record]}, LocalLambdaContext(timeout_seconds=60)) == {"batchItemFailures": []}
    [letter] = stack.dead_letters()
    assert letter["failure_class"] == "not_found"
    assert "earlier attempt of this request may have cancelled it" in letter["failure_reason"]


def test_two_nightly_requests_with_one_request_id_and_different_targets(purge: PurgeStack) -> None:
    stack = purge.worker
    first = {**RYNG, "call_id": "c-1", "request_id": "r-1", "when": "nightly"}
    stack.send(first)
    stack.run_batch()
    stack.send({**first, "call_id": "c-2"})
    stack.send({**first, "reason": "sent again"})  # the same target again
    stack.run_until_empty()

    # The first deferral is kept; another target under its key is invalid; the same target is a duplicate
    assert purge.deferred_ids() == {"r-1"}
    [letter] = stack.dead_letters()
    assert letter["failure_class"] == "invalid"
    assert json.loads(letter["body"])["call_id"] == "c-2"
    assert "r-1" in letter["failure_reason"]
    assert stack.queue_depth() == 0
    purge.run()
    assert [(m["call_id"], m["request_id"]) for m in purge.queued()] == [("c-1", "r-1")]
