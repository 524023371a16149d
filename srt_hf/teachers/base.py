"""The teacher interface: settings, replies, counters, the cache-aware session, and sync/async entry points.

    completions = teacher.generate([[{"role": "user", "content": "..."}], ...])      # sync
    completions = await teacher.agenerate(conversations)                              # async
    async with teacher.session() as s:                                                # per request
        completion = await s.complete(messages)

A backend (endpoint.py, local.py) subclasses :class:`Teacher` and :class:`TeacherSession` and implements
``scope``, ``session`` and ``_fetch``. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

from ..errors import ConfigError, SrtHfError
from ..status import OK, REQUEST_FAILED, TRUNCATED, is_ok, kind_of, make
from .cache import ResponseCache, cache_key

Messages = list[dict[str, Any]]
T = TypeVar("T")

#: The generation settings that change a completion (and hence its cache key).
GENERATION_KEYS = ("temperature", "max_new_tokens", "top_p", "seed")


@dataclass
class GenerationConfig:
    """How a teacher generates, and how srt_hf talks to a teacher server.

    Generation (part of the cache key): ``temperature``, ``max_new_tokens``, ``top_p``, ``seed``.

    Transport (endpoint teachers): ``timeout``, ``max_retries``, ``max_concurrency``, ``backoff_base``,
    ``backoff_max``, ``max_retry_after``, and the circuit breaker ``breaker_failures`` / ``breaker_seconds``.

    Local teachers: ``batch_size``.
    """

    # generation
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the teacher; 0 is greedy."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Most tokens the teacher may write per reply; a reply that reaches it is marked truncated."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (used when temperature > 0)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed sent with each request (and used by the local teacher)."})
    # transport
    timeout: float = field(default=120.0, metadata={"help": "Seconds one request to a teacher server may take before it is retried."})
    max_retries: int = field(default=5, metadata={"help": "Retries of a failed request (connection error, timeout, 429, 5xx) before it counts as failed."})
    max_concurrency: int = field(default=16, metadata={"help": "Most requests in flight at once, over all base URLs."})
    backoff_base: float = field(default=0.5, metadata={"help": "Backoff before retry k is uniform in [0, min(backoff_max, backoff_base * 2**k)] seconds."})
    backoff_max: float = field(default=30.0, metadata={"help": "Longest backoff between two attempts of a request, in seconds."})
    max_retry_after: float = field(default=600.0, metadata={"help": "Longest Retry-After (seconds) to wait for; a server asking for more fails the request."})
    breaker_failures: int = field(default=10, metadata={"help": "Failed requests in a row to every teacher URL after which the run stops (finished work is kept; rerun to resume)."})
    breaker_seconds: float = field(default=120.0, metadata={"help": "Seconds of nothing but failures (3 or more) from every teacher URL after which the run stops."})
    # local teacher
    batch_size: int = field(default=8, metadata={"help": "Local teacher: prompts per generate call."})

    def __post_init__(self) -> None:
        checks = {
            "temperature": self.temperature >= 0, "max_new_tokens": self.max_new_tokens > 0,
            "top_p": 0 < self.top_p <= 1, "timeout": self.timeout > 0, "max_retries": self.max_retries >= 0,
            "max_concurrency": self.max_concurrency > 0, "backoff_base": self.backoff_base >= 0,
            "backoff_max": self.backoff_max >= 0, "max_retry_after": self.max_retry_after >= 0,
            "breaker_failures": self.breaker_failures > 0, "breaker_seconds": self.breaker_seconds > 0,
            "batch_size": self.batch_size > 0,
        }
        for name, ok in checks.items():
            if not ok:
                help_text = GenerationConfig.__dataclass_fields__[name].metadata["help"]
                raise ConfigError(f"Invalid teacher setting `{name}` = {getattr(self, name)!r}: {help_text}")

    def generation_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in GENERATION_KEYS}


@dataclass
class Completion:
    """One teacher reply: ``ok``, ``truncated: …`` (``text`` holds the cut-off reply) or ``request_failed: …``
    (``text`` is None). ``usage`` holds the server's token counts when it sent them."""

    text: str | None
    status: str = OK
    attempts: int = 0  # requests sent for it (0 when it came from the cache)
    cached: bool = False
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return is_ok(self.status)

    @classmethod
    def reply(cls, text: str, *, cut_at: int | None = None, attempts: int = 0, cached: bool = False,
              usage: dict[str, int] | None = None) -> Completion:
        """A reply that arrived: ``ok``, or ``truncated: …`` when it stopped at ``cut_at`` new tokens."""
        status = OK if cut_at is None else truncated_status(cut_at)
        return cls(text, status, attempts=attempts, cached=cached, usage=dict(usage or {}))

    @classmethod
    def failed(cls, reason: str, attempts: int) -> Completion:
        """No reply after ``attempts`` requests: ``request_failed: reason``."""
        return cls(None, make(REQUEST_FAILED, reason), attempts=attempts)


