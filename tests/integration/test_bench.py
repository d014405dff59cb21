"""`make bench`'s machinery on a tiny run: the AWS requests counted per cancel, the cost, the figure lines."""

import os
from collections.abc import Iterator
from unittest import mock

import pytest
import requests

from callcancel_local.bench import Bench, Deployed, Design, cost_figures
from callcancel_local.cost import CONTRACT_FLOOR, PRICES, AwsMeter, contract_floor_usd_per_million
from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.figures import Figure
from callcancel_local.simulator import ProviderSimulator, SimulatorProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def bench(embedded_aws: EmbeddedAws, simulator: ProviderSimulator) -> Iterator[Bench]:
    embedded_aws.reset()
    meter = AwsMeter()
    with mock.patch.dict(os.environ):
        yield Bench(embedded_aws, simulator, meter, Deployed.read(), latency=0.01)
    meter.close()


def test_a_batch_of_ten_as_deployed_costs_its_share_of_each_call(bench: Bench) -> None:
    run = bench.run(Design(batch_size=10, max_in_flight=10), cancels=10)

    usage = run.usage
    assert len(run.seconds) == 1 and usage.invocations == 1
    # The producer's SendMessage per cancel; the event source's one receive and one delete for the batch.
    assert usage.calls["sqs.SendMessage"] == 10
    assert usage.calls["sqs.ReceiveMessage"] == usage.calls["sqs.DeleteMessageBatch"] == 1
    assert usage.per_cancel("sqs_request") == pytest.approx(1.2)
    # One secret read for the container; the idempotency lock and its completion for every cancel.
    assert usage.per_cancel("secrets_manager_call") == pytest.approx(0.1)
    assert usage.calls["dynamodb.PutItem"] == 10
    assert usage.per_cancel("dynamodb_write_unit") >= 2
    assert usage.per_cancel("lambda_gb_second") == pytest.approx(run.seconds[0] * 256 / 1024 / 10, rel=0.01)
    assert usage.per_cancel("log_byte") > 0


def test_the_naive_design_reads_the_secret_and_is_invoked_for_every_message(bench: Bench) -> None:
    deployed = bench.run(Design(batch_size=10, max_in_flight=10), cancels=10).usage
    naive = bench.run(Design(batch_size=1, max_in_flight=1, naive=True), cancels=2).usage

    assert naive.calls["secrets-manager.GetSecretValue"] == 2
    assert naive.calls["sqs.ReceiveMessage"] == naive.calls["sqs.DeleteMessageBatch"] == 2
    assert naive.per_cancel("lambda_request") == 1
    figure, floor = cost_figures(deployed, naive)
    assert figure.value == pytest.approx(sum(naive.usd_per_million(item) for item in PRICES))
    assert figure.ratio > 1
    # The floor is what the contracts make every cancel pay: the deployed design pays at least that of each item.
    assert floor.baseline == pytest.approx(contract_floor_usd_per_million()) and floor.value == figure.value
    for item, quantity in CONTRACT_FLOOR.items():
        assert deployed.per_cancel(item) >= quantity


def test_a_figure_line_holds_its_ratio_and_whether_it_met_the_target() -> None:
    assert Figure("x", 0.36, 0.3, "<=1.2").line() == (
        "BENCH name=x value=0.36 baseline=0.3 ratio=1.20 target=<=1.2 unit=s status=met"
    )
    assert Figure("x", 2.4, 0.3, ">=8").status == "met"
    assert Figure("x", 0.5, 0.3, "<=1.2", gating=False).status == "missed"
    assert not Figure("x", 0.5, 0.3, "<=1.2", gating=False).failed
    assert Figure("x", 0.5, 0.3).status == "info"


def test_a_figure_may_bound_its_value_rather_than_its_ratio() -> None:
    rate = Figure("purge", 2500, 200, ">=2000", unit="requests/s", target_on="value")
    assert rate.status == "met" and rate.line().endswith("status=met target_on=value")
    assert Figure("rss", 151, 75, "<=150", unit="MiB", target_on="value").failed


def test_the_simulator_in_a_process_of_its_own_is_set_up_through_its_control_api() -> None:
    with SimulatorProcess() as simulator:
        simulator.add_ryng_account("acme", "token")
        simulator.add_ryng_calls("acme", "c-1")
        simulator.set_latency("ryng", 0.01)
        url = simulator.ryng_base_url.replace("{subdomain}", "acme") + "/rest-api/v1/progressive/call/c-1/cancel"

        answer = requests.post(url, headers={"x-access-token": "token"}, timeout=5)

        assert answer.status_code == 200 and answer.json()["error"] is False
        cancelled = requests.get(f"{simulator.base_url}/_sim/cancelled", params={"provider": "ryng"}, timeout=5)
        assert cancelled.json() == ["c-1"]
