"""The soak's verdict: every request accounted for against the simulator's record, and nothing leaked."""

import json

from callcancel_local.crash_runner import Kill
from callcancel_local.fault_proxy import ProxiedCall
from callcancel_local.simulator import SimCall
from callcancel_local.soak import Credentials, RunRecord, SoakRequest, idempotency_id, judge

TOKEN = "tok-ryng-0123456789abcdef"


def ryng(call_id: str, request_id: str | None = None, expect: str = "cancelled") -> SoakRequest:
    body = {"provider": "ryng", "account": "acme", "call_id": call_id}
    return SoakRequest(
        json.dumps(body | ({"request_id": request_id} if request_id else {})),
        "ryng",
        "acme",
        call_id,
        request_id,
        expect,
    )


def sim_call(call_id: str, status: int, at: float, delay: float = 0.0) -> SimCall:
    return SimCall(
        "ryng", "POST", f"/ryng/acme/rest-api/v1/progressive/call/{call_id}/cancel", "acme", call_id, status, at, delay
    )


def completion(key: str, at: float, fault: str | None = None) -> ProxiedCall:
    body = {
        "TableName": "t",
        "Key": {"id": {"S": idempotency_id(key)}},
        "ExpressionAttributeValues": {":status": {"S": "COMPLETED"}},
    }
    return ProxiedCall(at, 0, "dynamodb", "UpdateItem", fault, 0 if fault else 200, json.dumps(body).encode())


def record(requests: list[SoakRequest], **overrides: object) -> RunRecord:
    credentials = Credentials(every_value={TOKEN})
    fields: dict[str, object] = {
        "requests": requests,
        "message_ids": [f"m{i}" for i in range(len(requests))],
        "sim_calls": [],
        "sim_cancelled": set(),
        "letters": [],
        "leftovers": set(),
        "kills": [],
        "proxy_calls": [],
        "outputs": {},
        "credentials": credentials,
    }
    return RunRecord(**(fields | overrides))  # type: ignore[arg-type]


def test_each_request_is_cancelled_dead_lettered_or_lost() -> None:
    requests = [ryng("c1"), ryng("c2", expect="not_found"), ryng("c3"), ryng("c4")]
    letters = [
        {"message_id": "d1", "source_message_id": "m1", "failure_class": "not_found", "failure_reason": "no such call"},
        {"message_id": "m3", "body": requests[3].body},  # moved by the redrive policy: no class, its own id
    ]

    verdict = judge(record(requests, sim_cancelled={("ryng", "c1")}, letters=letters, leftovers={"m2"}))

    assert (verdict.requests, verdict.cancelled, verdict.dead_lettered, verdict.lost) == (4, 1, 2, 1)
    assert verdict.letters_by_class == {"not_found": 1, "unclassified": 1}
    assert verdict.lost_examples == [f"m2 {requests[2].body} (still on the queue)"]


def test_a_repeat_of_a_cancelled_request_is_cancelled() -> None:
    first = ryng("c1", request_id="order-1")

    verdict = judge(record([first, first], sim_cancelled={("ryng", "c1")}))

    assert (verdict.cancelled, verdict.lost) == (2, 0)


def test_ambiguous_is_a_dead_letter_that_says_an_earlier_attempt_may_have_cancelled() -> None:
    requests = [ryng("c1"), ryng("c2")]
    letters = [
        {
            "message_id": "d1",
            "source_message_id": "m0",
            "failure_class": "not_found",
            "failure_reason": "Call ID does not exist; an earlier attempt of this request may have cancelled it",
        },
        {
            "message_id": "d2",
            "source_message_id": "m1",
            "failure_class": "not_found",
            "failure_reason": "Call ID does not exist",
        },
    ]

    verdict = judge(record(requests, sim_cancelled={("ryng", "c1"), ("ryng", "c2")}, letters=letters))

    assert (verdict.dead_lettered, verdict.ambiguous) == (2, 1)
    assert verdict.false_alarms == {"not_found": 1}  # c2 was cancelled, and its letter does not say it may have been


def test_a_second_call_after_a_confirmation_is_a_double_call_explained_by_a_crash_in_the_window() -> None:
    request = ryng("c1")
    calls = [sim_call("c1", 200, at=10.0), sim_call("c1", 500, at=30.0)]
    crash = Kill("window", 0, started=9.5, at=10.2, message_ids=("m0",), bodies=(request.body,))

    verdict = judge(record([request], sim_calls=calls, sim_cancelled={("ryng", "c1")}, kills=[crash]))

    assert (verdict.double_calls, verdict.window_crashes, verdict.unexplained_double_calls) == (1, 1, [])


