"""Chaos: the simulator's faults by fraction, for soak runs, over real HTTP."""

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from callcancel_local.simulator import Chaos, ProviderSimulator

TOKEN = "tok-acme"


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator() as s:
        s.add_ryng_account("acme", TOKEN)
        s.add_ryng_calls("acme", *(f"c{i}" for i in range(200)))
        yield s


def cancel(sim: ProviderSimulator, call_id: str = "c1", timeout: float = 5) -> requests.Response:
    url = sim.ryng_base_url.format(subdomain="acme") + f"/rest-api/v1/progressive/call/{call_id}/cancel"
    return requests.post(url, headers={"x-access-token": TOKEN}, timeout=timeout)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_an_error_status_cancels_nothing(sim: ProviderSimulator, status: int) -> None:
    sim.set_chaos("ryng", Chaos(1.0, mix=((str(status), 1.0),)))

    assert cancel(sim).status_code == status
    assert sim.cancelled("ryng") == []


def test_429_says_when_to_come_back(sim: ProviderSimulator) -> None:
    sim.set_chaos("ryng", Chaos(1.0, mix=(("429", 1.0),), retry_after=2))

    response = cancel(sim)

    assert (response.status_code, response.headers["Retry-After"]) == (429, "2")
    assert sim.cancelled("ryng") == []


def test_a_reset_is_a_connection_error_and_cancels_nothing(sim: ProviderSimulator) -> None:
    sim.set_chaos("ryng", Chaos(1.0, mix=(("reset", 1.0),)))

    with pytest.raises(requests.ConnectionError):
        cancel(sim)
    assert sim.cancelled("ryng") == []
    assert [call.status for call in sim.calls()] == [0]


def test_a_timeout_hides_a_cancel_the_provider_made(sim: ProviderSimulator) -> None:
    sim.set_chaos("ryng", Chaos(1.0, mix=(("timeout", 1.0),), timeout_seconds=0.6))

    with pytest.raises(requests.ReadTimeout):
        cancel(sim, timeout=0.3)
    assert sim.cancelled("ryng") == ["c1"]
    [call] = sim.calls()
    assert (call.status, call.delay) == (200, 0.6)


def test_a_slow_answer_arrives_within_the_timeout(sim: ProviderSimulator) -> None:
    sim.set_chaos("ryng", Chaos(1.0, mix=(("slow", 1.0),), slow_seconds=(0.2, 0.3)))

    started = time.monotonic()
    response = cancel(sim)

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2
    assert 0.2 <= sim.calls()[0].delay <= 0.3


def test_the_fraction_and_the_mix_hold_and_a_seed_repeats_them(sim: ProviderSimulator) -> None:
    def run(seed: int) -> list[int]:
        sim.reset()
        sim.add_ryng_account("acme", TOKEN)
        sim.add_ryng_calls("acme", *(f"c{i}" for i in range(200)))
        sim.set_chaos("ryng", Chaos(0.3, mix=(("500", 1.0), ("503", 1.0))), seed=seed)
        return [cancel(sim, f"c{i}").status_code for i in range(100)]

    statuses = run(7)

    counts = Counter(statuses)
    assert set(counts) == {200, 500, 503}
    assert 15 <= counts[500] + counts[503] <= 45  # 30 % of 100, give or take
    assert run(7) == statuses


def test_explicit_faults_come_before_chaos_and_off_means_off(sim: ProviderSimulator) -> None:
    sim.set_chaos("ryng", Chaos(1.0, mix=(("503", 1.0),)))
    sim.inject("ryng", 418, target="c1")

    assert cancel(sim, "c1").status_code == 418
    sim.set_chaos("ryng", None)
    assert cancel(sim, "c1").status_code == 200


def test_the_control_api_sets_and_clears_chaos(sim: ProviderSimulator) -> None:
    control = f"{sim.base_url}/_sim/chaos"

    requests.post(control, json={"provider": "*", "fraction": 1, "mix": {"502": 1}}, timeout=5).raise_for_status()
    assert cancel(sim, "c1").status_code == 502
    requests.post(control, json={"provider": "*", "fraction": 0}, timeout=5).raise_for_status()
    assert cancel(sim, "c1").status_code == 200


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown kinds"):
        Chaos(0.3, mix=(("418", 1.0),))
