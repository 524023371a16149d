"""HTTP resilience shared by the endpoint teachers: fault classification, Retry-After, priority slots, URL health."""

from __future__ import annotations

import asyncio
import email.utils
import heapq
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from .base import GenerationConfig

_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
#: HTTP statuses that no retry can fix: the run stops and says which setting to change.
_FATAL_STATUS = {
    401: "the server refused the credentials: set the key with --teacher-api-key-env NAME (or --teacher-header)",
    403: "the server refused the credentials: set the key with --teacher-api-key-env NAME (or --teacher-header)",
    404: "no such model or URL: check --teacher-model and the URL (a vLLM or OpenAI URL usually ends in /v1)",
}


#: Bytes of reply body allowed per requested new token, and for the envelope around the text (ids, usage, finish
#: reason, the JSON of an error). A token is 3-5 bytes of text on average and at most a few dozen; JSON escaping
#: (``\uXXXX``) can make one character six bytes. 64 bytes per token is therefore several times what any reply
#: within ``max_new_tokens`` can need, and a body beyond it is not a reply to these settings (a server that
#: ignores the limit, or a proxy's error page): it is counted and given up, never stored.
REPLY_BYTES_PER_TOKEN = 64
REPLY_ENVELOPE_BYTES = 64 * 1024


def reply_cap(max_new_tokens: int) -> int:
    """The largest reply body (bytes) srt_hf reads for ``max_new_tokens``: ``64 × max_new_tokens + 64 KiB``."""
    return REPLY_BYTES_PER_TOKEN * max(int(max_new_tokens), 1) + REPLY_ENVELOPE_BYTES


class ReplyTooLarge(Exception):
    """A reply body beyond :func:`reply_cap`; read only as far as needed to say so."""

    def __init__(self, size: int, cap: int, max_new_tokens: int, *, at_least: bool = False):
        self.size, self.cap = size, cap
        self.reason = (f"reply of {'more than ' if at_least else ''}{size} bytes exceeds {cap} bytes "
                       f"({REPLY_BYTES_PER_TOKEN} x max_new_tokens {max_new_tokens} + {REPLY_ENVELOPE_BYTES // 1024} KiB); "
                       "the server does not honour --max-new-tokens")
        super().__init__(self.reason)


@dataclass
class _Fault:
    reason: str
    retryable: bool
    url_down: bool = False  # the server cannot be reached: try another URL first
    retry_after: float | None = None
    fatal: str | None = None  # no retry can fix it: what to change (the run stops)
    body: str = ""  # the server's error message, for the top-level error
    oversized: bool = False  # a reply beyond reply_cap: the row is invalid (not retried, not stored)
    status: int | None = None  # the HTTP status, when the server answered one
    timed_out: bool = False  # our deadline passed: the server may be down, or queueing what it cannot run at once

    def quoted(self) -> str:
        """The reason with the server's own words (shortened), for a message that stops the run."""
        words = shorten(self.body)
        return f"{self.reason}: \"{words}\"" if words and words[:40] not in self.reason else self.reason


