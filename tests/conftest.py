"""Shared fixtures: moto in server mode and the provider simulator, both on loopback, on free ports."""

import os
from collections.abc import Iterator

import pytest

from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.simulator import ProviderSimulator


@pytest.fixture(scope="session")
def embedded_aws() -> Iterator[EmbeddedAws]:
    with EmbeddedAws() as aws, pytest.MonkeyPatch.context() as env:
        for name, value in aws.environment().items():
            env.setenv(name, value)
        yield aws


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[ProviderSimulator]:
    with ProviderSimulator() as simulator:
        yield simulator


@pytest.fixture
def simulator(simulator_server: ProviderSimulator) -> ProviderSimulator:
    simulator_server.reset()
    return simulator_server


@pytest.fixture(autouse=True)
def _no_stray_aws() -> None:
    # Unit tests must never reach AWS; integration tests get the embedded endpoint from `embedded_aws`.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
