"""HTTP simulator of the Ryng and Plum Fuse cancel APIs (see the provider pages in DESIGN.md's seeds).

Tests drive it in-process through `ProviderSimulator`; other processes (the local stack) drive it
through the small JSON control API under `/_sim/`.
"""

import argparse
import base64
import binascii
import contextlib
import functools
import gzip
import itertools
import json
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

PROVIDERS = ("ryng", "plum")

_RYNG_PATH = re.compile(r"/ryng/(?P<subdomain>[^/]+)/rest-api/v1/progressive/call/(?P<call_id>[^/]+)/cancel")
_PLUM_PATH = re.compile(r"/plum/api/apps/(?P<app>[^/]+)/(?P<dep>[^/]+)/cancel")

PLUM_401 = "Authentication headers invalid or the account is inactive."
PLUM_403 = "The account attempting to cancel calls does not have appropriate permissions."
PLUM_404 = "No deployment was found by that application id and deployment id."
PLUM_405 = "Invalid HTTP method supplied (only DELETE allowed)."

Headers = dict[str, str]


@dataclass(frozen=True)
class SimCall:
    """One provider request the simulator answered (status 0: the connection was dropped instead)."""

    provider: str
    method: str
    path: str
    account: str | None
    target: str | None
    status: int
    # When it was answered (time.monotonic()), and how long the answer was held back after the request was
    # carried out (chaos "slow" and "timeout"). Not part of equality: tests compare what was asked and answered.
    at: float = field(default=0.0, compare=False)
    delay: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    headers: Headers = field(default_factory=dict)
    # A body too big to hold, or sent slowly: written piece by piece, `interval` seconds apart.
    # `length` is its Content-Length.
    pieces: Callable[[], Iterable[bytes]] | None = None
    length: int = 0
    interval: float = 0.0
    header_interval: float = 0.0  # >0: the status line and headers themselves go out a byte at a time
    delay: float = 0.0  # seconds to hold the answer back (it is sent after the request was carried out)
    reset: bool = False  # answer nothing: reset the connection (TCP RST)


# Chaos: faults drawn at random for a fraction of requests, for soak runs (see `set_chaos`).
CHAOS_KINDS = ("500", "502", "503", "429", "timeout", "reset", "slow")


@dataclass(frozen=True)
class Chaos:
    """A fraction of requests meets a fault drawn from `mix` (kind -> weight).

    - "500", "502", "503": that status, with a JSON error body, and nothing carried out.
    - "429": with `Retry-After: retry_after`, nothing carried out.
    - "reset": the connection is reset (TCP RST) before anything is carried out.
    - "timeout": the request IS carried out, then the answer is held `timeout_seconds` (longer than the client's
      read timeout): the client sees a timeout on a cancel the provider made.
    - "slow": carried out, answered after uniform(*slow_seconds), within the client's timeout.
    """

    fraction: float
    mix: tuple[tuple[str, float], ...] = tuple((kind, 1.0) for kind in CHAOS_KINDS)
    timeout_seconds: float = 2.0
    slow_seconds: tuple[float, float] = (0.2, 0.6)
    retry_after: int = 1

    def __post_init__(self) -> None:
        unknown = {kind for kind, _ in self.mix} - set(CHAOS_KINDS)
        if unknown or not 0 <= self.fraction <= 1:
            raise ValueError(f"bad chaos: fraction {self.fraction}, unknown kinds {sorted(unknown)}")

    def draw(self, rng: random.Random) -> str | None:
        if rng.random() >= self.fraction:
            return None
        kinds = [kind for kind, _ in self.mix]
        weights = [weight for _, weight in self.mix]
        kind: str = rng.choices(kinds, weights)[0]
        return kind


@dataclass
class _Fault:
    reply: _Reply | Callable[[Headers], _Reply] | None  # a callable builds it from the request's headers; None: drop
    remaining: int  # -1: until cleared
    target: str | None = None  # only requests for this call id / "app/deployment"; None: every request


@dataclass
class _RyngAccount:
    access_token: str
    pending: set[str] = field(default_factory=set)


@dataclass
class _PlumAccount:
    developer_key: str
    permitted: bool
    deployments: dict[tuple[str, str], int] = field(default_factory=dict)


def _json(status: int, payload: object, **headers: str) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})


