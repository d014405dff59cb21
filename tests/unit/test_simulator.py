"""The provider simulator answers like the provider pages in the seeds, over real HTTP."""

import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
import requests

from callcancel_local.simulator import PLUM_401, PLUM_403, PLUM_404, ProviderSimulator, SimCall

TOKEN = "tok-acme"
EMAIL = "ops@example.com"
KEY = "dev-key"
JSON = {"Accept": "application/json"}
XML_404 = (
    '<?xml version="1.0"?>\n<result>\n  <error>No deployment was found by that application id and deployment id.'
    "</error>\n</result>"
)


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator() as s:
        s.add_ryng_account("acme", TOKEN)
        s.add_ryng_calls("acme", "c1", "c2")
        s.add_plum_account(EMAIL, KEY)
        s.add_plum_account("viewer@example.com", "view-key", permitted=False)
        s.add_plum_deployment(EMAIL, "app1", "dep1", pending=3)
        yield s


@pytest.fixture
def client() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def ryng_url(sim: ProviderSimulator, call_id: str, subdomain: str = "acme") -> str:
    return sim.ryng_base_url.format(subdomain=subdomain) + f"/rest-api/v1/progressive/call/{call_id}/cancel"


def plum_url(sim: ProviderSimulator, app: str = "app1", dep: str = "dep1") -> str:
    return f"{sim.plum_base_url}/api/apps/{app}/{dep}/cancel"


def ryng_cancel(client: requests.Session, sim: ProviderSimulator, call_id: str = "c1") -> requests.Response:
    return client.post(ryng_url(sim, call_id), headers={"x-access-token": TOKEN, **JSON}, timeout=5)


def plum_cancel(client: requests.Session, sim: ProviderSimulator, **kwargs: Any) -> requests.Response:
    return client.delete(plum_url(sim), auth=(EMAIL, KEY), headers=JSON, timeout=5, **kwargs)


CANCELLED = {"error": False, "message": "Call Cancelled", "data": {}}
UNAUTHORIZED = {"error": True, "message": "Unauthorized Token"}
NO_CALL = {"error": True, "message": "Call ID does not exist"}


@pytest.mark.parametrize(
    ("method", "subdomain", "call_id", "headers", "status", "body"),
    [
        ("POST", "acme", "c1", {"x-access-token": TOKEN}, 200, CANCELLED),
        ("POST", "acme", "c1", {"x-access-key": TOKEN}, 200, CANCELLED),
        ("POST", "acme", "c1", {"x-access-token": "wrong", "x-access-key": TOKEN}, 200, CANCELLED),
        ("POST", "acme", "c1", {"x-access-token": "wrong"}, 403, UNAUTHORIZED),
        ("POST", "acme", "c1", {}, 403, UNAUTHORIZED),
        ("POST", "other", "c1", {"x-access-token": TOKEN}, 403, UNAUTHORIZED),
        ("POST", "acme", "nope", {"x-access-token": TOKEN}, 500, NO_CALL),
        ("GET", "acme", "c1", {"x-access-token": TOKEN}, 405, {"error": True, "message": "Method Not Allowed"}),
    ],
)
def test_ryng_cancel(
    sim: ProviderSimulator,
    client: requests.Session,
    method: str,
    subdomain: str,
    call_id: str,
    headers: dict[str, str],
    status: int,
    body: dict[str, Any],
) -> None:
    response = client.request(method, ryng_url(sim, call_id, subdomain), headers=headers, timeout=5)

    assert (response.status_code, response.json()) == (status, body)
    assert response.headers["Content-Type"] == "application/json"
    assert sim.calls() == [
        SimCall(
            "ryng",
            method,
            f"/ryng/{subdomain}/rest-api/v1/progressive/call/{call_id}/cancel",
            subdomain,
            call_id,
            status,
        )
    ]
    assert sim.cancelled("ryng") == (["c1"] if status == 200 else [])


def test_ryng_second_cancel_of_a_call_is_500(sim: ProviderSimulator, client: requests.Session) -> None:
    statuses = [ryng_cancel(client, sim, c).status_code for c in ("c1", "c1", "c2")]

    assert statuses == [200, 500, 200]
    assert sim.cancelled("ryng") == ["c1", "c2"]


