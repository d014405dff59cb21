"""The nightly purge handler on moto server: plan and deferred requests onto CancelQueue, then the worker."""

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from callcancel.deferred import iso_utc
from callcancel.errors import InvalidPurgePlan, PurgeError, PurgeIncomplete
from callcancel_local.embedded_aws import create_table_keyed_by_id
from callcancel_local.lambda_runtime import LocalLambdaContext
from callcancel_local.simulator import ProviderSimulator
from tests.integration.conftest import PLUM_EMAIL, PURGE_PLAN_PARAMETER, PurgeStack, WorkerStack

pytestmark = pytest.mark.integration

RYNG = {"provider": "ryng", "account": "acme"}
PLUM = {"provider": "plum", "account": "acme", "application_id": "app1", "deployment_id": "dep1"}
LONG_AGO = "2026-01-01T00:00:00.000000Z"


def throttled(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "ThrottlingException", "Message": "injected"}}, operation)


def is_delete(operation: str, params: dict[str, Any]) -> bool:
    """A removal from the deferred table, however it is sent."""
    if operation == "DeleteItem":
        return True
    requests = params.get("RequestItems", {}).values() if operation == "BatchWriteItem" else []
    return any("DeleteRequest" in request for batch in requests for request in batch)


def forget_idempotency(purge: PurgeStack) -> None:
    """What 24 hours do to the worker's idempotency records: they expire."""
    for item in purge.dynamodb.scan(TableName="idempotency")["Items"]:
        purge.dynamodb.delete_item(TableName="idempotency", Key={"id": item["id"]})


def deferred_item(item_id: str, body: dict[str, object], deferred_at: str = LONG_AGO) -> dict[str, str]:
    return {"id": item_id, "body": json.dumps(body), "deferred_at": deferred_at}


def test_plan_and_deferred_requests_fan_out_counted_per_provider(purge: PurgeStack) -> None:
    # Given a plan of two Ryng calls and a Plum deployment, and one deferred Plum request
    purge.set_plan({"targets": [{**RYNG, "call_id": "c-1"}, {**RYNG, "call_id": 2}, PLUM]})
    purge.defer([deferred_item("d-1", {**PLUM, "deployment_id": "dep2", "when": "nightly"})])

    # When the purge runs
    result = purge.run()

    # Then four requests are on CancelQueue, counted per provider, each for now: the plan's with a purge
    # request_id of that night, the deferred one keyed by its deferral (the same on any night)
    assert result["enqueued"] == {"ryng": 2, "plum": 2}
    assert result["total"] == 4
    queued = purge.queued()
    assert len(queued) == 4
    assert sorted(body["request_id"][:17] for body in queued) == ["d-1", *["purge-2026-11-23-"] * 3]
    assert all(body.get("when", "now") == "now" for body in queued)
    assert sorted(body.get("call_id", body.get("deployment_id")) for body in queued) == ["2", "c-1", "dep1", "dep2"]
    # and the deferred request is gone from the table
    assert purge.deferred_ids() == set()


def test_deferred_request_keeps_its_own_request_id(purge: PurgeStack) -> None:
    purge.defer([deferred_item("mine-1", {**RYNG, "call_id": "c-9", "request_id": "mine-1", "when": "nightly"})])

    purge.run()

    [body] = purge.queued()
    assert body == {**RYNG, "call_id": "c-9", "request_id": "mine-1", "when": "now"}


def test_thousands_of_deferred_requests_are_paged_batched_and_deleted(
    purge: PurgeStack, aws_calls: list[str], sqs_sink: list[list[str]]
) -> None:
    # Given 1,200 deferred requests (more than a scan page)
    purge.defer([deferred_item(f"r-{n}", {**RYNG, "call_id": f"c-{n}", "when": "nightly"}) for n in range(1200)])
    aws_calls.clear()

    # When the purge runs
    result = purge.run()

    # Then every one is enqueued once, 10 per SendMessageBatch, over several scan pages, then marked and
    # deleted, 25 per BatchWriteItem
    assert result["enqueued"] == {"ryng": 1200}
    assert result["deferred_enqueued"] == 1200
    assert [len(batch) for batch in sqs_sink] == [10] * 120
    call_ids = {json.loads(body)["call_id"] for batch in sqs_sink for body in batch}
    assert call_ids == {f"c-{n}" for n in range(1200)}
    assert aws_calls.count("Scan") >= 3
    assert aws_calls.count("BatchWriteItem") == 2 * 48
    assert purge.deferred_ids() == set()