class HTTPStatusError(Exception):
    """A teacher server answered an HTTP error status."""

    def __init__(self, status: int, headers: Any, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status, self.headers, self.body = status, headers, body


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


def retry_after(headers: Any) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (OpenAI, Azure) or else ``Retry-After``."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def error_message(body: str) -> str:
    """The server's own words from an error body: OpenAI's ``{"error": {"message": …}}``, TGI's ``{"error": …}``."""
    try:
        data = json.loads(body)
    except ValueError:
        return " ".join(body.split())[:300]
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    return " ".join(str(error).split())[:300]


def shorten(text: str, limit: int = 200) -> str:
    """One line of at most ``limit`` characters (an ellipsis where it was cut)."""
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


#: What a validation error says in the servers' own words (pydantic, serde, llama.cpp, OpenAI).
_VALIDATION_WORDS = re.compile(
    r"validation error|input should be|unknown variant|must be one of|invalid value|unrecognized request argument|"
    r"extra inputs are not permitted|failed to deserialize|not supported|unsupported",
    re.IGNORECASE,
)
#: HTTP statuses that never mean "this request is refused" (credentials, URL, rate limits, timeouts).
_NOT_REFUSALS = {401, 403, 404, 408, 425, 429}


def refuses_fields(fault: _Fault, fields: dict[str, Any]) -> bool:
    """Whether an error answers "this request's fields are refused" rather than "the server is down".

    A 4xx (other than credentials, URL, rate limits and timeouts) refuses the request. A 5xx refuses it only
    when its body names one of ``fields``' keys or string values (``response_format``, ``json_schema``) or reads
    as a validation error: llama-cpp-python and 2024 builds of llama.cpp answer an unknown ``response_format`` type with 500.
    """
    if fault.status is None or fault.status in _NOT_REFUSALS or fault.fatal:
        return False
    if 400 <= fault.status < 500:
        return True
    if fault.status < 500:
        return False
    names = set(fields) | {v for value in fields.values() if isinstance(value, dict)
                                   for v in value.values() if isinstance(v, str) and len(v) > 3}
    text = fault.body.lower()
    return any(name.lower() in text for name in names) or bool(_VALIDATION_WORDS.search(fault.body))


def _http_module():
    """The HTTP library under huggingface_hub: ``httpx2`` from huggingface_hub 2.x, ``httpx`` before."""
    try:
        import httpx2 as http
    except ImportError:  # huggingface_hub 1.x
        import httpx as http
    return http


def classify(err: BaseException, config: GenerationConfig) -> _Fault:
    """Whether an error is worth a retry, is fatal for the run, and why it happened (for the status).

    What a request raises (checked against the fault server): :class:`HTTPStatusError` for an HTTP error
    status; ``ConnectError`` when the server refuses, ``RemoteProtocolError``/``ReadError`` when it drops
    the connection; ``json.JSONDecodeError`` for a body that is not JSON; ``TimeoutError`` from our own
    ``asyncio.wait_for`` deadline.
    """
    http = _http_module()

    if isinstance(err, ReplyTooLarge):
        return _Fault(err.reason, False, oversized=True)
    if isinstance(err, HTTPStatusError):
        code, message = err.status, error_message(err.body)
        if code in _FATAL_STATUS:
            return _Fault(f"HTTP {code} ({message})", False, fatal=_FATAL_STATUS[code], body=message, status=code)
        if code == 429:
            wait = retry_after(err.headers)
            if wait is not None and wait > config.max_retry_after:
                return _Fault(f"rate limited (HTTP 429), Retry-After {wait:.0f}s exceeds max_retry_after", False, body=message, status=code)
            return _Fault("rate limited (HTTP 429)", True, retry_after=wait, body=message, status=code)
        retryable = code in _RETRYABLE_STATUS or code >= 500
        reason = f"HTTP {code}" + (f" ({message[:160]})" if not retryable and message else "")
        return _Fault(reason, retryable, retry_after=retry_after(err.headers) if retryable else None, body=message, status=code)
    if isinstance(err, (TimeoutError, asyncio.TimeoutError, http.TimeoutException)):
        return _Fault(f"timeout after {config.timeout:g}s", True, timed_out=True)
    if isinstance(err, http.ConnectError):
        return _Fault("connection failed", True, url_down=True)
    if isinstance(err, http.TransportError):
        return _Fault(f"connection error ({type(err).__name__})", True)
    if isinstance(err, (json.JSONDecodeError, _MalformedReply)):
        return _Fault("malformed reply", True)
    return _Fault(f"{type(err).__name__}: {str(err)[:160]}", False)


@dataclass
class Reply:
    """What srt_hf reads from a chat-completion body."""

    text: str
    finish_reason: str | None
    usage: dict[str, int]


def parse_reply(data: Any) -> Reply:
    """``choices[0].message.content``, its finish reason and the token usage; a body without them is malformed."""
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content")
    except (AttributeError, IndexError, KeyError, TypeError) as err:
        raise _MalformedReply(f"no choices[0].message.content ({err!r})") from None
    if content is not None and not isinstance(content, str):
        raise _MalformedReply(f"content is {type(content).__name__}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = {k: int(v) for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int)}
    return Reply(content or "", choice.get("finish_reason"), tokens)


def chat_url(base_url: str) -> str:
    """``…/v1/chat/completions`` for a base URL given with or without ``/v1`` (as huggingface_hub builds it)."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


def api_root(base_url: str) -> str:
    """The base URL without a trailing ``/v1`` or ``/chat/completions``."""
    base = base_url.rstrip("/").removesuffix("/chat/completions")
    return base.removesuffix("/v1")


class _PrioritySlots:
    """A semaphore whose waiters are served by (priority, arrival): retries go before first attempts,
    so a failed request does not wait behind the whole queue and the run ends without a retry tail."""

    def __init__(self, slots: int):
        self.size = slots
        self._free = slots  # below 0 after a shrink: that many slots in use are retired when released
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._seq = 0

    def shrink(self) -> int:
        """Halve the slots (at least one); requests in flight finish, and their slots are not handed on."""
        smaller = max(1, self.size // 2)
        self._free -= self.size - smaller
        self.size = smaller
        return smaller

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
        if self._free < 0:  # a slot retired by shrink
            self._free += 1
            return
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # hand the slot over directly
                return
        self._free += 1


class _UrlHealth:
    """What srt_hf knows about one base URL: its failures, until when to leave it alone, and its breaker.

    ``failures`` drives the backoff of a URL that is down; ``in_row`` counts failed attempts since the last
    success and ``failing_since`` when they began: together they open the circuit breaker.
    """

    __slots__ = ("failures", "down_until", "in_row", "failing_since", "last_fault")

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.in_row = 0
        self.failing_since: float | None = None
        self.last_fault: _Fault | None = None

    def broken(self, config: GenerationConfig, now: float) -> bool:
        """Whether the breaker is open: too many failures in a row, or failing for too long."""
        return self.limit_reached(config, now) is not None

    def limit_reached(self, config: GenerationConfig, now: float) -> str | None:
        """Which breaker limit is reached, as the setting that raises it ("--breaker-failures 10"), or None."""
        if self.in_row >= config.breaker_failures:
            return f"--breaker-failures {config.breaker_failures}"
        if self.in_row >= 3 and self.failing_since is not None and now - self.failing_since > config.breaker_seconds:
            return f"--breaker-seconds {config.breaker_seconds:g}"
        return None