def _body_reply(status: int, body: bytes | str | dict[str, Any] | None, headers: Headers | None) -> _Reply:
    if isinstance(body, dict):
        raw, content_type = json.dumps(body).encode(), "application/json"
    elif isinstance(body, str):
        raw, content_type = body.encode(), "text/plain; charset=utf-8"
    else:
        raw, content_type = body or b"", "application/octet-stream"
    given = headers or {}
    defaults = {"Content-Type": content_type} if raw and "content-type" not in {k.lower() for k in given} else {}
    return _Reply(status, raw, defaults | given)


ECHO_FORMATS = ("json", "xml", "text")
HOSTILE_BODIES = ("huge", "gzip_bomb", "drip", "drip_headers")


def _echo(provider: str, status: int, fmt: str, headers: Headers) -> _Reply:
    """An error that repeats the credentials it was sent, as careless providers do."""
    if provider == "ryng":
        token = headers.get("x-access-token", "")
        text = f"Unauthorized Token {token} (x-access-key: {headers.get('x-access-key', '')})"
    else:
        user, key = _basic_auth(headers) or ("", "")
        text = f"Authentication failed for {user} with key {key}; Authorization: {headers.get('authorization', '')}"
    if fmt == "xml":
        xml = f'<?xml version="1.0"?>\n<result>\n  <error>{escape(text)}</error>\n</result>'
        return _Reply(status, xml.encode(), {"Content-Type": "application/xml"})
    if fmt == "json":
        return _json(status, {"error": True, "message": text} if provider == "ryng" else {"error": text})
    if fmt == "text":
        return _Reply(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})
    raise ValueError(f"unknown echo format {fmt!r}, not one of {ECHO_FORMATS}")


