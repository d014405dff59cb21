"""The provider interface, and the reading of an HTTP answer into the outcome classes of DESIGN.md."""

import contextlib
import json
import socket
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError
from urllib3.response import HTTPResponse

from callcancel import __version__
from callcancel.backoff import parse_retry_after
from callcancel.errors import ConfigError, Rejected, TransientFailure
from callcancel.models import Credentials
from callcancel.redaction import redact

# Enough for any error body; a misbehaving provider cannot make us hold or parse more.
MAX_BODY_BYTES = 64 * 1024
# What of a provider's words goes into reasons, logs and dead letters (the DLQ attribute keeps 256).
MAX_MESSAGE_CHARS = 512
_READ_CHUNK = 16 * 1024
# We ask for identity; a provider that compresses anyway gets these two read, within the cap.
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


# The deadline of the provider call this thread is making, for the connection that waits for its answer.
_call = threading.local()


def _answer_by_the_deadline[T](conn: HTTPConnection, getresponse: Callable[[], T]) -> T:
    """The status line and headers, read like the body: by the call's deadline, however slowly they drip.

    The read timeout bounds each read of the socket, not their sum; at the deadline, a timer shuts the
    socket down, which ends the blocked read at once.
    """
    deadline: float | None = getattr(_call, "deadline", None)
    if deadline is None:
        return getresponse()
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, [conn])
    timer.start()
    try:
        return getresponse()
    finally:
        timer.cancel()


def _shut(conn: HTTPConnection) -> None:
    if conn.sock is not None:
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)


# urllib3 narrows http.client's getresponse to its own HTTPResponse, with the same type: ignore.
class _Connection(HTTPConnection):
    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        return _answer_by_the_deadline(self, super().getresponse)


class _TLSConnection(HTTPSConnection):
    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        return _answer_by_the_deadline(self, super().getresponse)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


def provider_session(pool_size: int) -> requests.Session:
    """One session per container: keep-alive connections, pooled for the batch's concurrency."""
    session = requests.Session()
    # No proxies, .netrc or CA overrides from the environment: TLS is verified against certifi's roots.
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update(
        {
            "Accept": "application/json",
            # Compressed error bodies are how a small answer becomes gigabytes; we read at most 64 KiB anyway.
            "Accept-Encoding": "identity",
            "User-Agent": f"callcancel/{__version__}",
        }
    )
    return session


@dataclass(frozen=True)
class Answer:
    """A provider's HTTP answer, read once, at most MAX_BODY_BYTES of it, with credentials taken out."""

    status: int
    body: Any  # the parsed JSON body, if there was one
    message: str | None  # the provider's own words, from a JSON or an XML body, redacted
    retry_after: float | None
    # Why the body stopped before its end (the deadline passed, the connection dropped), or None.
    # Only the status line is known then; what the body would have said is not.
    cut_short: str | None = None

    @classmethod
    def read(cls, response: requests.Response, *, deadline: float, secrets: Collection[str] = ()) -> "Answer":
        """Never raises: a body that cannot be read is read as having no message, and the status decides."""
        raw, cut_short = _read_capped(response.raw, deadline)
        body, message = _parse_body(raw) if raw is not None else (None, None)
        return cls(response.status_code, body, _clean(message, secrets), _retry_after(response), cut_short)

    @property
    def success(self) -> bool:
        return 200 <= self.status < 300

    def describe(self, provider: str) -> str:
        return f"{provider} answered HTTP {self.status}" + (f": {self.message}" if self.message else "")


def _read_capped(raw: Any, deadline: float) -> tuple[bytes | None, str | None]:
    """Up to MAX_BODY_BYTES of the decoded body, and why it stopped before its end, if it did.

    The body is None when it cannot be read: an encoding we did not ask for and cannot decode, corrupt
    compression, or more than MAX_BODY_BYTES once decompressed (a compression bomb is refused, not cut).
    Each read of the socket waits at most until the deadline, so a body dripped a byte at a time cannot
    hold the record past it.
    """
    encoding = raw.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", *_ZLIB_WBITS):
        return None, None
    decoder = zlib.decompressobj(_ZLIB_WBITS[encoding]) if encoding in _ZLIB_WBITS else None
    body = bytearray()
    wire = 0  # bytes as received
    cut_short = None
    try:
        # Past the end of a compressed stream nothing is read: zlib would keep all of it in unused_data.
        while len(body) <= MAX_BODY_BYTES and wire <= 2 * MAX_BODY_BYTES and not (decoder and decoder.eof):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                cut_short = "the deadline passed"
                break
            _wait_at_most(raw, remaining)
            # read1: at most one read of the socket, so the deadline is checked between reads.
            data = raw.read1(_READ_CHUNK, decode_content=False)
            if not data:
                break
            wire += len(data)
            # Bounded output: a megabyte that inflates to gigabytes yields one byte past the cap, then stops.
            body += decoder.decompress(data, MAX_BODY_BYTES + 1 - len(body)) if decoder else data
    except zlib.error:
        return None, None
    except (Urllib3Error, OSError):
        cut_short = "the connection dropped"
    if decoder and (len(body) > MAX_BODY_BYTES or (wire > 2 * MAX_BODY_BYTES and not decoder.eof)):
        return None, None  # a bomb, or a stream that yields nothing for twice the cap: refused, not cut
    return bytes(body[:MAX_BODY_BYTES]), cut_short


def _wait_at_most(raw: Any, seconds: float) -> None:
    # The connection's socket waits up to the read timeout per read; a drip resets that at every byte.
    # urllib3 sets the timeout again when it reuses the connection.
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(min(seconds, sock.gettimeout() or seconds))


