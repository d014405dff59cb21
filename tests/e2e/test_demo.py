"""The demo scenario through the local stack: the real template deployed into moto, the runner, the simulator."""

import json

import pytest
from aws_lambda_powertools.utilities import parameters

from callcancel_local.demo import DemoAccounts, DemoReport, run
from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.simulator import ProviderSimulator

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("local-stack")]


@pytest.fixture(scope="module")
def report(embedded_aws: EmbeddedAws, simulator_server: ProviderSimulator) -> DemoReport:
    embedded_aws.reset()
    simulator_server.reset()
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    return run(simulator_server)[1]


def test_every_message_ends_cancelled_or_dead_lettered(report: DemoReport) -> None:
    assert report.published == 16  # 15 on the queue, 1 as an EventBridge event
    assert report.purged == 3  # the two deferred Ryng calls and the plan's Plum deployment
    assert report.unaccounted == 0
    assert report.outcomes == {
        # 3 Ryng (one by integer id), 2 Plum (one after an outage that recovered), the 3 the purge enqueued,
        # initech's i-1, redriven once its secret was created, and e-1, requested through EventBridge
        "cancelled": 10,
        "duplicate": 1,  # the producer's retry of crm-77:cancel
        "deferred": 2,  # held for the night, then cancelled by the purge
        "invalid": 2,
        "config": 1,
        "not_found": 2,
        "auth": 1,
        "rejected": 0,
        "exhausted": 1,
    }


def test_the_dead_letter_queue_holds_each_failure_with_its_reason(report: DemoReport) -> None:
    letters = {(letter["failure_class"], letter["body"]) for letter in report.dead_letters}
    by_class = sorted(letter["failure_class"] for letter in report.dead_letters)
    assert by_class == ["auth", "exhausted", "invalid", "invalid", "not_found", "not_found"]  # config: fixed
    exhausted = next(letter for letter in report.dead_letters if letter["failure_class"] == "exhausted")
    assert json.loads(exhausted["body"])["call_id"] == "r-2001"
    assert exhausted["attempts"] == "3"  # the demo's MaxAttempts, taken from the deployed environment
    assert exhausted["provider_message"] == "Dialer unavailable"
    assert ("invalid", '{"provider": "plum", "account": "acme"') in letters, "the body is kept byte for byte"
    assert all(letter["failure_reason"] and letter["failed_at"] for letter in report.dead_letters)


def test_provider_calls_match_the_scenario(report: DemoReport) -> None:
    assert report.provider_calls[("plum", 503)] == 2  # the outage that recovered
    assert report.provider_calls[("plum", 202)] == 3  # 7001/1, 7001/2, and 7001/3 from the purge plan
    # r-1001, r-1002 once (the duplicate made no call), 1003, n-1, n-2, i-1 after the fix, and e-1
    assert report.provider_calls[("ryng", 200)] == 7
    assert report.provider_calls[("ryng", 403)] == 2  # denied, secret re-read, denied again


def test_the_nightly_purge_cancelled_the_deferred_calls_without_calling_providers_itself(
    report: DemoReport, simulator_server: ProviderSimulator
) -> None:
    cancelled = simulator_server.cancelled("ryng")
    assert {"n-1", "n-2"} <= set(cancelled)
    assert cancelled.count("n-1") == cancelled.count("n-2") == 1
    assert simulator_server.cancelled("plum").count("7001/3") == 1


def test_the_dlq_alarm_sends_a_digest_through_the_deployed_rule_and_topic(report: DemoReport) -> None:
    subject, text = report.digest["Subject"], report.digest["Message"]
    cli = "callcancel dlq {} --stack-name callcancel-local --region us-east-1"

    assert subject.startswith("callcancel callcancel-local: 7 dead letter(s), 1 config, 1 auth, 1 exhausted")
    assert "Alarm callcancel-local-dead-letters is ALARM" in text
    assert f"{cli.format('redrive')} --class config" in text
    assert f"{cli.format('discard')} --class invalid" in text
    assert "1 x ryng HTTP 403: Unauthorized Token" in text
    for secret in (DemoAccounts.ryng_token, DemoAccounts.plum_key, "globex-revoked-token"):
        assert secret not in text


def test_the_operator_fixes_config_with_the_digests_own_command(
    report: DemoReport, simulator_server: ProviderSimulator
) -> None:
    fix = report.fix

    assert fix.command == "callcancel dlq redrive --stack-name callcancel-local --region us-east-1 --class config"
    assert fix.command in report.digest["Message"]
    assert (fix.status, fix.redriven) == (0, 1)
    # The digest left all 7 on the DLQ; the redrive took only the config one; the worker then cancelled it.
    assert len(report.dead_letters) == 6
    assert simulator_server.cancelled("ryng").count("i-1") == 1


def test_a_cancel_requested_through_eventbridge_is_carried_out_and_recorded(
    report: DemoReport, simulator_server: ProviderSimulator
) -> None:
    assert report.via_eventbridge.line.startswith("callcancel publish ryng ")
    assert report.via_eventbridge.line.endswith("--via eventbridge --stack-name callcancel-local")
    assert (report.via_eventbridge.status, report.via_eventbridge.output) == (0, "crm-88:cancel")
    assert simulator_server.cancelled("ryng").count("e-1") == 1
    assert _rows(report.status.output)["crm-88:cancel"][:4] == ["cancelled", "ryng", "acme", "e-1"]


def test_status_tells_the_producer_what_became_of_each_request(report: DemoReport) -> None:
    rows = _rows(report.status.output)

    assert report.status.status == 0
    assert rows["crm-77:cancel"][0] == "cancelled"  # its duplicate delivery did not overwrite that
    assert rows["crm-90:nightly"][0] == "cancelled"  # deferred, then carried out by the purge under its key
    assert rows["crm-91:cancel"][:6] == ["exhausted", "ryng", "acme", "r-2001", "3", "HTTP 500 Dialer unavailable"]
    assert "crm-91:cancel: dead-lettered; why: callcancel dlq show " in report.status.output


def test_a_subscribers_rule_gets_the_failures_of_its_account(report: DemoReport) -> None:
    failures = sorted(event["detail"]["failure_class"] for event in report.acme_failures)

    assert failures == ["exhausted", "invalid", "not_found", "not_found"]  # the unreadable body names no account
    assert all(event["source"] == "callcancel" for event in report.acme_failures)
    assert all(event["detail"]["account"] == "acme" for event in report.acme_failures)


def _rows(table: str) -> dict[str, list[str]]:
    """The status table's cells after the request, by request."""
    rows = [
        [cell.strip() for cell in line.strip("│").split("│")] for line in table.splitlines() if line.startswith("│")
    ]
    return {cells[0]: cells[1:] for cells in rows}
