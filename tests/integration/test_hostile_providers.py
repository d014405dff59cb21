"""Providers that misbehave on purpose: echoed credentials, bodies that never end, bombs, drips, drops.

Through the real worker handler (moto server + simulator) where the outcome is the point, and through the
real clients on real sockets where the time or the memory is.
"""

import base64
import contextlib
import io
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from callcancel.dead_letter import StoredDeadLetter
from callcancel.digest import build_digest
from callcancel.errors import AuthDenied, NotFound, Rejected, TransientFailure
from callcancel.models import PlumCancel, PlumCredentials, RyngCancel, RyngCredentials
from callcancel.peek import peek
from callcancel.providers import PlumClient, RyngClient, provider_session
from callcancel_local.simulator import ProviderSimulator
from tests.integration.conftest import PLUM_EMAIL, PLUM_KEY, RYNG_TOKEN, WorkerStack

pytestmark = pytest.mark.integration

RYNG = {"provider": "ryng", "account": "acme"}
PLUM = {"provider": "plum", "account": "acme", "application_id": "app1"}
# Every form in which the simulator's echoes carry a credential.
SECRETS = (
    RYNG_TOKEN,
    PLUM_KEY,
    PLUM_EMAIL,
    base64.b64encode(f"{PLUM_EMAIL}:{PLUM_KEY}".encode()).decode(),
    quote(PLUM_EMAIL, safe=""),
)


@pytest.fixture
def all_logs() -> Iterator[io.StringIO]:
    """Every log line of every logger but botocore's, down to DEBUG: Powertools' "Record processing exception"
    line included. (botocore at DEBUG prints GetSecretValue answers: see the README's security notes.)"""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    # Powertools' package logger does not propagate to the root.
    catchers = [logging.getLogger(), logging.getLogger("aws_lambda_powertools")]
    levels = {name: logging.getLogger(name).level for name in ("aws_lambda_powertools", "urllib3", "requests")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    for logger in catchers:
        logger.addHandler(handler)
    try:
        yield buffer
    finally:
        for logger in catchers:
            logger.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_echoed_credentials_appear_in_no_log_dead_letter_or_digest(
    stack: WorkerStack,
    simulator: ProviderSimulator,
    worker_logs: io.StringIO,
    all_logs: io.StringIO,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Given providers that repeat the credentials they were sent in their error bodies
    simulator.inject_echo("ryng", 403, "json", times=-1, target="c-403")
    simulator.inject_echo("ryng", 400, "text", times=-1, target="c-400")
    simulator.inject_echo("ryng", 500, "json", times=-1, target="c-500")
    simulator.inject_echo("plum", 401, "xml", times=-1, target="app1/d-401")
    simulator.inject_echo("plum", 400, "text", times=-1, target="app1/d-400")
    simulator.inject_echo("plum", 500, "json", times=-1, target="app1/d-500")
    for call_id in ("c-403", "c-400", "c-500"):
        stack.send({**RYNG, "call_id": call_id})
    for deployment in ("d-401", "d-400", "d-500"):
        stack.send({**PLUM, "deployment_id": deployment})

    # When the worker carries them out to the end (the 500s are retried until exhausted)
    stack.run_until_empty()

    # Then every request is dead-lettered with its class and the provider's (redacted) words
    letters = peek(stack.sqs, stack.dlq_url)
    assert sorted(letter["failure_class"] for letter in letters) == sorted(
        ["auth", "rejected", "exhausted", "auth", "rejected", "exhausted"]
    )
    assert all("[masked]" in letter["provider_message"] for letter in letters)
    digest = build_digest(
        [StoredDeadLetter.from_peeked(letter) for letter in letters], visible=6, stack_name="s", region="us-east-1"
    )
    # and the echoes really were logged, retried and dead-lettered, so the places below were exercised
    assert "Record processing exception" in all_logs.getvalue()
    assert "will retry" in worker_logs.getvalue()
    assert {call.status for call in simulator.calls()} == {400, 401, 403, 500}
    # but no credential, in any form, is in the logs, the exception lines, the DLQ or the digest
    captured = capfd.readouterr()
    outputs = {
        "worker log": worker_logs.getvalue(),
        "other logs": all_logs.getvalue(),
        "stdout/stderr": captured.out + captured.err,
        "dead letters": json.dumps(letters),
        "digest": digest.subject + digest.text,
    }
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} in the {where}"


def test_a_token_no_header_can_carry_is_config_at_the_first_attempt(
    stack: WorkerStack, simulator: ProviderSimulator
) -> None:
    stack.put_secret("callcancel/ryng/acme", {"subdomain": "acme", "access_token": "tok\u20acen"})
    stack.send({**RYNG, "call_id": "c-1"})

    stack.run_until_empty()

    [letter] = stack.dead_letters()
    assert (letter["failure_class"], letter["attempts"]) == ("config", "1")
    assert "access_token" in letter["failure_reason"]
    assert simulator.calls() == []


# ---- the clients on real sockets ------------------------------------------------------------------

PLUM_REQUEST = PlumCancel(provider="plum", account="acme", application_id="app1", deployment_id="dep1")
RYNG_REQUEST = RyngCancel(provider="ryng", account="acme", call_id="c-1")


def cancel(simulator: ProviderSimulator, provider: str, timeout: tuple[float, float] = (1.0, 1.0)) -> None:
    session = provider_session(pool_size=1)
    if provider == "plum":
        credentials: Any = PlumCredentials(email=PLUM_EMAIL, developer_key=PLUM_KEY)  # type: ignore[arg-type]
        PlumClient(session, simulator.plum_base_url, timeout).cancel(PLUM_REQUEST, credentials)
    else:
        credentials = RyngCredentials(subdomain="acme", access_token=RYNG_TOKEN)  # type: ignore[arg-type]
        RyngClient(session, simulator.ryng_base_url, timeout).cancel(RYNG_REQUEST, credentials)


@pytest.fixture
def accounts(simulator: ProviderSimulator) -> ProviderSimulator:
    simulator.add_ryng_account("acme", RYNG_TOKEN)
    simulator.add_ryng_calls("acme", "c-1")
    simulator.add_plum_account(PLUM_EMAIL, PLUM_KEY)
    simulator.add_plum_deployment(PLUM_EMAIL, "app1", "dep1")
    return simulator


@pytest.mark.parametrize(
    ("provider", "status", "expected", "ambiguous"),
    [
        ("plum", 404, NotFound, None),  # the status decides; the body is not needed
        ("plum", 202, None, None),
        ("ryng", 200, TransientFailure, True),  # the body decides, and it did not come in time
        ("ryng", 500, TransientFailure, True),
    ],
)
def test_a_dripped_body_does_not_hold_the_call_past_its_deadline(
    accounts: ProviderSimulator, provider: str, status: int, expected: type[Exception] | None, ambiguous: bool | None
) -> None:
    # 200 bytes, one every 0.1 s: 20 s, while no read ever waits longer than the 0.5 s read timeout.
    accounts.inject_hostile(provider, status, "drip", size=200, interval=0.1)

    started = time.monotonic()
    if expected is None:
        cancel(accounts, provider, timeout=(0.5, 0.5))
    else:
        with pytest.raises(expected) as caught:
            cancel(accounts, provider, timeout=(0.5, 0.5))
        if ambiguous is not None:
            assert getattr(caught.value, "ambiguous", None) is ambiguous
    elapsed = time.monotonic() - started

    assert elapsed < 1 + 1  # the deadline (connect + read timeout, 1 s) and some slack, not 20 s


@pytest.mark.parametrize("provider", ["ryng", "plum"])
def test_a_dripped_status_line_and_headers_do_not_hold_the_call_past_its_deadline(
    accounts: ProviderSimulator, provider: str
) -> None:
    # About 240 bytes of head, one every 0.1 s: 24 s, while no read waits longer than the 0.5 s read timeout.
    accounts.inject_hostile(provider, 202, "drip_headers", size=150, interval=0.1)

    started = time.monotonic()
    with pytest.raises(TransientFailure) as caught:
        cancel(accounts, provider, timeout=(0.5, 0.5))
    elapsed = time.monotonic() - started

    assert elapsed < 1 + 1  # the deadline (1 s) and some slack
    assert caught.value.ambiguous is True  # the request was sent; its answer never came whole
    assert "deadline" in caught.value.reason


@pytest.mark.parametrize(
    ("provider", "status", "expected"),
    [("plum", 401, AuthDenied), ("plum", 202, None), ("ryng", 200, Rejected), ("ryng", 503, TransientFailure)],
)
def test_hostile_bodies_are_read_as_no_message_and_the_status_decides(
    accounts: ProviderSimulator, provider: str, status: int, expected: type[Exception] | None
) -> None:
    for kind in ("huge", "gzip_bomb"):
        accounts.inject_hostile(provider, status, kind, size=300_000_000 if kind == "huge" else 1 << 20)
        if expected is None:
            cancel(accounts, provider, timeout=(2, 5))
            continue
        with pytest.raises(expected) as caught:
            cancel(accounts, provider, timeout=(2, 5))
        message = getattr(caught.value, "provider_message", None)
        # A bomb is refused whole; a huge plain body gives at most its first line, bounded.
        assert message is None if kind == "gzip_bomb" else len(message or "") <= 512


def test_transport_failures_are_ambiguous_only_once_the_request_was_sent(accounts: ProviderSimulator) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused_port = unused.getsockname()[1]  # closed when the block ends: connecting is refused
    session = provider_session(pool_size=1)
    credentials = PlumCredentials(email=PLUM_EMAIL, developer_key=PLUM_KEY)  # type: ignore[arg-type]
    refused = PlumClient(session, f"http://127.0.0.1:{refused_port}", (1, 1))

    with pytest.raises(TransientFailure) as not_sent:
        refused.cancel(PLUM_REQUEST, credentials)
    accounts.inject_disconnect("plum")
    with pytest.raises(TransientFailure) as dropped:
        cancel(accounts, "plum")
    accounts.set_latency("plum", 1.5)
    with pytest.raises(TransientFailure) as timed_out:
        cancel(accounts, "plum")

    assert not_sent.value.ambiguous is False
    assert dropped.value.ambiguous is True
    assert timed_out.value.ambiguous is True


# Run in a child process, so that its peak RSS is the client's alone (the simulator serves from this one).
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec.
_MEASURE = """
import json, re, sys
from callcancel.models import PlumCancel, PlumCredentials
from callcancel.providers import PlumClient, provider_session

def peak_mib():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read())[1]) / 1024

client = PlumClient(provider_session(pool_size=1), sys.argv[1], (3.05, 10))
request = PlumCancel(provider="plum", account="acme", application_id="app1", deployment_id="dep1")
credentials = PlumCredentials(email="ops@acme.example", developer_key="plum-key-SENSITIVE-9c2e")
before = peak_mib()
try:
    client.cancel(request, credentials)
    outcome = "cancelled"
except Exception as exc:
    outcome = type(exc).__name__
print(json.dumps({"outcome": outcome, "before_mib": before, "peak_mib": peak_mib()}))
"""


def peak_rss_of_one_cancel(simulator: ProviderSimulator) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, "-c", _MEASURE, simulator.plum_base_url],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    return dict(json.loads(child.stdout))


