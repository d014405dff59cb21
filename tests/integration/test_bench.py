"""`make bench`'s machinery on a tiny run: the AWS requests counted per cancel, the cost, the figure lines."""

import os
from collections.abc import Iterator
from unittest import mock

import pytest

from callcancel_local.bench import Bench, Deployed, Design, cost_figure
from callcancel_local.cost import PRICES, AwsMeter
from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.figures import Figure
from callcancel_local.simulator import ProviderSimulator

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
    figure = cost_figure(deployed, naive)
    assert figure.value == pytest.approx(sum(naive.usd_per_million(item) for item in PRICES))
    assert figure.ratio > 1


def test_a_figure_line_holds_its_ratio_and_whether_it_met_the_target() -> None:
    assert Figure("x", 0.36, 0.3, "<=1.2").line() == (
        "BENCH name=x value=0.36 baseline=0.3 ratio=1.20 target=<=1.2 unit=s status=met"
    )
    assert Figure("x", 2.4, 0.3, ">=8").status == "met"
    assert Figure("x", 0.5, 0.3, "<=1.2", gating=False).status == "missed"
    assert not Figure("x", 0.5, 0.3, "<=1.2", gating=False).failed
    assert Figure("x", 0.5, 0.3).status == "info"
