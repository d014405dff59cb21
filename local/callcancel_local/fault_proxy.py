"""A fault-injecting HTTP proxy on loopback, between AWS SDK clients and the embedded AWS (moto).

Point a process's AWS_ENDPOINT_URL at one of `FaultProxy.urls` and a set fraction of its calls, per
service, fail the way AWS fails: throttling errors in the service's own protocol, HTTP 500, or a dropped
connection, either before the request reaches AWS or after AWS carried it out (the answer is lost).
The rest are forwarded to moto unchanged (the Host header and signature included).

Every boto3 client here speaks JSON: SQS (JSON 1.0, with the `x-amzn-query-error` header that carries the
query-protocol error code), DynamoDB (JSON 1.0) and Secrets Manager (JSON 1.1).

Each URL is a slot: the proxy knows which slot a call came from, so a crash runner can give each worker
process its own slot and kill exactly the process that made a call (`on_request`).
"""

import contextlib
import http.client
import json
import random
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULT_KINDS = ("throttle", "error", "drop", "lost_answer")

_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/(?P<service>[^/]+)/aws4_request")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class AwsError:
    status: int
    content_type: str
    type: str  # the JSON __type
    message: str
    query_error: str | None = None  # SQS: "Code;Sender"

    def render(self) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": self.content_type, "x-amzn-RequestId": "fault-proxy"}
        if self.query_error:
            headers["x-amzn-query-error"] = self.query_error
        return self.status, headers, json.dumps({"__type": self.type, "message": self.message}).encode()


_JSON10, _JSON11 = "application/x-amz-json-1.0", "application/x-amz-json-1.1"
# What each service answers when it throttles or fails inside. The codes are the ones botocore models and
# retries; SQS's are both the JSON type and, for code that still matches query-protocol codes, the header.
THROTTLES: Mapping[str, tuple[AwsError, ...]] = {
    "sqs": (
        AwsError(
            403, _JSON10, "com.amazonaws.sqs#RequestThrottled", "Request is throttled.", "RequestThrottled;Sender"
        ),
        AwsError(400, _JSON10, "com.amazon.coral.availability#ThrottlingException", "Rate exceeded", None),
    ),
    "dynamodb": (
        AwsError(
            400,
            _JSON10,
            "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded.",
        ),
    ),
    "secretsmanager": (AwsError(400, _JSON11, "ThrottlingException", "Rate exceeded"),),
}
INTERNAL_ERRORS: Mapping[str, AwsError] = {
    "sqs": AwsError(500, _JSON10, "com.amazonaws.sqs#InternalError", "Internal error", "InternalError;Receiver"),
    "dynamodb": AwsError(500, _JSON10, "com.amazonaws.dynamodb.v20120810#InternalServerError", "Internal error"),
    "secretsmanager": AwsError(500, _JSON11, "InternalServiceError", "Internal error"),
}


@dataclass(frozen=True)
class ProxiedCall:
    """One call through the proxy. `fault` None: forwarded and answered as AWS answered (`status`)."""

    at: float  # time.monotonic() when it arrived
    slot: int
    service: str
    operation: str
    fault: str | None
    status: int  # 0: no answer (dropped, or the caller's process was killed)
    body: bytes = field(repr=False, default=b"")  # the request body (kept only when `keep_bodies` matches)


# A hook called before a call is forwarded. Returning True means "the caller is gone": the call is dropped.
RequestHook = Callable[[int, str, str, bytes], bool]


class FaultProxy:
    """`faults`: service -> fraction of calls that fail; the kind is drawn evenly from FAULT_KINDS."""

    def __init__(
        self,
        upstream: str,
        faults: Mapping[str, float],
        *,
        slots: int = 1,
        seed: int | None = None,
        on_request: RequestHook | None = None,
        keep_bodies: Callable[[str, str], bool] = lambda service, operation: False,
        host: str = "127.0.0.1",
    ) -> None:
        unknown = set(faults) - set(THROTTLES)
        if unknown:
            raise ValueError(f"no faults modelled for {sorted(unknown)}; services: {sorted(THROTTLES)}")
        split = urlsplit(upstream)
        self.upstream = (split.hostname or "127.0.0.1", split.port or 80)
        self.faults = dict(faults)
        self.on_request = on_request
        self.keep_bodies = keep_bodies
        self._rng = random.Random(seed)  # noqa: S311  (fault injection, not cryptography)
        self._lock = threading.Lock()
        self.calls: list[ProxiedCall] = []
        self._servers = [_ProxyServer((host, 0), self, slot) for slot in range(slots)]
        self.urls = [f"http://{host}:{server.server_port}" for server in self._servers]
        self._threads: list[threading.Thread] = []

    def start(self) -> "FaultProxy":
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def counts(self) -> Counter[tuple[str, str]]:
        """(service, fault kind) -> calls; kind "ok" for the forwarded ones."""
        with self._lock:
            return Counter((call.service, call.fault or "ok") for call in self.calls)

    def _draw(self, service: str) -> str | None:
        with self._lock:
            if self._rng.random() >= self.faults.get(service, 0.0):
                return None
            return self._rng.choice(FAULT_KINDS)

    def _choose(self, options: tuple[AwsError, ...]) -> AwsError:
        with self._lock:
            return self._rng.choice(options)

    def _record(self, call: ProxiedCall) -> None:
        with self._lock:
            self.calls.append(call)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], proxy: FaultProxy, slot: int) -> None:
        super().__init__(address, _ProxyHandler)
        self.proxy = proxy
        self.slot = slot

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (killed workers, SDK timeouts) are expected here.
        if not isinstance(sys.exception(), OSError):
            super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer
    disable_nagle_algorithm = True
    _upstream: http.client.HTTPConnection | None = None

    def handle_any(self) -> None:
        proxy, slot = self.server.proxy, self.server.slot
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        scope = _SCOPE.search(self.headers.get("Authorization", ""))
        service = scope["service"] if scope else "other"
        operation = (self.headers.get("X-Amz-Target") or self.command).rsplit(".", 1)[-1]
        kept = body if proxy.keep_bodies(service, operation) else b""
        arrived = time.monotonic()

        if proxy.on_request and proxy.on_request(slot, service, operation, body):
            proxy._record(ProxiedCall(arrived, slot, service, operation, "caller_killed", 0, kept))
            self._drop()
            return
        fault = proxy._draw(service)
        if fault in ("throttle", "error") and service in THROTTLES:
            error = proxy._choose(THROTTLES[service]) if fault == "throttle" else INTERNAL_ERRORS[service]
            status, headers, payload = error.render()
            proxy._record(ProxiedCall(arrived, slot, service, operation, fault, status, kept))
            self._reply(status, headers, payload)
            return
        if fault == "drop":
            proxy._record(ProxiedCall(arrived, slot, service, operation, fault, 0, kept))
            self._drop()
            return
        status, headers, payload = self._forward(body)
        proxy._record(ProxiedCall(arrived, slot, service, operation, fault, status, kept))
        if fault == "lost_answer":  # AWS did it; the caller never hears so
            self._drop()
            return
        self._reply(status, headers, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        for attempt in (1, 2):  # a keep-alive connection moto closed meanwhile is reopened once
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                response = self._upstream.getresponse()
                payload = response.read()
            except (http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
                continue
            kept = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
            return response.status, kept, payload
        raise AssertionError("unreachable")

    def _reply(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass
