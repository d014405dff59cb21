"""The provider interface, and the reading of an HTTP answer into the outcome classes of DESIGN.md."""

import json
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import requests
from requests.adapters import HTTPAdapter

from callcancel import __version__
from callcancel.backoff import parse_retry_after
from callcancel.errors import Rejected, TransientFailure
from callcancel.models import Credentials

# Enough for any error body; a misbehaving provider cannot make us parse megabytes.
_MAX_BODY_BYTES = 64 * 1024


def provider_session(pool_size: int) -> requests.Session:
    """One session per container: keep-alive connections, pooled for the batch's concurrency."""
    session = requests.Session()
    # No proxies, .netrc or CA overrides from the environment: TLS is verified against certifi's roots.
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({"Accept": "application/json", "User-Agent": f"callcancel/{__version__}"})
    return session


@dataclass(frozen=True)
class Answer:
    """A provider's HTTP answer, read once."""

    status: int
    body: Any  # the parsed JSON body, if there was one
    message: str | None  # the provider's own words, from a JSON or an XML body
    retry_after: float | None

    @classmethod
    def read(cls, response: requests.Response) -> "Answer":
        raw = response.content[:_MAX_BODY_BYTES]
        body, message = _parse_body(raw)
        return cls(response.status_code, body, message, parse_retry_after(response.headers.get("Retry-After")))

    @property
    def success(self) -> bool:
        return 200 <= self.status < 300

    def describe(self, provider: str) -> str:
        return f"{provider} answered HTTP {self.status}" + (f": {self.message}" if self.message else "")


def _parse_body(raw: bytes) -> tuple[Any, str | None]:
    text = raw.strip()
    if not text:
        return None, None
    if text[:1] in (b"{", b"["):
        try:
            body = json.loads(text)
        except ValueError:
            return None, text.decode("utf-8", "replace")
        return body, _json_message(body)
    if text[:1] == b"<":
        try:
            root = ET.fromstring(text)  # noqa: S314  (expat >= 2.4.1 refuses entity expansion bombs)
        except ET.ParseError:
            return None, text.decode("utf-8", "replace")
        found = root.findtext(".//error") or root.findtext(".//message")
        return None, found.strip() if found else None
    return None, text.decode("utf-8", "replace")


def _json_message(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("message", "error"):  # Ryng: {"error": true, "message": ...}; Plum: {"error": "..."}
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


class ProviderClient[R, C: Credentials](ABC):
    """Cancels at one provider. `cancel` returns when the provider confirmed, and raises a typed error otherwise."""

    name: ClassVar[str]
    credentials_model: ClassVar[type[Credentials]]

    def __init__(self, session: requests.Session, base_url: str, timeout: tuple[float, float]) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout

    @abstractmethod
    def cancel(self, request: R, credentials: C) -> None: ...

    def _send(self, method: str, url: str, **kwargs: Any) -> Answer:
        try:
            response = self._session.request(
                method, url, timeout=self._timeout, allow_redirects=False, verify=True, **kwargs
            )
        except requests.Timeout:
            raise TransientFailure(f"{self.name} did not answer within {self._timeout[1]:g}s") from None
        except requests.RequestException as exc:
            raise TransientFailure(f"{self.name} unreachable: {type(exc).__name__}") from None
        return Answer.read(response)

    def _unexpected(self, answer: Answer) -> NoReturn:
        """The rows of the outcome table that every provider shares."""
        reason = answer.describe(self.name)
        if answer.status in (408, 429) or answer.status >= 500:
            raise TransientFailure(
                reason, http_status=answer.status, provider_message=answer.message, retry_after=answer.retry_after
            )
        # 3xx (redirects are never followed), other 4xx, and anything that is not a confirmation.
        raise Rejected(reason, http_status=answer.status, provider_message=answer.message)