def test_entries_sqs_refuses_are_retried_and_then_fail_the_run(
    purge: PurgeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given SQS that keeps refusing one entry of every batch
    make_api_call = BaseClient._make_api_call
    sent: list[int] = []

    def refuse_one(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation != "SendMessageBatch":
            return make_api_call(client, operation, params)
        sent.append(len(params["Entries"]))
        first, *rest = params["Entries"]
        failed = [{"Id": first["Id"], "SenderFault": False, "Code": "InternalError"}]
        return {"Successful": [{"Id": entry["Id"]} for entry in rest], "Failed": failed}

    monkeypatch.setattr(BaseClient, "_make_api_call", refuse_one)
    purge.defer([deferred_item(f"r-{n}", {**RYNG, "call_id": f"c-{n}", "when": "nightly"}) for n in range(3)])

    # When the purge runs, it fails loudly after retrying the refused entry
    with pytest.raises(PurgeError, match="SQS refused 1 cancel requests"):
        purge.run()

    # Then the refused entry was retried, and only the requests SQS accepted were removed
    assert sent == [3, 1, 1]
    assert purge.deferred_ids() == {"r-0"}


def test_a_rerun_of_the_same_night_cancels_each_target_once(
    purge: PurgeStack, stack: WorkerStack, simulator: ProviderSimulator
) -> None:
    # Given pending calls, a plan naming them, and a request the worker deferred to tonight
    simulator.add_ryng_calls("acme", "c-1", "c-2", "c-3")
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1", pending=2)
    purge.set_plan({"targets": [{**RYNG, "call_id": "c-1"}, {**RYNG, "call_id": "c-2"}, PLUM]})
    stack.send({**RYNG, "call_id": "c-3", "when": "nightly"})
    stack.run_until_empty()
    assert simulator.calls() == []

    # When the purge of the same night runs twice (a retried invocation), and the worker drains the queue
    first = purge.run()
    second = purge.run()
    results = stack.run_until_empty()

    # Then each target was cancelled exactly once; the repeats were duplicates, nothing dead-lettered
    assert first["total"] == 4
    assert second["total"] == 3
    assert sorted(simulator.cancelled("ryng")) == ["c-1", "c-2", "c-3"]
    assert simulator.cancelled("plum") == ["app1/dep1"]
    assert len(simulator.calls()) == 4
    assert sum(len(r.deleted) for r in results) == 7
    assert stack.dead_letters() == []
    assert stack.queue_depth() == 0


def test_a_request_deferred_after_the_purge_started_waits_for_the_next_night(purge: PurgeStack) -> None:
    later = iso_utc(datetime.now(UTC) + timedelta(hours=1))
    purge.defer(
        [
            deferred_item("before", {**RYNG, "call_id": "c-1", "when": "nightly"}),
            deferred_item("after", {**RYNG, "call_id": "c-2", "when": "nightly"}, deferred_at=later),
        ]
    )

    result = purge.run()

    assert result["enqueued"] == {"ryng": 1}
    assert [body["call_id"] for body in purge.queued()] == ["c-1"]
    assert purge.deferred_ids() == {"after"}


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"targets": [{**RYNG, "call_id": "c-1"}, {**RYNG, "call_id": "c-2", "when": "now"}]}, "target 1: when"),
        ({"targets": [{**RYNG, "call_id": "c-1"}, {**PLUM, "colour": "red"}]}, "target 1: colour: unknown field"),
        ('{"targets": [', "is not JSON"),
    ],
    ids=["when in a target", "unknown field", "not JSON"],
)
def test_an_invalid_plan_fails_the_run_and_sends_nothing(purge: PurgeStack, plan: object, message: str) -> None:
    # Given a plan whose first target is fine but a later one is not, and a deferred request
    purge.set_plan(plan)  # type: ignore[arg-type]
    purge.defer([deferred_item("d-1", {**RYNG, "call_id": "c-9", "when": "nightly"})])

    # When the purge runs, it fails loudly
    with pytest.raises(InvalidPurgePlan, match="invalid purge plan") as raised:
        purge.run()

    # Then the error names the bad target and field, and nothing was enqueued or deleted
    assert message in str(raised.value)
    assert purge.worker.queue_depth() == 0
    assert purge.deferred_ids() == {"d-1"}