class StructuredOutputUnsupported(SrtHfError):
    """The teacher cannot answer in a JSON schema (the server rejected every ``response_format`` dialect).

    ``replies``: what the server answered to probes whose ``response_format`` it ignored (to the JSON prompt); a
    caller may still read them (a reply in the marker layout is used, not asked again).
    """

    def __init__(self, message: str, *, replies: Sequence[str] = ()):
        super().__init__(message)
        self.replies = list(replies)


def truncated_status(max_new_tokens: int) -> str:
    return make(TRUNCATED, f"the reply stopped at max_new_tokens ({max_new_tokens}); raise --max-new-tokens")


class TeacherStats:
    """Counters for run summaries: requests sent (attempts), retried, failed, served from cache.

    Per process: workers of ``Dataset.map(num_proc=…)`` count on their own copies.
    """

    #: requests_sent: HTTP requests (or prompts generated locally), retries included; retried: retries after
    #: a transport failure; failed: completions that ended as request_failed; cache_hits: completions served
    #: from the response cache; completed: successful replies received from the teacher itself; truncated:
    #: replies that stopped at max_new_tokens; prompt_tokens / completion_tokens: the servers' usage counts;
    #: oversized: replies far beyond max_new_tokens (``invalid``, not stored; see ``http.reply_cap``).
    FIELDS = ("requests_sent", "retried", "failed", "cache_hits", "completed", "truncated", "prompt_tokens", "completion_tokens",
              "oversized")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                self._counts[k] += v

    def __getattr__(self, name: str) -> int:
        if name in TeacherStats.FIELDS:
            return self._counts[name]
        raise AttributeError(name)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self.FIELDS, 0)


