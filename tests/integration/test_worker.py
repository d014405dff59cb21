"""The worker handler on SQS events from real receives (moto server), against the provider simulator."""

import io
import json
from typing import Any

import pytest

from callcancel_local.lambda_runtime import LocalLambdaContext
from callcancel_local.simulator import ProviderSimulator
from tests.integration.conftest import PLUM_EMAIL, PLUM_KEY, RYNG_TOKEN, WorkerStack

pytestmark = pytest.mark.integration

RYNG = {"provider": "ryng", "account": "acme"}
PLUM = {"provider": "plum", "account": "acme", "application_id": "app1", "deployment_id": "dep1"}


def test_ryng_and_plum_cancels_are_carried_out_and_acked(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    # Given a pending Ryng call and a Plum deployment with pending calls
    simulator.add_ryng_calls("acme", "c-1")
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1", pending=3)
    stack.send({**RYNG, "call_id": "c-1"})
    stack.send(PLUM)

    # When the worker runs one batch
    result = stack.run_batch()

    # Then both are cancelled at the providers, deleted from the queue, and nothing is dead-lettered
    assert result.response == {"batchItemFailures": []}
    assert simulator.cancelled("ryng") == ["c-1"]
    assert simulator.cancelled("plum") == ["app1/dep1"]
    assert stack.queue_depth() == 0
    assert stack.dead_letters() == []


def test_integer_call_id_is_sent_as_its_decimal_string(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    simulator.add_ryng_calls("acme", "12345")
    stack.send({**RYNG, "call_id": 12345})
    stack.run_batch()
    assert simulator.cancelled("ryng") == ["12345"]


def _setup_bad_token(stack: WorkerStack, sim: ProviderSimulator) -> None:
    stack.put_secret("callcancel/ryng/acme", {"subdomain": "acme", "access_token": "wrong"})


def _setup_plum_denied(stack: WorkerStack, sim: ProviderSimulator) -> None:
    sim.add_plum_account(PLUM_EMAIL, PLUM_KEY, permitted=False)


def _setup_plum_xml(stack: WorkerStack, sim: ProviderSimulator) -> None:
    sim.plum_xml_errors = True


def _inject(provider: str, status: int, **kwargs: Any) -> Any:
    return lambda stack, sim: sim.inject(provider, status, times=-1, **kwargs)


DEAD_LETTER_CASES = [
    # id, body, setup, failure_class, http_status, provider_message, provider calls
    ("not json", "{not json", None, "invalid", None, None, 0),
    ("unknown field", {**RYNG, "call_id": "c-1", "priority": "high"}, None, "invalid", None, None, 0),
    ("path injection", {**RYNG, "call_id": "../x"}, None, "invalid", None, None, 0),
    ("no secret", {**RYNG, "account": "nobody", "call_id": "c-1"}, None, "config", None, None, 0),
    ("ryng unknown call", {**RYNG, "call_id": "ghost"}, None, "not_found", "500", "Call ID does not exist", 1),
    (
        "plum unknown deployment (JSON)",
        {**PLUM, "deployment_id": "ghost"},
        None,
        "not_found",
        "404",
        "No deployment was found by that application id and deployment id.",
        1,
    ),
    (
        "plum unknown deployment (XML)",
        {**PLUM, "deployment_id": "ghost"},
        _setup_plum_xml,
        "not_found",
        "404",
        "No deployment was found by that application id and deployment id.",
        1,
    ),
    ("ryng bad token", {**RYNG, "call_id": "c-1"}, _setup_bad_token, "auth", "403", "Unauthorized Token", 2),
    ("plum 403", PLUM, _setup_plum_denied, "auth", "403", None, 2),
    ("plum 405", PLUM, _inject("plum", 405, body={"error": "Method not allowed"}), "rejected", "405", None, 1),
    (
        "ryng 200 error true",
        {**RYNG, "call_id": "c-1"},
        _inject("ryng", 200, body={"error": True, "message": "Call already dialled"}),
        "rejected",
        "200",
        "Call already dialled",
        1,
    ),
    (
        "ryng redirect",
        {**RYNG, "call_id": "c-1"},
        _inject("ryng", 302, headers={"Location": "http://127.0.0.1:9/elsewhere"}),
        "rejected",
        "302",
        None,
        1,
    ),
]


def send_dead_letter_case(
    stack: WorkerStack, simulator: ProviderSimulator, body: dict[str, Any] | str, setup: Any
) -> tuple[str, str]:
    """Given one of DEAD_LETTER_CASES: the provider state it needs, and its message sent. Returns (body, id)."""
    simulator.add_ryng_calls("acme", "c-1")
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1")
    if setup:
        setup(stack, simulator)
    text = body if isinstance(body, str) else json.dumps(body)
    return text, stack.send(text)


@pytest.mark.parametrize(
    ("body", "setup", "failure_class", "http_status", "provider_message", "calls"),
    [case[1:] for case in DEAD_LETTER_CASES],
    ids=[case[0] for case in DEAD_LETTER_CASES],
)
def test_final_failures_are_dead_lettered_at_once_with_their_reason(
    stack: WorkerStack,
    simulator: ProviderSimulator,
    body: dict[str, Any] | str,
    setup: Any,
    failure_class: str,
    http_status: str | None,
    provider_message: str | None,
    calls: int,
) -> None:
    text, message_id = send_dead_letter_case(stack, simulator, body, setup)

    result = stack.run_batch()

    assert result.response == {"batchItemFailures": []}, "a dead-lettered message is done, not failed"
    assert stack.queue_depth() == 0
    [letter] = stack.dead_letters()
    assert letter["body"] == text
    assert letter["failure_class"] == failure_class
    assert letter["failure_reason"]
    assert letter["attempts"] == "1"
    assert letter["source_message_id"] == message_id
    assert letter["failed_at"].endswith("+00:00")
    assert letter.get("http_status") == http_status
    if provider_message:
        assert letter["provider_message"] == provider_message
    assert len(simulator.calls()) == calls


@pytest.mark.parametrize(
    ("status", "extra"),
    [(500, {}), (503, {}), (408, {}), (429, {})],
)
def test_transient_answers_are_batch_item_failures_and_stay_on_the_queue(
    stack: WorkerStack, simulator: ProviderSimulator, status: int, extra: dict[str, Any]
) -> None:
    simulator.add_ryng_calls("acme", "c-1")
    simulator.inject("ryng", status, times=1)
    message_id = stack.send({**RYNG, "call_id": "c-1"})

    result = stack.run_batch()

    assert result.response == {"batchItemFailures": [{"itemIdentifier": message_id}]}
    assert stack.dead_letters() == []
    # RETRY_BASE_SECONDS=0 makes the backoff 0 s: the next receive retries it, and the provider has recovered.
    assert stack.run_batch().response == {"batchItemFailures": []}
    assert simulator.cancelled("ryng") == ["c-1"]


def test_connection_errors_and_timeouts_are_retried(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    simulator.add_ryng_calls("acme", "c-1", "c-2")
    simulator.inject_disconnect("ryng", times=1)
    stack.send({**RYNG, "call_id": "c-1"})
    assert len(stack.run_batch().failed) == 1

    simulator.set_latency("ryng", 3)  # PROVIDER_TIMEOUT_SECONDS is 2
    stack.send({**RYNG, "call_id": "c-2"})
    results = stack.run_batch()
    assert len(results.failed) >= 1
    simulator.set_latency("ryng", 0)
    stack.run_until_empty()
    assert sorted(simulator.cancelled("ryng")) == ["c-1", "c-2"]
    assert stack.dead_letters() == []


def test_a_partial_batch_reports_only_the_transient_failures(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    simulator.add_ryng_calls("acme", "ok-1", "ok-2")
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1")
    simulator.inject("plum", 503, times=-1)
    ok = [stack.send({**RYNG, "call_id": "ok-1"}), stack.send({**RYNG, "call_id": "ok-2"})]
    failing = stack.send(PLUM)
    invalid = stack.send({"provider": "ryng"})

    result = stack.run_batch()

    assert result.response == {"batchItemFailures": [{"itemIdentifier": failing}]}
    assert set(result.deleted) == {*ok, invalid}
    assert [letter["failure_class"] for letter in stack.dead_letters()] == ["invalid"]


def test_transient_failures_end_exhausted_after_max_attempts(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    # Given an outage that does not recover (MAX_ATTEMPTS=3)
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1")
    simulator.inject("plum", 500, times=-1, body={"error": "database error"})
    body = json.dumps(PLUM)
    stack.send(body)

    # When the worker keeps receiving it
    results = stack.run_until_empty()

    # Then it was tried exactly MAX_ATTEMPTS times and dead-lettered as exhausted
    assert len(results) == 3
    assert len(simulator.calls("plum")) == 3
    [letter] = stack.dead_letters()
    assert letter["body"] == body
    assert letter["failure_class"] == "exhausted"
    assert letter["attempts"] == "3"
    assert letter["http_status"] == "500"
    assert letter["provider_message"] == "database error"


def test_retry_after_holds_the_message_back(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    simulator.add_ryng_calls("acme", "c-1")
    simulator.inject("ryng", 429, times=1, headers={"Retry-After": "120"})
    stack.send({**RYNG, "call_id": "c-1"})

    stack.run_batch()

    # Without Retry-After the backoff is 0 s here (RETRY_BASE_SECONDS=0); with it, the message stays hidden.
    assert stack.source.receive() is None
    assert stack.queue_depth() == 1


def test_a_rotated_secret_is_picked_up_after_one_denial(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    # Given the worker has the current token cached
    simulator.add_ryng_calls("acme", "c-1", "c-2")
    stack.send({**RYNG, "call_id": "c-1"})
    stack.run_batch()

    # When the token is rotated at Ryng and in Secrets Manager
    simulator.add_ryng_account("acme", "rotated-token")
    stack.put_secret("callcancel/ryng/acme", {"subdomain": "acme", "access_token": "rotated-token"})
    stack.send({**RYNG, "call_id": "c-2"})
    result = stack.run_batch()

    # Then the stale token is denied once, the secret re-read, and the cancel succeeds
    assert result.response == {"batchItemFailures": []}
    assert [call.status for call in simulator.calls("ryng")] == [200, 403, 200]
    assert simulator.cancelled("ryng") == ["c-1", "c-2"]


def test_the_secret_is_fetched_once_for_a_whole_batch(
    stack: WorkerStack, simulator: ProviderSimulator, secret_fetches: list[str]
) -> None:
    calls = [f"c-{i}" for i in range(10)]
    simulator.add_ryng_calls("acme", *calls)
    simulator.set_latency("ryng", 0.05)
    for call_id in calls:
        stack.send({**RYNG, "call_id": call_id})

    result = stack.run_batch()

    assert len(result.event["Records"]) == 10
    assert result.response == {"batchItemFailures": []}
    assert secret_fetches == ["callcancel/ryng/acme"]


def test_concurrent_denials_re_read_the_secret_once(
    stack: WorkerStack, simulator: ProviderSimulator, secret_fetches: list[str]
) -> None:
    # Given the worker has cached the current token
    calls = [f"c-{i}" for i in range(10)]
    simulator.add_ryng_calls("acme", "warm-up", *calls)
    stack.send({**RYNG, "call_id": "warm-up"})
    stack.run_batch()
    secret_fetches.clear()

    # When the token is rotated and a batch of 10 is denied with the cached copy, all at once
    simulator.add_ryng_account("acme", "rotated-token")
    stack.put_secret("callcancel/ryng/acme", {"subdomain": "acme", "access_token": "rotated-token"})
    for call_id in calls:
        stack.send({**RYNG, "call_id": call_id})
    result = stack.run_batch()

    # Then the secret is re-read once, not once per denied record, and every cancel succeeds
    assert result.response == {"batchItemFailures": []}
    assert sorted(simulator.cancelled("ryng")) == sorted(["warm-up", *calls])
    assert secret_fetches == ["callcancel/ryng/acme"]


def test_a_redelivered_request_makes_no_second_provider_call(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    simulator.add_ryng_calls("acme", "c-1")
    request = {**RYNG, "call_id": "c-1", "request_id": "order-42:cancel"}
    stack.send(request)
    stack.send(request)  # a producer retry: another message, the same request_id

    # In one batch, the second copy finds the first in progress and is retried; either way, one call.
    stack.run_until_empty()

    assert stack.queue_depth() == 0
    assert stack.dead_letters() == []
    assert len(simulator.calls("ryng")) == 1


def test_the_same_message_delivered_twice_calls_once(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    # An ack that was lost: Lambda hands the very same message to the worker again.
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1")
    stack.send(PLUM)
    event = stack.source.receive()
    assert event is not None

    first = stack.handler(event, LocalLambdaContext())
    second = stack.handler(event, LocalLambdaContext())

    assert first == second == {"batchItemFailures": []}
    assert len(simulator.calls("plum")) == 1


def test_a_request_id_reused_for_another_target_is_dead_lettered(
    stack: WorkerStack, simulator: ProviderSimulator
) -> None:
    simulator.add_ryng_calls("acme", "c-1", "c-2")
    stack.send({**RYNG, "call_id": "c-1", "request_id": "r-1"})
    stack.run_batch()
    stack.send({**RYNG, "call_id": "c-2", "request_id": "r-1"})
    stack.run_batch()

    letters = stack.dead_letters()
    assert len(letters) == 1, letters
    [letter] = letters
    assert letter["failure_class"] == "invalid"
    assert "r-1" in letter["failure_reason"]
    assert simulator.cancelled("ryng") == ["c-1"]


def test_records_without_time_left_are_failed_not_started(stack: WorkerStack, simulator: ProviderSimulator) -> None:
    simulator.add_ryng_calls("acme", "c-1", "c-2")
    ids = {stack.send({**RYNG, "call_id": "c-1"}), stack.send({**RYNG, "call_id": "c-2"})}

    result = stack.run_batch(LocalLambdaContext(timeout_seconds=3))

    assert {item["itemIdentifier"] for item in result.response["batchItemFailures"]} == ids
    assert simulator.calls() == []
    # Back on the queue at once, for an invocation with time to spare.
    assert stack.run_batch().response == {"batchItemFailures": []}
    assert sorted(simulator.cancelled("ryng")) == ["c-1", "c-2"]


def test_a_dead_letter_that_cannot_be_sent_keeps_the_message(
    stack: WorkerStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", stack.queue_url.replace("cancel-requests", "missing"))
    message_id = stack.send("{not json")

    result = stack.run_batch()

    assert result.response == {"batchItemFailures": [{"itemIdentifier": message_id}]}
    assert stack.queue_depth() == 1


def test_no_credential_appears_in_logs_or_dead_letters(
    stack: WorkerStack, simulator: ProviderSimulator, capfd: pytest.CaptureFixture[str], worker_logs: io.StringIO
) -> None:
    simulator.add_ryng_calls("acme", "c-1")
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1")
    stack.put_secret("callcancel/ryng/broken", {"subdomain": "Not Valid!", "access_token": RYNG_TOKEN})
    stack.put_secret("callcancel/plum/broken", {"email": PLUM_EMAIL})
    simulator.add_ryng_account("acme", "rotated-and-unknown-to-us")
    for body in (
        {**RYNG, "call_id": "c-1"},
        PLUM,
        {**RYNG, "account": "broken", "call_id": "c-1"},
        {**PLUM, "account": "broken"},
        {**PLUM, "deployment_id": "ghost"},
    ):
        stack.send(body)

    stack.run_until_empty()

    captured = capfd.readouterr()
    letters = json.dumps(stack.dead_letters())
    logs = [json.loads(line) for line in worker_logs.getvalue().splitlines()]
    for secret in (RYNG_TOKEN, PLUM_KEY, "rotated-and-unknown-to-us"):
        assert secret not in worker_logs.getvalue()
        assert secret not in captured.out + captured.err
        assert secret not in letters
    # One JSON line per outcome, correlated by request id; never the raw event.
    outcomes = [log for log in logs if log["message"] in ("cancelled", "dead-lettered")]
    assert len(outcomes) == 5
    assert all(log["correlation_id"] and log["service"] == "callcancel" for log in outcomes)
    assert not any("Records" in json.dumps(log) for log in logs)
    assert {letter["failure_class"] for letter in stack.dead_letters()} == {"auth", "config", "not_found"}


def test_a_batch_counts_its_outcomes_in_one_data_point_per_provider_and_outcome(
    stack: WorkerStack, simulator: ProviderSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    simulator.add_ryng_calls("acme", "c-1", "c-2", "c-3")
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1")
    for body in ({**RYNG, "call_id": "c-1"}, {**RYNG, "call_id": "c-2"}, {**RYNG, "call_id": "c-3"}, PLUM):
        stack.send(body)
    stack.send({**RYNG, "call_id": "ghost"})
    capsys.readouterr()

    stack.run_batch()

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"Outcome"' in line]
    points = sorted((line["provider"], line["outcome"], line["Outcome"]) for line in lines)
    # One log line each, where a line per record would be five: CloudWatch sums them the same
    assert points == [("plum", "cancelled", [1.0]), ("ryng", "cancelled", [3.0]), ("ryng", "not_found", [1.0])]