def _retry_after(response: requests.Response) -> float | None:
    try:
        return parse_retry_after(response.headers.get("Retry-After"))
    except (ValueError, OverflowError):  # e.g. "²", which str.isdigit() accepts and float() refuses
        return None


def _clean(message: str | None, secrets: Collection[str]) -> str | None:
    """One line, no control characters, no credentials, bounded: fit for a log line, a DLQ attribute, an email."""
    if not message:
        return None
    line = " ".join("".join(c if c.isprintable() else " " for c in message).split())
    # Redacted before it is cut: cutting first could leave a prefix of a secret that no longer matches.
    return redact(line, secrets)[:MAX_MESSAGE_CHARS] or None


def _parse_body(raw: bytes) -> tuple[Any, str | None]:
    try:
        return _parse(raw)
    except Exception:
        # RecursionError on deep nesting, MemoryError, a parser bug: the body says nothing we can use.
        return None, None


def _parse(raw: bytes) -> tuple[Any, str | None]:
    text = raw.strip()
    if text[:1] in (b"{", b"["):
        try:
            body = json.loads(text)
        except ValueError:
            return None, text.decode("utf-8", "replace")
        return body, _json_message(body)
    if text[:1] == b"<":
        return None, _xml_message(text)
    return None, text.decode("utf-8", "replace")


def _xml_message(text: bytes) -> str | None:
    if b"<!DOCTYPE" in text.upper() or b"<!ENTITY" in text.upper():
        return None  # no provider needs a DTD; entities are how XML bodies expand or reach out
    try:
        root = ET.fromstring(text)  # noqa: S314  (no DTD gets here; expat refuses expansion bombs as well)
    except ET.ParseError:
        return text.decode("utf-8", "replace")
    found = root.findtext(".//error") or root.findtext(".//message")
    return found.strip() if found else None


def _json_message(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("message", "error"):  # Ryng: {"error": true, "message": ...}; Plum: {"error": "..."}
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


# Gateways answer these for a backend that got the request and may have carried it out.
_GATEWAY_GAVE_UP = frozenset({502, 504})
# Errors of our own making, found before anything was sent: a base URL or a credential a person must fix.
_NOT_SENDABLE = (
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    UnicodeError,
)


def may_have_arrived(exc: requests.RequestException) -> bool:
    """Whether the request may have reached the provider, and been carried out, before `exc`."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError | requests.exceptions.ProxyError):
        return False  # no connection, or no TLS session: nothing was sent
    if isinstance(exc, requests.Timeout):
        return True  # sent, and the answer did not come in time
    # requests wraps what fails once connected (a reset, a close before the answer) as it is, and what fails
    # while connecting (refused, DNS) in a MaxRetryError, which is neither of these.
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, Urllib3Error | OSError) and not isinstance(cause, MaxRetryError)


class ProviderClient[R, C: Credentials](ABC):
    """Cancels at one provider. `cancel` returns when the provider confirmed, and raises a typed error otherwise."""

    name: ClassVar[str]
    credentials_model: ClassVar[type[Credentials]]

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        timeout: tuple[float, float],
        deadline: float | None = None,
    ) -> None:
        """`timeout` is (connect, read), per socket operation; `deadline` bounds the whole call, body included.

        The default deadline, connect + read timeout, keeps a call and its retry after an auth refresh
        within Settings.attempt_budget_seconds.
        """
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._deadline = sum(timeout) if deadline is None else deadline

    @abstractmethod
    def cancel(self, request: R, credentials: C) -> None: ...

    def _send(self, method: str, url: str, *, secrets: Collection[str], **kwargs: Any) -> Answer:
        """The provider's answer; `secrets` are taken out of whatever it says."""
        deadline = time.monotonic() + self._deadline
        _call.deadline = deadline
        try:
            response = self._session.request(
                method, url, timeout=self._timeout, allow_redirects=False, verify=True, stream=True, **kwargs
            )
        except _NOT_SENDABLE as exc:
            raise ConfigError(f"{self.name}: the request cannot be built ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            sent = may_have_arrived(exc)
            if sent and time.monotonic() >= deadline:
                what = f"did not answer within the call's deadline of {self._deadline:g}s"
            elif isinstance(exc, requests.Timeout):
                what = f"did not answer within {self._timeout[1]:g}s" if sent else "did not accept a connection in time"
            else:
                what = ("dropped the connection" if sent else "unreachable") + f": {type(exc).__name__}"
            raise TransientFailure(f"{self.name} {what}", ambiguous=sent) from None
        finally:
            _call.deadline = None
        with response:
            return Answer.read(response, deadline=deadline, secrets=secrets)

    def _needs_whole_body(self, answer: Answer) -> None:
        """For rows that the body decides: a body cut short may have held a confirmation, so retry, flagged."""
        if answer.cut_short:
            raise TransientFailure(
                f"{answer.describe(self.name)} (the body was cut short: {answer.cut_short})",
                http_status=answer.status,
                provider_message=answer.message,
                ambiguous=True,
            )

    def _unexpected(self, answer: Answer) -> NoReturn:
        """The rows of the outcome table that every provider shares."""
        reason = answer.describe(self.name)
        if answer.status in (408, 429) or answer.status >= 500:
            raise TransientFailure(
                reason,
                http_status=answer.status,
                provider_message=answer.message,
                retry_after=answer.retry_after,
                ambiguous=answer.status in _GATEWAY_GAVE_UP or answer.cut_short is not None,
            )
        # 3xx (redirects are never followed), other 4xx, and anything that is not a confirmation.
        raise Rejected(reason, http_status=answer.status, provider_message=answer.message)