@pytest.mark.parametrize(("kind", "size"), [("huge", 300_000_000), ("gzip_bomb", 1 << 20)])
def test_a_hostile_body_does_not_raise_the_memory_of_the_process(
    accounts: ProviderSimulator, kind: str, size: int
) -> None:
    # Before the cap: a 300 MB body took the process to ~640 MiB, a 1 MiB gzip bomb to over 2 GiB.
    accounts.inject_hostile("plum", 500, kind, size=size)

    measured = peak_rss_of_one_cancel(accounts)

    assert measured["outcome"] == "TransientFailure"
    assert measured["peak_mib"] < 150
    assert measured["peak_mib"] - measured["before_mib"] < 20, measured


def test_answers_read_to_their_end_keep_the_connection_for_the_next_call(accounts: ProviderSimulator) -> None:
    # Reading the body ourselves (streamed, capped) must still hand a finished connection back to the pool.
    session = provider_session(pool_size=1)
    client = PlumClient(session, accounts.plum_base_url, (1, 1))
    credentials = PlumCredentials(email=PLUM_EMAIL, developer_key=PLUM_KEY)  # type: ignore[arg-type]
    for deployment in ("dep1", "missing", "dep1"):
        request = PlumCancel(provider="plum", account="acme", application_id="app1", deployment_id=deployment)
        with contextlib.suppress(NotFound):
            client.cancel(request, credentials)

    pools = session.get_adapter(accounts.plum_base_url).poolmanager.pools
    [pool] = [pools[key] for key in pools.keys()]  # noqa: SIM118  (the container refuses plain iteration)
    assert (pool.num_requests, pool.num_connections) == (3, 1)
