"""A small soak in `make test`: the local stack under provider faults, AWS faults, crashes and a rotation.

`make soak` runs the same at 2,000 requests (README, "Soak"); SOAK_N sets the size here too.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities import parameters

from callcancel_local.crash_runner import KillPlan
from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.simulator import ProviderSimulator
from callcancel_local.soak import PROVIDER_TIMEOUT, RunRecord, SoakConfig, Verdict, judge, run

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("local-stack")]

# More crashes than `make soak`, so that a few hundred requests still meet every kind of kill.
CONFIG = SoakConfig(
    requests=int(os.environ.get("SOAK_N") or 300),
    kills=KillPlan(random_fraction=0.1, before_ack_fraction=0.06),
    window_kill_fraction=0.03,
    drain_seconds=180,
)


@pytest.fixture(scope="module")
def soak(
    embedded_aws: EmbeddedAws, simulator_server: ProviderSimulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunRecord, Verdict]]:
    embedded_aws.reset()
    simulator_server.reset()
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    record = run(CONFIG, embedded_aws, simulator_server, Path(tmp_path_factory.mktemp("soak")))
    yield record, judge(record)
    simulator_server.reset()
    embedded_aws.reset()


def test_every_request_ends_cancelled_or_dead_lettered_with_its_reason(soak: tuple[RunRecord, Verdict]) -> None:
    record, verdict = soak

    assert record.drained, f"{len(record.leftovers)} message(s) left on CancelQueue"
    assert verdict.lost == 0, verdict.lost_examples
    assert verdict.cancelled + verdict.dead_lettered == verdict.requests == CONFIG.requests
    assert verdict.cancelled > 0.8 * CONFIG.requests
    assert set(verdict.letters_by_class) <= {"not_found", "auth", "exhausted", "unclassified"}


def test_no_credential_appears_in_any_output(soak: tuple[RunRecord, Verdict]) -> None:
    record, verdict = soak

    assert verdict.leaked_credentials == 0, verdict.leaks
    assert any(call.status == 403 for call in record.sim_calls), "the permanent 403s echo the credentials they got"
    assert len(record.credentials.every_value) == 8, "six accounts, two of them rotated"
    assert record.rotated_at is not None


def test_the_run_met_every_kind_of_fault(soak: tuple[RunRecord, Verdict]) -> None:
    record, _ = soak
    answers = {"late" if c.delay >= PROVIDER_TIMEOUT else c.status for c in record.sim_calls}
    aws_faults = {(call.service, call.fault) for call in record.proxy_calls if call.fault}

    assert {500, 502, 503, 429, 0, "late"} <= answers  # 0: a reset connection
    assert any(0 < c.delay < PROVIDER_TIMEOUT for c in record.sim_calls), "slow answers"
    assert {service for service, _ in aws_faults} == {"sqs", "dynamodb", "secretsmanager"}
    assert {fault for _, fault in aws_faults} >= {"throttle", "error", "drop", "lost_answer"}
    assert record.kills, "worker processes were killed"
    assert record.cold_starts > CONFIG.workers


def test_a_second_provider_call_follows_only_a_crash_before_the_record_completed(
    soak: tuple[RunRecord, Verdict],
) -> None:
    _, verdict = soak

    assert verdict.unexplained_double_calls == []


def test_every_requests_outcome_record_tells_its_fate(soak: tuple[RunRecord, Verdict]) -> None:
    record, verdict = soak
    assert record.outcome_records, "the outcome table was read"
    # Outcome records are best-effort: one may be wrong only where its write failed, and the worker counted it.
    assert sum(verdict.outcomes_wrong.values()) <= record.metrics.get("OutcomeRecordFailed", 0), (
        verdict.outcomes_wrong_examples
    )


def test_every_requests_fate_is_announced(soak: tuple[RunRecord, Verdict]) -> None:
    record, verdict = soak
    assert record.announced, "the outcome events were read"
    # Outcome events are best-effort: one may be missing only where its put failed, and the worker counted it.
    assert sum(verdict.announcements_missing.values()) <= record.metrics.get("OutcomeEventFailed", 0), (
        verdict.announcements_missing_examples
    )