@pytest.mark.parametrize(
    ("method", "auth", "deployment", "status", "error"),
    [
        ("DELETE", (EMAIL, "wrong"), "dep1", 401, PLUM_401),
        ("DELETE", None, "dep1", 401, PLUM_401),
        ("DELETE", ("nobody@example.com", KEY), "dep1", 401, PLUM_401),
        ("DELETE", ("viewer@example.com", "view-key"), "dep1", 403, PLUM_403),
        ("DELETE", (EMAIL, KEY), "dep9", 404, PLUM_404),
        ("POST", (EMAIL, KEY), "dep1", 405, "Invalid HTTP method supplied (only DELETE allowed)."),
    ],
)
def test_plum_json_errors(
    sim: ProviderSimulator,
    client: requests.Session,
    method: str,
    auth: tuple[str, str] | None,
    deployment: str,
    status: int,
    error: str,
) -> None:
    response = client.request(method, plum_url(sim, dep=deployment), auth=auth, headers=JSON, timeout=5)

    assert (response.status_code, response.json()) == (status, {"error": error})
    assert sim.calls()[0].account == (auth[0] if auth else None)
    assert sim.cancelled("plum") == []


def test_plum_cancel_is_202_with_no_body_and_repeatable(sim: ProviderSimulator, client: requests.Session) -> None:
    first, second = plum_cancel(client, sim), plum_cancel(client, sim)

    assert (first.status_code, first.content, second.status_code) == (202, b"", 202)
    assert sim.cancelled("plum") == ["app1/dep1", "app1/dep1"]
    assert sim.calls("plum")[0] == SimCall("plum", "DELETE", "/plum/api/apps/app1/dep1/cancel", EMAIL, "app1/dep1", 202)


def test_plum_errors_are_xml_unless_json_is_accepted(sim: ProviderSimulator, client: requests.Session) -> None:
    asked_xml = client.delete(plum_url(sim, dep="dep9"), auth=(EMAIL, KEY), headers={"Accept": "application/xml"})
    sim.plum_xml_errors = True
    ignored_json = client.delete(plum_url(sim, dep="dep9"), auth=(EMAIL, KEY), headers=JSON)

    for response in (asked_xml, ignored_json):
        assert (response.status_code, response.text) == (404, XML_404)
        assert response.headers["Content-Type"] == "application/xml"


def test_unknown_path_is_404(sim: ProviderSimulator, client: requests.Session) -> None:
    for path in ("/elsewhere", "/ryng/acme/rest-api/v1/other", "/plum/api/apps/x/cancel"):
        response = client.post(sim.base_url + path, timeout=5)
        assert (response.status_code, response.json()) == (404, {"error": "Not Found"})


def test_injected_faults_answer_first_then_normal_behaviour(sim: ProviderSimulator, client: requests.Session) -> None:
    sim.inject("ryng", 429, times=2, headers={"Retry-After": "7"})
    sim.inject("ryng", 503, body={"error": True, "message": "down"})

    responses = [ryng_cancel(client, sim) for _ in range(4)]

    assert [r.status_code for r in responses] == [429, 429, 503, 200]
    assert responses[0].headers["Retry-After"] == "7"
    assert responses[2].json() == {"error": True, "message": "down"}
    assert [c.status for c in sim.calls("ryng")] == [429, 429, 503, 200]
    assert sim.calls("plum") == []


def test_injected_redirect_and_text_body(sim: ProviderSimulator, client: requests.Session) -> None:
    sim.inject("plum", 302, headers={"Location": "https://elsewhere.example/"})
    sim.inject("plum", 500, body="database error")

    redirect = plum_cancel(client, sim, allow_redirects=False)
    failed = plum_cancel(client, sim)

    assert (redirect.status_code, redirect.headers["Location"]) == (302, "https://elsewhere.example/")
    assert (failed.status_code, failed.text) == (500, "database error")


def test_fault_until_cleared_on_every_provider(sim: ProviderSimulator, client: requests.Session) -> None:
    sim.inject("*", 500, times=-1)

    assert [ryng_cancel(client, sim).status_code, plum_cancel(client, sim).status_code] * 2 == [500, 500] * 2
    sim.clear_faults()
    assert [ryng_cancel(client, sim).status_code, plum_cancel(client, sim).status_code] == [200, 202]


def test_disconnect_is_a_connection_error(sim: ProviderSimulator, client: requests.Session) -> None:
    sim.inject_disconnect("ryng")

    with pytest.raises(requests.ConnectionError):
        ryng_cancel(client, sim)
    assert ryng_cancel(client, sim).status_code == 200
    assert [c.status for c in sim.calls()] == [0, 200]


def test_latency_is_concurrent(sim: ProviderSimulator, client: requests.Session) -> None:
    sim.set_latency("*", 0.3)
    sim.add_ryng_calls("acme", *(f"x{i}" for i in range(10)))

    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda i: ryng_cancel(client, sim, f"x{i}").status_code, range(10)))
    elapsed = time.monotonic() - started

    assert statuses == [200] * 10
    assert 0.3 <= elapsed < 1.5