@functools.cache
def _gzip_bomb(size: int) -> bytes:
    # Gzip members may follow one another; each inflates about 1 KiB to 1 MiB of zeros: 1 MiB makes 1 GiB.
    member = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    return member * max(1, size // len(member))


def _hostile(status: int, kind: str, size: int, interval: float) -> _Reply:
    """A body that a careless reader pays for: `size` bytes, a gzip bomb of `size` bytes, or `size` bytes dripped."""
    if kind == "huge":
        block = b"x" * (1 << 20)
        full, rest = divmod(size, len(block))
        return _Reply(
            status,
            headers={"Content-Type": "text/plain"},
            pieces=lambda: itertools.chain(itertools.repeat(block, full), [block[:rest]]),
            length=size,
        )
    if kind == "gzip_bomb":
        body = _gzip_bomb(size)
        return _Reply(status, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    if kind == "drip":
        body = json.dumps({"error": True, "message": "x" * max(0, size - 30)}).encode()[:size]
        return _Reply(
            status,
            headers={"Content-Type": "application/json"},
            pieces=lambda: (body[i : i + 1] for i in range(len(body))),
            length=len(body),
            interval=interval,
        )
    if kind == "drip_headers":
        padding = {"X-Padding": "x" * max(0, size)}
        return _Reply(status, b"{}", {"Content-Type": "application/json", **padding}, header_interval=interval)
    raise ValueError(f"unknown hostile body {kind!r}, not one of {HOSTILE_BODIES}")


def _basic_auth(headers: Headers) -> tuple[str, str] | None:
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _identify(provider: str, match: re.Match[str] | None, headers: Headers) -> tuple[str | None, str | None]:
    if provider == "ryng":
        return (match["subdomain"], match["call_id"]) if match else (None, None)
    email = (_basic_auth(headers) or (None, None))[0]
    return email, f"{match['app']}/{match['dep']}" if match else None


def _providers(provider: str) -> tuple[str, ...]:
    if provider == "*":
        return PROVIDERS
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}")
    return (provider,)


class ProviderSimulator:
    """Ryng and Plum cancel endpoints on one loopback port, with fault injection and a request log."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.plum_xml_errors = False
        self._clear()
        # Bound here so the URLs are known before start(), e.g. to build a Lambda environment.
        self._server = _Server((host, port), self)
        self.base_url = f"http://{host}:{self._server.server_port}"
        self.ryng_base_url = f"{self.base_url}/ryng/{{subdomain}}"
        self.plum_base_url = f"{self.base_url}/plum"

    def _clear(self) -> None:
        # A request still sleeping on latency when the simulator is reset belongs to the old state:
        # it must neither change the new state nor appear in its log (tests reset between cases).
        self._epoch = getattr(self, "_epoch", 0) + 1
        self._ryng: dict[str, _RyngAccount] = {}
        self._plum: dict[str, _PlumAccount] = {}
        self._faults: dict[str, deque[_Fault]] = {p: deque() for p in PROVIDERS}
        self._latency: dict[str, float] = dict.fromkeys(PROVIDERS, 0.0)
        self._chaos: dict[str, Chaos | None] = dict.fromkeys(PROVIDERS)
        self._rng = random.Random()  # noqa: S311  (fault injection, not cryptography)
        self._log: list[SimCall] = []
        self._cancelled: dict[str, list[str]] = {p: [] for p in PROVIDERS}

    def start(self) -> "ProviderSimulator":
        if self._thread is None:
            # A short poll keeps stop() fast: shutdown() waits up to one poll interval.
            serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
            self._thread = threading.Thread(target=serve, name="provider-sim", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() waits for serve_forever, so it would hang if start() never ran.
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._server.drop_connections()

    def __enter__(self) -> "ProviderSimulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup ---------------------------------------------------------------------------------

    def add_ryng_account(self, subdomain: str, access_token: str) -> None:
        with self._lock:
            self._ryng.setdefault(subdomain, _RyngAccount(access_token)).access_token = access_token

    def add_ryng_calls(self, subdomain: str, *call_ids: str) -> None:
        with self._lock:
            self._ryng[subdomain].pending.update(call_ids)

    def add_plum_account(self, email: str, developer_key: str, *, permitted: bool = True) -> None:
        with self._lock:
            account = self._plum.setdefault(email, _PlumAccount(developer_key, permitted))
            account.developer_key, account.permitted = developer_key, permitted

    def add_plum_deployment(self, email: str, application_id: str, deployment_id: str, pending: int = 1) -> None:
        with self._lock:
            self._plum[email].deployments[application_id, deployment_id] = pending

    def set_latency(self, provider: str, seconds: float) -> None:
        with self._lock:
            for p in _providers(provider):
                self._latency[p] = seconds

    def set_chaos(self, provider: str, chaos: Chaos | None, *, seed: int | None = None) -> None:
        """Faults by fraction from now on (None: off). Explicit `inject` faults still come first."""
        with self._lock:
            for p in _providers(provider):
                self._chaos[p] = chaos
            if seed is not None:
                self._rng.seed(seed)

    def inject(
        self,
        provider: str,
        status: int,
        *,
        times: int = 1,
        body: bytes | str | dict[str, Any] | None = None,
        headers: Headers | None = None,
        target: str | None = None,
    ) -> None:
        self._add_fault(provider, _body_reply(status, body, headers), times, target)

    def inject_disconnect(self, provider: str, *, times: int = 1, target: str | None = None) -> None:
        self._add_fault(provider, None, times, target)

    def inject_echo(self, provider: str, status: int, fmt: str, *, times: int = 1, target: str | None = None) -> None:
        """Answer `status` with an error body (json, xml or text) that repeats the credentials of the request."""
        if fmt not in ECHO_FORMATS:
            raise ValueError(f"unknown echo format {fmt!r}, not one of {ECHO_FORMATS}")
        for p in _providers(provider):
            self._add_fault(p, functools.partial(_echo, p, status, fmt), times, target)

    def inject_hostile(
        self,
        provider: str,
        status: int,
        kind: str,
        *,
        size: int = 300_000_000,
        interval: float = 1.0,
        times: int = 1,
        target: str | None = None,
    ) -> None:
        """Answer `status` with a hostile body: `huge` (`size` bytes), `gzip_bomb` (about `size` bytes that
        inflate about 1,000-fold, sent although the client asked for identity), `drip` (`size` bytes, one
        every `interval` seconds) or `drip_headers` (the status line and headers, with `size` bytes of padding,
        one byte every `interval` seconds)."""
        self._add_fault(provider, _hostile(status, kind, size, interval), times, target)

    def _add_fault(
        self, provider: str, reply: _Reply | Callable[[Headers], _Reply] | None, times: int, target: str | None
    ) -> None:
        if times < 1 and times != -1:
            raise ValueError(f"times must be positive or -1, not {times}")
        with self._lock:
            for p in _providers(provider):
                self._faults[p].append(_Fault(reply, times, target))

    def clear_faults(self) -> None:
        with self._lock:
            for queue in self._faults.values():
                queue.clear()

    def reset(self) -> None:
        with self._lock:
            self._clear()
            self.plum_xml_errors = False

    # -- inspection ----------------------------------------------------------------------------

    def calls(self, provider: str | None = None) -> list[SimCall]:
        with self._lock:
            return [c for c in self._log if provider is None or c.provider == provider]

    def cancelled(self, provider: str) -> list[str]:
        with self._lock:
            return list(self._cancelled[provider])

    # -- serving (runs in handler threads) -----------------------------------------------------

    def _answer(self, method: str, raw_path: str, headers: Headers, body: bytes) -> _Reply | None:
        """The reply to one request, or None to drop the connection."""
        url = urlsplit(raw_path)
        if url.path.startswith("/_sim/"):
            return self._control(method, url.path, url.query, body)
        provider = url.path.split("/")[1]
        if provider not in PROVIDERS:
            return _json(404, {"error": "Not Found"})
        with self._lock:
            delay, epoch = self._latency[provider], self._epoch
        if delay:
            time.sleep(delay)  # outside the lock, so concurrent requests overlap
        match = (_RYNG_PATH if provider == "ryng" else _PLUM_PATH).fullmatch(url.path)
        with self._lock:
            if epoch != self._epoch:
                return _json(503, {"error": "simulator was reset"})
            fault = self._take_fault(provider, _identify(provider, match, headers)[1])
            chaos = self._chaos[provider]
            kind = chaos.draw(self._rng) if fault is None and chaos is not None else None
            if fault is not None:
                reply = fault.reply(headers) if callable(fault.reply) else fault.reply
            elif chaos is not None and kind is not None and kind not in ("timeout", "slow"):
                reply = _chaos_reply(kind, chaos)
            else:
                reply = (self._ryng_cancel if provider == "ryng" else self._plum_cancel)(method, match, headers)
                if chaos is not None and kind is not None:
                    delay = chaos.timeout_seconds if kind == "timeout" else self._rng.uniform(*chaos.slow_seconds)
                    reply = replace(reply, delay=delay)
            status = 0 if reply is None or reply.reset else reply.status
            identity = _identify(provider, match, headers)
            delay = 0.0 if reply is None else reply.delay
            self._log.append(SimCall(provider, method, url.path, *identity, status, time.monotonic(), delay))
        return reply

    def _take_fault(self, provider: str, target: str | None) -> _Fault | None:
        queue = self._faults[provider]
        fault = next((f for f in queue if f.target is None or f.target == target), None)
        if fault is not None and fault.remaining > 0:
            fault.remaining -= 1
            if fault.remaining == 0:
                queue.remove(fault)
        return fault

    def _ryng_cancel(self, method: str, match: re.Match[str] | None, headers: Headers) -> _Reply:
        if match is None:
            return _json(404, {"error": "Not Found"})
        if method != "POST":
            return _json(405, {"error": True, "message": "Method Not Allowed"}, Allow="POST")
        account = self._ryng.get(match["subdomain"])
        tokens = {headers.get("x-access-token"), headers.get("x-access-key")}
        if account is None or account.access_token not in tokens:
            return _json(403, {"error": True, "message": "Unauthorized Token"})
        if match["call_id"] not in account.pending:
            return _json(500, {"error": True, "message": "Call ID does not exist"})
        account.pending.remove(match["call_id"])
        self._cancelled["ryng"].append(match["call_id"])
        return _json(200, {"error": False, "message": "Call Cancelled", "data": {}})

    def _plum_cancel(self, method: str, match: re.Match[str] | None, headers: Headers) -> _Reply:
        if match is None:
            return _json(404, {"error": "Not Found"})
        if method != "DELETE":
            return self._plum_error(405, PLUM_405, headers, Allow="DELETE")
        user, password = _basic_auth(headers) or ("", "")
        account = self._plum.get(user)
        if account is None or account.developer_key != password:
            return self._plum_error(401, PLUM_401, headers)
        if not account.permitted:
            return self._plum_error(403, PLUM_403, headers)
        key = (match["app"], match["dep"])
        if key not in account.deployments:
            return self._plum_error(404, PLUM_404, headers)
        # Plum cancels "all pending", so a repeat on a known deployment is a 202 too.
        account.deployments[key] = 0
        self._cancelled["plum"].append("/".join(key))
        return _Reply(202)

    def _plum_error(self, status: int, message: str, headers: Headers, **extra: str) -> _Reply:
        if "application/json" in headers.get("accept", "") and not self.plum_xml_errors:
            return _json(status, {"error": message}, **extra)
        xml = f'<?xml version="1.0"?>\n<result>\n  <error>{escape(message)}</error>\n</result>'
        return _Reply(status, xml.encode(), {"Content-Type": "application/xml", **extra})

    # -- control API ---------------------------------------------------------------------------

    def _control(self, method: str, path: str, query: str, body: bytes) -> _Reply:
        routes: dict[tuple[str, str], Callable[[dict[str, Any]], object]] = {
            ("GET", "/_sim/calls"): lambda d: [_call_fields(c) for c in self.calls(d.get("provider"))],
            ("GET", "/_sim/cancelled"): lambda d: self.cancelled(d["provider"]),
            ("POST", "/_sim/reset"): lambda d: self.reset(),
            ("POST", "/_sim/clear_faults"): lambda d: self.clear_faults(),
            ("POST", "/_sim/latency"): lambda d: self.set_latency(d["provider"], float(d["seconds"])),
            ("POST", "/_sim/inject"): self._control_inject,
            ("POST", "/_sim/chaos"): self._control_chaos,
            ("POST", "/_sim/plum/xml_errors"): self._control_xml_errors,
            ("POST", "/_sim/ryng/accounts"): self._control_ryng_account,
            ("POST", "/_sim/plum/accounts"): self._control_plum_account,
        }
        route = routes.get((method, path))
        if route is None:
            return _json(404, {"error": f"no control route {method} {path}"})
        try:
            data = {k: v[0] for k, v in parse_qs(query).items()} if method == "GET" else json.loads(body or b"{}")
            result = route(data)
        except (KeyError, TypeError, ValueError) as exc:
            return _json(400, {"error": f"bad control request: {exc!r}"})
        return _json(200, {"ok": True} if result is None else result)

    def _control_inject(self, d: dict[str, Any]) -> None:
        if "echo" in d:
            self.inject_echo(d["provider"], int(d["status"]), d["echo"], times=int(d.get("times", 1)))
        elif "hostile" in d:
            self.inject_hostile(
                d["provider"],
                int(d["status"]),
                d["hostile"],
                size=int(d.get("size", 300_000_000)),
                interval=float(d.get("interval", 1.0)),
                times=int(d.get("times", 1)),
            )
        elif d["status"] == 0:
            self.inject_disconnect(d["provider"], times=int(d.get("times", 1)))
        else:
            self.inject(
                d["provider"],
                int(d["status"]),
                times=int(d.get("times", 1)),
                body=d.get("body"),
                headers=d.get("headers"),
            )

    def _control_chaos(self, d: dict[str, Any]) -> None:
        """{"provider": "*", "fraction": 0.3, "mix": {"503": 1, "timeout": 1}, ...}; fraction 0 turns it off."""
        options: dict[str, Any] = {k: d[k] for k in ("timeout_seconds", "retry_after") if k in d}
        if "slow_seconds" in d:
            options["slow_seconds"] = tuple(d["slow_seconds"])
        if "mix" in d:
            options["mix"] = tuple((str(k), float(v)) for k, v in d["mix"].items())
        chaos = Chaos(float(d["fraction"]), **options) if float(d["fraction"]) else None
        self.set_chaos(d["provider"], chaos, seed=d.get("seed"))

    def _control_xml_errors(self, d: dict[str, Any]) -> None:
        self.plum_xml_errors = bool(d["enabled"])

    def _control_ryng_account(self, d: dict[str, Any]) -> None:
        self.add_ryng_account(d["subdomain"], d["access_token"])
        self.add_ryng_calls(d["subdomain"], *map(str, d.get("calls", [])))

    def _control_plum_account(self, d: dict[str, Any]) -> None:
        self.add_plum_account(d["email"], d["developer_key"], permitted=bool(d.get("permitted", True)))
        for app, dep, *pending in d.get("deployments", []):
            self.add_plum_deployment(d["email"], str(app), str(dep), *map(int, pending))


def _call_fields(call: SimCall) -> dict[str, Any]:
    """A call for the control API: what was asked and answered (the timing fields stay in-process)."""
    return {name: value for name, value in asdict(call).items() if name not in ("at", "delay")}


def _chaos_reply(kind: str, chaos: Chaos) -> _Reply:
    if kind == "reset":
        return _Reply(0, reset=True)
    if kind == "429":
        return _json(429, {"error": True, "message": "Too Many Requests"}, **{"Retry-After": str(chaos.retry_after)})
    return _json(int(kind), {"error": True, "message": f"chaos: HTTP {kind}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for handlers sleeping on injected latency
    request_queue_size = 128  # bursts of concurrent connects from a batch of workers

    def __init__(self, address: tuple[str, int], sim: ProviderSimulator) -> None:
        super().__init__(address, _Handler)
        self.sim = sim
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def track(self, conn: socket.socket, *, opened: bool) -> None:
        with self._open_lock:
            (self._open.add if opened else self._open.discard)(conn)

    def drop_connections(self) -> None:
        # Idle keep-alive connections would otherwise go on being served after stop().
        with self._open_lock:
            conns, self._open = self._open, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        # Clients hanging up (timeouts, stop()) are expected; anything else is a bug worth a traceback.
        if not isinstance(sys.exception(), OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 120  # frees the thread of a keep-alive connection a client forgot
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would delay the body ~40 ms

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, opened=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, opened=False)

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.sim._answer(self.command, self.path, headers, body)
        if reply is None:
            self.close_connection = True
            return
        if reply.reset:
            # Linger 0: close() sends RST instead of FIN, as a crashed peer or a middlebox does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if reply.delay:
            time.sleep(reply.delay)  # carried out already; the client may have given up by now
        if reply.header_interval:
            self._drip_head(reply)
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(reply.length if reply.pieces else len(reply.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if reply.pieces is None:
            self.wfile.write(reply.body)
            return
        self.close_connection = True  # a client that stops reading early leaves the rest unread
        for piece in reply.pieces():
            self.wfile.write(piece)
            self.wfile.flush()
            if reply.interval:
                time.sleep(reply.interval)

    def _drip_head(self, reply: _Reply) -> None:
        self.close_connection = True
        fields = {**reply.headers, "Content-Length": str(len(reply.body))}
        head = f"HTTP/1.1 {reply.status} Dripped\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        for byte in head.encode("latin-1"):
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(reply.header_interval)
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_any

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown test and local-stack output


class SimulatorProcess:
    """The simulator in a process of its own, set up through its control API.

    For measurements: a provider's work (parsing the request, writing the answer) must not share the measured
    process's CPU and GIL, as it does not in production. It offers the setup methods of `ProviderSimulator` that
    the benchmark uses.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._tokens: dict[str, str] = {}
        self.base_url = self.ryng_base_url = self.plum_base_url = ""

    def __enter__(self) -> "SimulatorProcess":
        self._process = subprocess.Popen(
            [sys.executable, "-m", "callcancel_local.simulator"], stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        urls = dict(self._process.stdout.readline().strip().split("=", 1) for _ in range(3))
        self.base_url, self.ryng_base_url = urls["SIMULATOR_URL"], urls["RYNG_BASE_URL"]
        self.plum_base_url = urls["PLUM_BASE_URL"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()

    def _control(self, path: str, data: dict[str, Any]) -> None:
        request = urllib.request.Request(f"{self.base_url}/_sim/{path}", json.dumps(data).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def add_ryng_account(self, subdomain: str, access_token: str) -> None:
        self._tokens[subdomain] = access_token
        self._control("ryng/accounts", {"subdomain": subdomain, "access_token": access_token})

    def add_ryng_calls(self, subdomain: str, *call_ids: str) -> None:
        account = {"subdomain": subdomain, "access_token": self._tokens[subdomain], "calls": list(call_ids)}
        self._control("ryng/accounts", account)

    def set_latency(self, provider: str, seconds: float) -> None:
        self._control("latency", {"provider": provider, "seconds": seconds})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    with ProviderSimulator(args.host, args.port) as sim:
        print(f"RYNG_BASE_URL={sim.ryng_base_url}", flush=True)
        print(f"PLUM_BASE_URL={sim.plum_base_url}", flush=True)
        print(f"SIMULATOR_URL={sim.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