def test_worker_stores_a_nightly_request_instead_of_calling_the_provider(
    purge: PurgeStack, stack: WorkerStack, simulator: ProviderSimulator, worker_logs: io.StringIO
) -> None:
    # Given a pending call and a request to cancel it tonight
    simulator.add_ryng_calls("acme", "c-1")
    body = json.dumps({**RYNG, "call_id": "c-1", "when": "nightly"})
    message_id = stack.send(body)

    # When the worker runs
    result = stack.run_batch()

    # Then the request is stored as sent, the message is acked, and the provider saw nothing
    assert result.response == {"batchItemFailures": []}
    assert simulator.calls() == []
    assert stack.queue_depth() == 0
    assert stack.dead_letters() == []
    [item] = purge.dynamodb.scan(TableName=purge.table)["Items"]
    assert item["id"]["S"] == message_id
    assert item["body"]["S"] == body
    assert datetime.fromisoformat(item["deferred_at"]["S"]) <= datetime.now(UTC)
    logs = [json.loads(line) for line in worker_logs.getvalue().splitlines()]
    assert [log["message"] for log in logs if log.get("correlation_id")] == ["deferred"]


def test_without_a_deferred_table_a_nightly_request_is_dead_lettered(
    stack: WorkerStack, simulator: ProviderSimulator
) -> None:
    stack.send({**RYNG, "call_id": "c-1", "when": "nightly"})

    stack.run_batch()

    [letter] = stack.dead_letters()
    assert letter["failure_class"] == "config"
    assert simulator.calls() == []