def test_latency_makes_client_time_out(sim: ProviderSimulator, client: requests.Session) -> None:
    sim.set_latency("plum", 0.5)

    with pytest.raises(requests.Timeout):
        client.delete(plum_url(sim), auth=(EMAIL, KEY), timeout=0.1)


def test_keep_alive_serves_several_requests_on_one_connection(sim: ProviderSimulator) -> None:
    conn = HTTPConnection("127.0.0.1", int(sim.base_url.rsplit(":", 1)[1]), timeout=5)
    try:
        for call_id, status in (("c1", 200), ("c2", 200), ("c1", 500)):
            conn.request(
                "POST", f"/ryng/acme/rest-api/v1/progressive/call/{call_id}/cancel", headers={"x-access-token": TOKEN}
            )
            response = conn.getresponse()
            response.read()
            assert response.status == status
    finally:
        conn.close()


def test_stop_closes_kept_alive_connections(client: requests.Session) -> None:
    sim = ProviderSimulator().start()
    assert client.get(sim.base_url + "/_sim/calls", timeout=5).json() == []
    sim.stop()

    with pytest.raises(requests.ConnectionError):
        client.get(sim.base_url + "/_sim/calls", timeout=5)


def test_reset_forgets_everything(sim: ProviderSimulator, client: requests.Session) -> None:
    ryng_cancel(client, sim)
    sim.inject("ryng", 500)
    sim.plum_xml_errors = True
    sim.reset()

    assert (sim.calls(), sim.cancelled("ryng"), sim.plum_xml_errors) == ([], [], False)
    assert ryng_cancel(client, sim).status_code == 403


def test_control_api_round_trip(client: requests.Session) -> None:
    with ProviderSimulator() as sim:

        def control(path: str, payload: dict[str, Any] | None = None) -> Any:
            response = client.post(f"{sim.base_url}/_sim/{path}", json=payload or {}, timeout=5)
            assert response.status_code == 200, response.text
            return response.json()

        control("ryng/accounts", {"subdomain": "acme", "access_token": TOKEN, "calls": ["c1", 42]})
        control("plum/accounts", {"email": EMAIL, "developer_key": KEY, "deployments": [["app1", "dep1"]]})
        control("inject", {"provider": "plum", "status": 429, "times": 1, "headers": {"Retry-After": "3"}})
        control("inject", {"provider": "plum", "status": 0})
        control("latency", {"provider": "ryng", "seconds": 0.01})

        assert ryng_cancel(client, sim, "42").status_code == 200
        assert plum_cancel(client, sim).headers["Retry-After"] == "3"
        with pytest.raises(requests.ConnectionError):
            plum_cancel(client, sim)
        assert plum_cancel(client, sim).status_code == 202

        calls = client.get(f"{sim.base_url}/_sim/calls", params={"provider": "plum"}, timeout=5).json()
        assert [c["status"] for c in calls] == [429, 0, 202]
        assert calls[-1] == {
            "provider": "plum",
            "method": "DELETE",
            "path": "/plum/api/apps/app1/dep1/cancel",
            "account": EMAIL,
            "target": "app1/dep1",
            "status": 202,
        }
        assert client.get(f"{sim.base_url}/_sim/cancelled?provider=ryng", timeout=5).json() == ["42"]

        control("reset")
        assert sim.calls() == []
        bad = client.post(f"{sim.base_url}/_sim/latency", json={"provider": "nope", "seconds": 1}, timeout=5)
        assert bad.status_code == 400


def test_serving_prints_nothing(
    sim: ProviderSimulator, client: requests.Session, capfd: pytest.CaptureFixture[str]
) -> None:
    ryng_cancel(client, sim)
    client.get(sim.base_url + "/nowhere", timeout=5)

    assert capfd.readouterr() == ("", "")


def test_module_runs_in_the_foreground_and_prints_the_base_urls() -> None:
    local = Path(__file__).resolve().parents[2] / "local"
    with subprocess.Popen(
        [sys.executable, "-m", "callcancel_local.simulator", "--port", "0"],
        cwd=local,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(3))
            assert requests.get(lines["SIMULATOR_URL"] + "/_sim/calls", timeout=5).json() == []
        finally:
            proc.terminate()

    assert lines["RYNG_BASE_URL"] == lines["SIMULATOR_URL"] + "/ryng/{subdomain}"
    assert lines["PLUM_BASE_URL"] == lines["SIMULATOR_URL"] + "/plum"


