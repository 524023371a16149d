"""HTTP resilience shared by the endpoint teachers: fault classification, Retry-After, priority slots, URL health."""

from __future__ import annotations

import asyncio
import email.utils
import heapq
import json
import time
from dataclasses import dataclass
from typing import Any

from .base import GenerationConfig

_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class _Fault:
    reason: str
    retryable: bool
    url_down: bool = False  # the server cannot be reached: try another URL first
    retry_after: float | None = None


class _MalformedReply(ValueError):
    pass


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _http_module():
    """The HTTP library under huggingface_hub: ``httpx2`` from huggingface_hub 2.x, ``httpx`` before."""
    try:
        import httpx2 as http
    except ImportError:  # huggingface_hub 1.x
        import httpx as http
    return http


def classify(err: BaseException, config: GenerationConfig) -> _Fault:
    """Whether an error is worth a retry, and why it happened (for the status).

    What ``AsyncInferenceClient.chat_completion`` raises in huggingface_hub 2.x (checked against the fault
    server): ``HfHubHTTPError`` with ``.response`` for an HTTP error status; ``httpx2.ConnectError`` when
    the server refuses, ``httpx2.RemoteProtocolError``/``ReadError`` when it drops the connection;
    ``json.JSONDecodeError`` for a body that is not JSON; ``InferenceTimeoutError`` (a ``TimeoutError``)
    for a client timeout, which we leave unset: our ``asyncio.wait_for`` raises ``TimeoutError``.
    """
    from huggingface_hub.errors import HfHubHTTPError

    http = _http_module()

    if isinstance(err, HfHubHTTPError) and getattr(err, "response", None) is not None:
        code = err.response.status_code
        if code == 429:
            wait = parse_retry_after(err.response.headers.get("retry-after"))
            if wait is not None and wait > config.max_retry_after:
                return _Fault(f"rate limited (HTTP 429), Retry-After {wait:.0f}s exceeds max_retry_after", False)
            return _Fault("rate limited (HTTP 429)", True, retry_after=wait)
        first_line = str(err).splitlines()[0] if str(err) else ""
        retryable = code in _RETRYABLE_STATUS or code >= 500
        return _Fault(f"HTTP {code}" + (f" ({first_line[:160]})" if not retryable and first_line else ""), retryable,
                      retry_after=parse_retry_after(err.response.headers.get("retry-after")) if retryable else None)
    if isinstance(err, (TimeoutError, asyncio.TimeoutError, http.TimeoutException)):
        return _Fault(f"timeout after {config.timeout:g}s", True)
    if isinstance(err, http.ConnectError):
        return _Fault("connection failed", True, url_down=True)
    if isinstance(err, http.TransportError):
        return _Fault(f"connection error ({type(err).__name__})", True)
    if isinstance(err, (json.JSONDecodeError, _MalformedReply)):
        return _Fault("malformed reply", True)
    return _Fault(f"{type(err).__name__}: {str(err)[:160]}", False)


def _reply_text(output: Any) -> str:
    try:
        content = output.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError) as err:
        raise _MalformedReply(f"no choices[0].message.content ({err})") from None
    if content is not None and not isinstance(content, str):
        raise _MalformedReply(f"content is {type(content).__name__}")
    return content or ""


class _PrioritySlots:
    """A semaphore whose waiters are served by (priority, arrival): retries go before first attempts,
    so a failed request does not wait behind the whole queue and the run ends without a retry tail."""

    def __init__(self, slots: int):
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._seq = 0

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._waiters, (priority, self._seq, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # hand the slot over directly
                return
        self._free += 1


_HUB_HOSTS = ("huggingface.co", "hf.co", "huggingface.cloud", "hf.space")


def _is_hub_host(url: str) -> bool:
    from urllib.parse import urlparse

    host = (urlparse(url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in _HUB_HOSTS)


async def _read_error_body(response) -> None:
    if response.status_code >= 400:
        await response.aread()  # so the raised error can quote the server's message


class _UrlHealth:
    """What srt_hf knows about one base URL: consecutive failures, and until when to leave it alone."""

    __slots__ = ("failures", "down_until")

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0