def a_night_that_fails_at(step: str, purge: PurgeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """One night's purge whose every call of `step` (see STEPS) is throttled: the run fails."""
    make_api_call = BaseClient._make_api_call

    def failing(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if STEPS[step](operation, params):
            raise throttled(operation)
        return make_api_call(client, operation, params)

    with monkeypatch.context() as night:
        night.setattr(BaseClient, "_make_api_call", failing)
        with pytest.raises(PurgeError, match="ThrottlingException"):
            purge.run({"time": "2026-11-23T20:30:00Z"})


def test_a_request_enqueued_but_not_removed_is_not_sent_again_the_next_night(
    purge: PurgeStack, stack: WorkerStack, simulator: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a request deferred to tonight, and a night whose removals from the deferred table all fail
    simulator.add_ryng_calls("acme", "c-1")
    stack.send({**RYNG, "call_id": "c-1", "when": "nightly"})
    stack.run_until_empty()
    a_night_that_fails_at("delete", purge, monkeypatch)
    stack.run_until_empty()
    assert simulator.cancelled("ryng") == ["c-1"]

    # When the worker's idempotency record has expired, and the next night's purge runs
    forget_idempotency(purge)
    result = purge.run({"time": "2026-11-24T20:30:00Z"})
    stack.run_until_empty()

    # Then the request was not sent again: one provider call, no dead letter, and the deferral is gone
    assert len(simulator.calls()) == 1
    assert stack.dead_letters() == []
    assert result["total"] == 0
    assert result["deferred_already_enqueued"] == 1
    assert purge.deferred_ids() == set()


def test_a_request_sent_but_never_marked_is_not_sent_again_once_the_worker_received_it(
    purge: PurgeStack, stack: WorkerStack, simulator: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the worker's outcome records, and a Plum deployment deferred long ago
    create_table_keyed_by_id("outcomes")
    monkeypatch.setenv("OUTCOME_TABLE", "outcomes")
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1", pending=2)
    plum = {"provider": "plum", "account": "acme", "application_id": "app1", "deployment_id": "dep1"}
    purge.defer([deferred_item("d-1", {**plum, "when": "nightly"})])

    # And a night whose purge sends it, but whose every run fails to mark it enqueued
    a_night_that_fails_at("mark", purge, monkeypatch)
    stack.run_until_empty()
    assert simulator.cancelled("plum") == ["app1/dep1"]
    # And a second deferral, left over too, that no run has sent yet
    purge.defer([deferred_item("d-2", {**RYNG, "call_id": "c-2", "when": "nightly"})])
    simulator.add_ryng_calls("acme", "c-2")

    # When the worker's idempotency records have expired, and the next night's purge runs
    forget_idempotency(purge)
    result = purge.run({"time": "2026-11-24T20:30:00Z"})
    stack.run_until_empty()

    # Then the first is not sent again: its outcome record says the worker received it. Plum's deployment-wide
    # cancel is not repeated (it would cancel the calls placed since). The second is sent, as it must be.
    assert [call.target for call in simulator.calls("plum")] == ["app1/dep1"]
    assert simulator.cancelled("ryng") == ["c-2"]
    assert (result["deferred_already_received"], result["deferred_enqueued"]) == (1, 1)
    assert stack.dead_letters() == []
    assert purge.deferred_ids() == set()


def test_recent_deferrals_are_sent_without_reading_their_outcome_records(
    purge: PurgeStack, monkeypatch: pytest.MonkeyPatch, aws_calls: list[str]
) -> None:
    create_table_keyed_by_id("outcomes")
    monkeypatch.setenv("OUTCOME_TABLE", "outcomes")
    recently = iso_utc(datetime.now(UTC) - timedelta(hours=2))
    purge.defer([deferred_item("d-1", {**RYNG, "call_id": "c-1", "when": "nightly"}, deferred_at=recently)])

    assert purge.run()["deferred_enqueued"] == 1
    assert "BatchGetItem" not in aws_calls


class Died(BaseException):
    """The invocation ends here, the way a kill ends it: no handler of ours runs."""


STEPS = {
    "send": lambda operation, params: operation == "SendMessageBatch",
    "mark": lambda operation, params: operation == "BatchWriteItem" and not is_delete(operation, params),
    "delete": is_delete,
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_purge_that_dies_after_any_step_is_finished_by_the_rerun_with_one_cancel_each(
    purge: PurgeStack, stack: WorkerStack, simulator: ProviderSimulator, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # Given 60 requests deferred to tonight (two chunks of work)
    call_ids = [f"c-{n}" for n in range(60)]
    simulator.add_ryng_calls("acme", *call_ids)
    for call_id in call_ids:
        stack.send({**RYNG, "call_id": call_id, "when": "nightly"})
    stack.run_until_empty()
    make_api_call = BaseClient._make_api_call
    seen: list[str] = []

    def dies_after_the_second(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        response = make_api_call(client, operation, params)
        if STEPS[step](operation, params):
            seen.append(operation)
            if len(seen) == 2:
                raise Died(step)
        return response

    # When the purge dies right after its second call of that step has been carried out, the worker drains the
    # queue, and the night's retry runs the purge again
    with monkeypatch.context() as dying:
        dying.setattr(BaseClient, "_make_api_call", dies_after_the_second)
        with pytest.raises(Died):
            purge.run()
    stack.run_until_empty()
    purge.run()
    stack.run_until_empty()

    # Then each call was cancelled exactly once, nothing was dead-lettered, and the table is empty
    assert sorted(simulator.cancelled("ryng")) == sorted(call_ids)
    assert len(simulator.calls()) == 60
    assert stack.dead_letters() == []
    assert purge.deferred_ids() == set()


class RunsOutOfTime(LocalLambdaContext):
    """A context with plenty of time for the first `checks` questions, then 10 s: less than the stop margin."""

    def __init__(self, checks: int) -> None:
        super().__init__(function_name="NightlyPurge", timeout_seconds=300)
        self.checks = checks

    def get_remaining_time_in_millis(self) -> int:
        self.checks -= 1
        return 250_000 if self.checks >= 0 else 10_000


def test_a_purge_out_of_time_stops_cleanly_and_its_retry_resumes_without_repeats(
    purge: PurgeStack, sqs_sink: list[list[str]]
) -> None:
    # Given a plan of two targets and 600 deferred requests (twelve chunks of work)
    purge.set_plan({"targets": [{**RYNG, "call_id": "p-1"}, PLUM]})
    purge.defer([deferred_item(f"r-{n}", {**RYNG, "call_id": f"c-{n}", "when": "nightly"}) for n in range(600)])
    event = {"time": "2026-11-23T20:30:00Z"}

    # When the first run reaches its stop margin after starting a few chunks
    with pytest.raises(PurgeIncomplete, match="its retry resumes it"):
        purge.handler(event, RunsOutOfTime(checks=5))
    first = [json.loads(body) for batch in sqs_sink for body in batch]
    left = purge.deferred_ids()

    # Then what it started was finished: each removed request is on the queue, the rest wait untouched
    assert 0 < len(left) < 600
    first_deferred = {body["request_id"] for body in first if body["request_id"].startswith("r-")}
    assert first_deferred == {f"r-{n}" for n in range(600)} - left
    assert len(first) == len(first_deferred) + 2

    # When Lambda's retry of the same event runs with time to spare
    sqs_sink.clear()
    result = purge.run(event)
    second = [json.loads(body) for batch in sqs_sink for body in batch]

    # Then it sends the rest and the plan again under the same request_ids (which the worker dedupes):
    # no deferred request twice, and the table is empty
    assert result["deferred_enqueued"] == len(left)
    second_deferred = {body["request_id"] for body in second if body["request_id"].startswith("r-")}
    assert second_deferred == left
    assert first_deferred.isdisjoint(second_deferred)
    planned = sorted(body["request_id"] for body in first if body["request_id"].startswith("purge-"))
    assert sorted(body["request_id"] for body in second if body["request_id"].startswith("purge-")) == planned
    assert purge.deferred_ids() == set()


def test_a_purge_started_with_less_than_its_margin_left_sends_nothing(purge: PurgeStack) -> None:
    purge.set_plan({"targets": [{**RYNG, "call_id": "p-1"}]})
    purge.defer([deferred_item("d-1", {**RYNG, "call_id": "c-1", "when": "nightly"})])

    with pytest.raises(PurgeIncomplete):
        purge.handler({}, LocalLambdaContext(function_name="NightlyPurge", timeout_seconds=20))

    assert purge.worker.queue_depth() == 0
    assert purge.deferred_ids() == {"d-1"}


def test_a_plan_of_a_thousand_targets_spread_over_parameters_below_the_plan_is_enqueued_once_each(
    purge: PurgeStack, sqs_sink: list[list[str]]
) -> None:
    # Given the documented parameter with one target, and 1,000 more in standard parameters (4 KB) below it
    targets = [{**RYNG, "call_id": f"c-{n}"} for n in range(1000)]
    purge.set_plan({"targets": [PLUM]})
    for start in range(0, 1000, 40):
        purge.set_plan({"targets": targets[start : start + 40]}, name=f"{PURGE_PLAN_PARAMETER}/ops/part-{start:04}")
    # and a target named twice
    purge.set_plan({"targets": [targets[0]]}, name=f"{PURGE_PLAN_PARAMETER}/again")

    # When the purge runs
    result = purge.run()

    # Then every target is enqueued once
    bodies = [json.loads(body) for batch in sqs_sink for body in batch]
    assert result["enqueued"] == {"ryng": 1000, "plum": 1}
    assert sorted(b.get("call_id", "plum") for b in bodies) == sorted([t["call_id"] for t in targets] + ["plum"])
    assert len({b["request_id"] for b in bodies}) == 1001


def test_an_invalid_parameter_below_the_plan_fails_the_whole_run_naming_it(purge: PurgeStack) -> None:
    # Given a valid plan parameter, and one below it with a bad target
    purge.set_plan({"targets": [{**RYNG, "call_id": "c-1"}]})
    purge.set_plan({"targets": [{**RYNG, "call_id": "c-2"}]}, name=f"{PURGE_PLAN_PARAMETER}/a")
    purge.set_plan({"targets": [{**RYNG, "call_id": "../x"}]}, name=f"{PURGE_PLAN_PARAMETER}/b")

    # When the purge runs, it fails naming the parameter, the target and the field
    with pytest.raises(InvalidPurgePlan, match=f"target 0: call_id: .* \\(in parameter {PURGE_PLAN_PARAMETER}/b\\)"):
        purge.run()

    # Then nothing was sent
    assert purge.worker.queue_depth() == 0


def test_a_scan_that_fails_part_way_lets_the_work_in_flight_finish_before_the_run_fails(
    purge: PurgeStack, sqs_sink: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 1,200 deferred requests, and a second scan page that DynamoDB refuses
    purge.defer([deferred_item(f"r-{n}", {**RYNG, "call_id": f"c-{n}", "when": "nightly"}) for n in range(1200)])
    make_api_call = BaseClient._make_api_call

    def second_scan_fails(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation == "Scan" and "ExclusiveStartKey" in params:
            raise throttled(operation)
        return make_api_call(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", second_scan_fails)

    # When the purge runs, it fails
    with pytest.raises(ClientError):
        purge.run()

    # Then the first page was finished before it did: each of its requests sent once, and removed
    sent = [json.loads(body)["request_id"] for batch in sqs_sink for body in batch]
    assert len(sent) == len(set(sent)) == 500
    monkeypatch.undo()
    assert purge.deferred_ids() == {f"r-{n}" for n in range(1200)} - set(sent)