def test_a_fault_can_target_one_call() -> None:
    with ProviderSimulator() as sim:
        sim.add_ryng_account("acme", "t")
        sim.add_ryng_calls("acme", "down", "up")
        sim.inject("ryng", 503, times=-1, target="down")
        url = sim.ryng_base_url.replace("{subdomain}", "acme") + "/rest-api/v1/progressive/call/{}/cancel"
        headers = {"x-access-token": "t"}
        assert requests.post(url.format("down"), headers=headers, timeout=5).status_code == 503
        assert requests.post(url.format("up"), headers=headers, timeout=5).status_code == 200
        assert requests.post(url.format("down"), headers=headers, timeout=5).status_code == 503


@pytest.mark.parametrize(
    ("provider", "status", "fmt", "content_type"),
    [
        ("ryng", 403, "json", "application/json"),
        ("plum", 401, "xml", "application/xml"),
        ("ryng", 400, "text", "text/plain; charset=utf-8"),
        ("plum", 500, "json", "application/json"),
    ],
)
def test_echo_repeats_the_credentials_of_the_request(
    sim: ProviderSimulator, client: requests.Session, provider: str, status: int, fmt: str, content_type: str
) -> None:
    sim.inject_echo(provider, status, fmt)

    response = ryng_cancel(client, sim) if provider == "ryng" else plum_cancel(client, sim)

    assert (response.status_code, response.headers["Content-Type"]) == (status, content_type)
    echoed = (TOKEN,) if provider == "ryng" else (EMAIL, KEY, response.request.headers["Authorization"])
    assert all(secret in response.text for secret in echoed)
    assert sim.calls()[-1].status == status


def test_a_huge_body_is_streamed_with_its_length(sim: ProviderSimulator, client: requests.Session) -> None:
    sim.inject_hostile("plum", 500, "huge", size=5_000_000)

    response = plum_cancel(client, sim, stream=True)

    assert response.headers["Content-Length"] == "5000000"
    assert sum(len(piece) for piece in response.iter_content(1 << 16)) == 5_000_000


def test_a_gzip_bomb_is_small_on_the_wire_and_huge_inflated(sim: ProviderSimulator, client: requests.Session) -> None:
    sim.inject_hostile("plum", 500, "gzip_bomb", size=1 << 20)

    response = plum_cancel(client, sim, stream=True)
    wire = response.raw.read(decode_content=False)

    assert response.headers["Content-Encoding"] == "gzip"
    assert 0.9 * (1 << 20) < len(wire) <= 1 << 20
    inflated = 0
    for _ in range(3):  # gzip members, one after another, each 1 MiB inflated: 1,000 of them make about 1 GiB
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        inflated += len(decoder.decompress(wire))
        wire = decoder.unused_data
    assert inflated == 3 << 20


def test_a_drip_sends_one_byte_per_interval(sim: ProviderSimulator) -> None:
    sim.inject_hostile("ryng", 200, "drip", size=6, interval=0.1)
    connection = HTTPConnection("127.0.0.1", int(sim.base_url.rsplit(":", 1)[1]), timeout=5)
    connection.request("POST", "/ryng/acme/rest-api/v1/progressive/call/c1/cancel", headers={"x-access-token": TOKEN})
    response = connection.getresponse()

    started = time.monotonic()
    body = b"".join(response.read(1) for _ in range(6))

    assert len(body) == 6
    assert time.monotonic() - started >= 0.4  # the first byte comes at once, the next five 0.1 s apart
    connection.close()


def test_control_api_injects_echoes_and_hostile_bodies(client: requests.Session) -> None:
    with ProviderSimulator() as sim:
        sim.add_ryng_account("acme", TOKEN)
        for payload in (
            {"provider": "ryng", "status": 403, "echo": "json"},
            {"provider": "ryng", "status": 500, "hostile": "huge", "size": 1000},
        ):
            assert client.post(f"{sim.base_url}/_sim/inject", json=payload, timeout=5).status_code == 200
        bad = client.post(f"{sim.base_url}/_sim/inject", json={"provider": "ryng", "status": 500, "echo": "yaml"})

        assert TOKEN in ryng_cancel(client, sim).text
        assert len(ryng_cancel(client, sim).content) == 1000
        assert bad.status_code == 400


def test_drip_headers_sends_the_head_one_byte_per_interval(sim: ProviderSimulator) -> None:
    sim.inject_hostile("ryng", 202, "drip_headers", size=0, interval=0.01)
    connection = HTTPConnection("127.0.0.1", int(sim.base_url.rsplit(":", 1)[1]), timeout=5)
    connection.request("POST", "/ryng/acme/rest-api/v1/progressive/call/c1/cancel", headers={"x-access-token": TOKEN})

    started = time.monotonic()
    response = connection.getresponse()

    # About 90 bytes of head, 0.01 s apart; then an ordinary answer.
    assert time.monotonic() - started >= 0.5
    assert (response.status, response.read()) == (202, b"{}")
    connection.close()