def test_a_double_call_after_a_completed_record_is_unexplained() -> None:
    request = ryng("c1")
    calls = [sim_call("c1", 200, at=10.0), sim_call("c1", 500, at=30.0)]
    too_late = Kill("random", 0, started=9.5, at=10.5, message_ids=("m0",), bodies=(request.body,))

    verdict = judge(
        record(
            [request],
            sim_calls=calls,
            sim_cancelled={("ryng", "c1")},
            kills=[too_late],
            proxy_calls=[completion("m0", at=10.3)],
        )
    )

    assert (verdict.double_calls, verdict.window_crashes) == (1, 0)
    assert verdict.unexplained_double_calls == ["ryng/c1 HTTP 500"]


def test_a_call_after_a_success_the_worker_never_saw_is_not_a_double_call() -> None:
    late = [sim_call("c1", 200, at=10.0, delay=1.5), sim_call("c1", 500, at=14.0)]
    # Answered in time by the simulator's clock, but the worker had timed out: it released its lock.
    starved = [sim_call("c2", 200, at=10.0), sim_call("c2", 500, at=14.0)]
    release = {"Key": {"id": {"S": idempotency_id("m1")}}, "ExpressionAttributeValues": {":released": {"N": "0"}}}

    verdict = judge(
        record(
            [ryng("c1"), ryng("c2")],
            sim_calls=late + starved,
            sim_cancelled={("ryng", "c1"), ("ryng", "c2")},
            proxy_calls=[ProxiedCall(10.1, 0, "dynamodb", "UpdateItem", None, 200, json.dumps(release).encode())],
        )
    )

    assert (verdict.double_calls, verdict.calls_after_unseen_success) == (0, 2)


def test_a_completion_that_never_reached_the_table_explains_a_double_call() -> None:
    calls = [sim_call("c1", 200, at=10.0), sim_call("c1", 200, at=30.0)]

    verdict = judge(
        record(
            [ryng("c1")], sim_calls=calls, sim_cancelled={("ryng", "c1")}, proxy_calls=[completion("m0", 10.3, "error")]
        )
    )

    assert (verdict.double_calls, verdict.unexplained_double_calls) == (1, [])


def test_a_credential_anywhere_in_the_output_is_a_leak() -> None:
    letters = [
        {"message_id": "d1", "source_message_id": "m0", "failure_class": "auth", "provider_message": f"bad {TOKEN}"}
    ]

    verdict = judge(record([ryng("c1", expect="auth")], letters=letters, outputs={"worker-0.log": f"{TOKEN} {TOKEN}"}))

    assert verdict.leaked_credentials == 3
    assert verdict.leaks == {"worker-0.log": 2, "dead letters": 1}


MAY_HAVE = "Call ID does not exist; an earlier attempt of this request may have cancelled it"


def letter(source: str, failure_class: str, reason: str) -> dict[str, str]:
    """The worker's dead letter for the message `source`."""
    return {
        "message_id": f"d-{source}",
        "source_message_id": source,
        "failure_class": failure_class,
        "failure_reason": reason,
    }


def test_outcome_records_are_judged_against_each_request_keys_fate() -> None:
    cancelled, repeated = ryng("c1", request_id="order-1"), ryng("c2", request_id="order-2")
    dead, ambiguous, lost_record = ryng("c3", expect="not_found"), ryng("c4"), ryng("c5")
    requests = [cancelled, repeated, repeated, dead, ambiguous, lost_record]
    letters = [letter("m3", "not_found", "no such"), letter("m4", "not_found", MAY_HAVE)]
    recorded = {"order-1": "cancelled", "order-2": "duplicate", "m3": "not_found", "m4": "not_found"}
    sim_cancelled = {("ryng", "c1"), ("ryng", "c2"), ("ryng", "c4"), ("ryng", "c5")}

    verdict = judge(record(requests, sim_cancelled=sim_cancelled, letters=letters, outcome_records=recorded))

    # order-2 was cancelled but its record says duplicate; c5's record is missing. The ambiguous one may say
    # not_found: the worker could not know that its earlier attempt had cancelled it.
    assert verdict.outcomes_wrong == {"cancelled->duplicate": 1, "cancelled->none": 1}
    assert verdict.outcomes_wrong_examples == ["m5: cancelled, recorded none", "order-2: cancelled, recorded duplicate"]


def test_each_request_keys_fate_must_be_announced() -> None:
    cancelled, dead, ambiguous, unannounced = ryng("c1", request_id="order-1"), ryng("c2"), ryng("c3"), ryng("c4")
    letters = [letter("m1", "auth", "denied"), letter("m2", "not_found", MAY_HAVE)]
    announced = {"order-1": {"Cancel Succeeded"}, "m1": {"Cancel Failed"}, "m2": {"Cancel Failed"}}
    sim_cancelled = {("ryng", "c1"), ("ryng", "c3"), ("ryng", "c4")}

    verdict = judge(
        record(
            [cancelled, dead, ambiguous, unannounced], sim_cancelled=sim_cancelled, letters=letters, announced=announced
        )
    )

    assert verdict.announcements_missing == {"Cancel Succeeded": 1}
    assert verdict.announcements_missing_examples == ["m3: Cancel Succeeded, got []"]