async def gather_or_cancel(aws: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` with one clean stop: the first error cancels every other task and awaits it before it is
    raised (so no request outlives the session that sent it, and none fails later during the loop's shutdown).

    Results come in input order. A cancellation of the caller (Ctrl-C) cancels and awaits them all the same.
    """
    tasks = [asyncio.ensure_future(a) for a in aws]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        await _cancel_all(tasks)
        raise
    failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None), None)
    if failed is not None:
        await _cancel_all(tasks)
        raise failed.exception()
    return [t.result() for t in tasks]


async def _cancel_all(tasks: list[asyncio.Future]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # waits for each; their own errors are retrieved, not raised


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also when this thread already runs a loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# -- the common interface ------------------------------------------------------------------------
class Teacher:
    """Base of the teachers: settings, identity, cache and the sync/async entry points."""

    kind = "teacher"
    #: a ``maxLength`` for the review of a structured reflection, where this teacher needs one (local decoding)
    review_max_length: int | None = None

    def __init__(self, config: GenerationConfig | None = None, cache_path: str | os.PathLike | None = None):
        self.config = config or GenerationConfig()
        self.cache_path = str(cache_path) if cache_path is not None else None
        self.cache = ResponseCache(self.cache_path) if self.cache_path else None
        self.stats = TeacherStats()
        #: stored with every reply this process caches (the pipeline sets the run and the stage, for accounting)
        self.cache_tags: dict[str, Any] = {}

    # identity
    def scope(self) -> dict[str, Any]:
        """What identifies the model behind this teacher (part of the cache key and fingerprint)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Model identity plus generation settings: what decides the replies (not URLs, tokens or devices)."""
        return {**self.scope(), "generation": self.config.generation_settings()}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def settings(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        settings = self.config.generation_settings()
        for key, value in (overrides or {}).items():
            if key not in settings:
                raise ConfigError(f"Unknown generation override {key!r}; use one of {list(GENERATION_KEYS)}.")
            settings[key] = value
        return settings

    def transport(self) -> dict[str, Any]:
        """How the teacher is reached, without secrets (for run.json); the structured-output mechanism if known."""
        return {}

    def bind_rank(self, rank: int | None) -> None:
        """Called by transforms under ``Dataset.map(with_rank=True)``; local teachers pick ``cuda:rank``."""

    # entry points
    def session(self) -> TeacherSession:
        """An async context manager bound to the running event loop; ``await s.complete(messages)``."""
        raise NotImplementedError

    async def agenerate(
        self, conversations: Sequence[Messages], overrides: dict[str, Any] | None = None, *, schema: dict | None = None
    ) -> list[Completion]:
        """All conversations in flight together (within the concurrency bound); results in input order.

        ``schema``: a JSON Schema the replies must follow (structured output); raises
        :class:`StructuredOutputUnsupported` when the teacher cannot enforce one.
        """
        async with self.session() as session:
            return await gather_or_cancel(session.complete(m, overrides, schema=schema) for m in conversations)

    def generate(
        self, conversations: Sequence[Messages], overrides: dict[str, Any] | None = None, *, schema: dict | None = None
    ) -> list[Completion]:
        """Sync :meth:`agenerate` (runs its own event loop)."""
        return run_sync(lambda: self.agenerate(conversations, overrides, schema=schema))


class TeacherSession:
    """Per-event-loop state of a teacher. Handles the cache and joins identical requests in flight."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self._scope = teacher.scope()
        self._pending: dict[str, asyncio.Future] = {}

    async def __aenter__(self) -> TeacherSession:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

    async def complete(
        self, messages: Messages, overrides: dict[str, Any] | None = None, *, schema: dict | None = None
    ) -> Completion:
        """One reply: from the cache, from an identical request in flight, or from the teacher (then cached)."""
        teacher = self.teacher
        settings = teacher.settings(overrides)
        key = cache_key(self._scope, messages, settings if schema is None else {**settings, "schema": schema})
        if teacher.cache is not None:
            entry = teacher.cache.get_entry(key)
            if entry is not None:
                text, meta = entry
                teacher.stats.add(cache_hits=1)
                cut_at = settings["max_new_tokens"] if meta.get("finish") == "length" else None
                return Completion.reply(text, cut_at=cut_at, cached=True)
        if key in self._pending:  # the same request is already on its way: share its answer
            done = await asyncio.shield(self._pending[key])
            return Completion(done.text, done.status, attempts=0, cached=done.cached)
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            result = await self._fetch(messages, settings, schema)
            truncated = kind_of(result.status) == TRUNCATED
            if result.ok or truncated:  # both are final for these settings: keep them
                teacher.stats.add(completed=1, truncated=int(truncated), **result.usage)
                if teacher.cache is not None:
                    meta = {"settings": settings, "finish": "length" if truncated else "stop", "source": "online",
                            "usage": result.usage, **getattr(teacher, "cache_tags", {})}
                    teacher.cache.put(key, result.text or "", meta)
            future.set_result(result)
            return result
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # mark retrieved: joiners re-raise it, nobody else needs to
            raise
        finally:
            del self._pending[key]

    async def _fetch(self, messages: Messages, settings: dict[str, Any], schema: dict | None) -> Completion:
        """Ask the teacher itself (no cache): the backend's one job."""
        raise NotImplementedError
