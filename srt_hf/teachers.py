"""Teachers: the models that write reflections, behind one interface.

* :class:`EndpointTeacher` — any OpenAI-compatible chat server (TGI, vLLM, ``transformers serve``,
  Inference Endpoints, Inference Providers through ``https://router.huggingface.co/v1``), spoken to
  through ``huggingface_hub.AsyncInferenceClient``. The client never retries on its own; srt_hf owns
  the per-request timeout, retries with exponential backoff and full jitter (connection errors,
  timeouts, 408/429/5xx, malformed replies; ``Retry-After`` honoured), a bound on requests in flight,
  and load spreading with failover over several base URLs.
* :class:`LocalTeacher` — a transformers causal LM run in-process with batched ``generate``.

Both give, for a list of chat conversations, one :class:`Completion` each, in order::

    completions = teacher.generate([[{"role": "user", "content": "..."}], ...])      # sync
    completions = await teacher.agenerate(conversations)                              # async
    async with teacher.session() as s:                                                # per request
        completion = await s.complete(messages)

and share a persistent response cache (``cache_path``, see :mod:`srt_hf.teacher_cache`) and counters
(``teacher.stats``). A teacher pickles without any live client or model: async clients belong to the
event loop that made them, so each :meth:`Teacher.session` (one per ``asyncio.run``) makes its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import hashlib
import heapq
import json
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from . import models
from .errors import ConfigError
from .teacher_cache import ResponseCache, cache_key

logger = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
T = TypeVar("T")

#: The generation settings that change a completion (and hence its cache key).
GENERATION_KEYS = ("temperature", "max_new_tokens", "top_p", "seed")


@dataclass
class GenerationConfig:
    """How a teacher generates, and how srt_hf talks to a teacher server."""

    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the teacher; 0 is greedy."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Most tokens the teacher may write per reply."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (used when temperature > 0)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed sent with each request (and used by the local teacher)."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds one request to a teacher server may take before it is retried."})
    max_retries: int = field(default=5, metadata={"help": "Retries of a failed request (connection error, timeout, 429, 5xx) before it counts as failed."})
    max_concurrency: int = field(default=16, metadata={"help": "Most requests in flight at once, over all base URLs."})
    backoff_base: float = field(default=0.5, metadata={"help": "Backoff before retry k is uniform in [0, min(backoff_max, backoff_base * 2**k)] seconds."})
    backoff_max: float = field(default=30.0, metadata={"help": "Longest backoff between two attempts of a request, in seconds."})
    max_retry_after: float = field(default=600.0, metadata={"help": "Longest Retry-After (seconds) to wait for; a server asking for more fails the request."})
    batch_size: int = field(default=8, metadata={"help": "Local teacher: prompts per generate call."})

    def __post_init__(self) -> None:
        checks = {
            "temperature": self.temperature >= 0, "max_new_tokens": self.max_new_tokens > 0,
            "top_p": 0 < self.top_p <= 1, "timeout": self.timeout > 0, "max_retries": self.max_retries >= 0,
            "max_concurrency": self.max_concurrency > 0, "backoff_base": self.backoff_base >= 0,
            "backoff_max": self.backoff_max >= 0, "max_retry_after": self.max_retry_after >= 0, "batch_size": self.batch_size > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"Invalid teacher setting `{name}` = {getattr(self, name)!r}: {GenerationConfig.__dataclass_fields__[name].metadata['help']}")

    def generation_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in GENERATION_KEYS}


@dataclass
class Completion:
    """One teacher reply. ``status`` is ``ok`` or ``request_failed: <reason>`` (then ``text`` is None)."""

    text: str | None
    status: str = "ok"
    attempts: int = 0  # requests sent for it (0 when it came from the cache)
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class TeacherStats:
    """Counters for run summaries: requests sent (attempts), retried, failed, served from cache.

    Per process: workers of ``Dataset.map(num_proc=…)`` count on their own copies.
    """

    #: requests_sent: HTTP requests (or prompts generated locally), retries included; retried: retries after
    #: a transport failure; failed: completions that ended as request_failed; cache_hits: completions served
    #: from the response cache; completed: successful replies received from the teacher itself.
    FIELDS = ("requests_sent", "retried", "failed", "cache_hits", "completed")

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

    def __init__(self, config: GenerationConfig | None = None, cache_path: str | os.PathLike | None = None):
        self.config = config or GenerationConfig()
        self.cache_path = str(cache_path) if cache_path is not None else None
        self.cache = ResponseCache(self.cache_path) if self.cache_path else None
        self.stats = TeacherStats()

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

    def bind_rank(self, rank: int | None) -> None:
        """Called by transforms under ``Dataset.map(with_rank=True)``; local teachers pick ``cuda:rank``."""

    # entry points
    def session(self) -> "TeacherSession":
        """An async context manager bound to the running event loop; ``await s.complete(messages)``."""
        raise NotImplementedError

    async def agenerate(self, conversations: Sequence[Messages], overrides: dict[str, Any] | None = None) -> list[Completion]:
        """All conversations in flight together (within the concurrency bound); results in input order."""
        async with self.session() as session:
            return list(await asyncio.gather(*(session.complete(m, overrides) for m in conversations)))

    def generate(self, conversations: Sequence[Messages], overrides: dict[str, Any] | None = None) -> list[Completion]:
        """Sync :meth:`agenerate` (runs its own event loop)."""
        return run_sync(lambda: self.agenerate(conversations, overrides))


class TeacherSession:
    """Per-event-loop state of a teacher. Handles the cache and joins identical requests in flight."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self._scope = teacher.scope()
        self._pending: dict[str, asyncio.Future] = {}

    async def __aenter__(self) -> "TeacherSession":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

    async def complete(self, messages: Messages, overrides: dict[str, Any] | None = None) -> Completion:
        teacher = self.teacher
        settings = teacher.settings(overrides)
        key = cache_key(self._scope, messages, settings)
        if teacher.cache is not None:
            text = teacher.cache.get(key)
            if text is not None:
                teacher.stats.add(cache_hits=1)
                return Completion(text, "ok", attempts=0, cached=True)
        if key in self._pending:  # the same request is already on its way: share its answer
            done = await asyncio.shield(self._pending[key])
            return Completion(done.text, done.status, attempts=0, cached=done.cached)
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            result = await self._fetch(messages, settings)
            if result.ok:
                teacher.stats.add(completed=1)
                if teacher.cache is not None:
                    teacher.cache.put(key, result.text or "", {"settings": settings})
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

    async def _fetch(self, messages: Messages, settings: dict[str, Any]) -> Completion:
        raise NotImplementedError


# -- endpoint teacher ----------------------------------------------------------------------------
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


_EXPLICIT_TOKENS: dict[tuple, str] = {}  # tokens passed as arguments; never pickled (see EndpointTeacher)


class EndpointTeacher(Teacher):
    """A teacher behind one or more OpenAI-compatible chat endpoints.

    ``base_urls``: one URL, a list, or a comma-separated string (``http://host:8000`` or ``…/v1``).
    ``model``: the model name sent with each request (vLLM and ``transformers serve`` need it; TGI does
    not). ``token``: sent as the bearer token; default: the usual Hugging Face token (``HF_TOKEN`` or
    ``hf auth login``). An explicit token is kept out of pickles and fingerprints; processes forked by
    ``Dataset.map(num_proc=…)`` inherit it, spawned ones fall back to the environment.
    """

    kind = "endpoint"

    def __init__(
        self,
        base_urls: str | Sequence[str],
        model: str | None = None,
        config: GenerationConfig | None = None,
        cache_path: str | os.PathLike | None = None,
        token: str | None = None,
    ):
        super().__init__(config, cache_path)
        urls = [u.strip() for u in base_urls.split(",")] if isinstance(base_urls, str) else [str(u).strip() for u in base_urls]
        urls = [u.rstrip("/") for u in urls if u]
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if not urls or bad:
            raise ConfigError(f"EndpointTeacher needs http(s) base URLs (got {bad or base_urls!r}); set `base_urls` to e.g. http://127.0.0.1:8000/v1.")
        self.base_urls = urls
        self.model = model
        if token is not None:
            _EXPLICIT_TOKENS[self._token_key()] = token
        self._health = {u: _UrlHealth() for u in urls}
        self._rr = 0

    def _token_key(self) -> tuple:
        return (tuple(self.base_urls), self.model)

    def __reduce__(self):
        return (_rebuild_endpoint, (self.base_urls, self.model, asdict(self.config), self.cache_path))

    def __repr__(self) -> str:
        return f"EndpointTeacher({self.base_urls!r}, model={self.model!r})"

    def scope(self) -> dict[str, Any]:
        scope: dict[str, Any] = {"kind": self.kind, "model": self.model}
        if self.model is None:  # the server decides the model: tell servers apart by address
            scope["base_urls"] = sorted(self.base_urls)
        return scope

    def session(self) -> "_EndpointSession":
        return _EndpointSession(self)


def _rebuild_endpoint(base_urls: list[str], model: str | None, config: dict, cache_path: str | None) -> EndpointTeacher:
    return EndpointTeacher(base_urls, model, GenerationConfig(**config), cache_path)


class _EndpointSession(TeacherSession):
    teacher: EndpointTeacher

    async def __aenter__(self) -> "_EndpointSession":
        from huggingface_hub import constants

        hub_urls = [u for u in self.teacher.base_urls if _is_hub_host(u)]
        if hub_urls and constants.is_offline_mode():
            raise ConfigError(
                f"HF_HUB_OFFLINE=1 forbids requests to {hub_urls[0]}; unset HF_HUB_OFFLINE to use a Hugging Face "
                "endpoint or provider as the teacher, or set `teacher` to a server of your own or a local model."
            )
        self._slots = _PrioritySlots(self.teacher.config.max_concurrency)
        self._clients: dict[str, Any] = {}
        self._in_flight = dict.fromkeys(self.teacher.base_urls, 0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()

    async def _client(self, url: str):
        client = self._clients.get(url)
        if client is None:
            from huggingface_hub import AsyncInferenceClient, constants

            token = _EXPLICIT_TOKENS.get(self.teacher._token_key())
            # timeout=None: the deadline is ours (asyncio.wait_for), and so are the retries.
            client = self._clients[url] = AsyncInferenceClient(base_url=url, token=token, timeout=None)
            if constants.is_offline_mode() and hasattr(client, "_async_client"):
                # huggingface_hub's HTTP session refuses every request under HF_HUB_OFFLINE=1, a server of
                # your own included. Offline mode is about the Hub, so srt_hf lets the client talk to
                # non-Hub hosts through a plain session (Hub hosts are refused in __aenter__).
                session = _http_module().AsyncClient(follow_redirects=True, timeout=None, event_hooks={"response": [_read_error_body]})
                client._async_client = await client.exit_stack.enter_async_context(session)
        return client

    async def _wait_for_url(self) -> None:
        """Sleep while every URL is marked down (connection refused, or told to wait by Retry-After)."""
        health = self.teacher._health
        while True:
            now = time.monotonic()
            soonest = min(h.down_until for h in health.values())
            if soonest <= now:
                return
            await asyncio.sleep(soonest - now)

    def _choose(self, avoid: str | None) -> str:
        """The URL with fewest requests in flight among those up; ties go round robin."""
        teacher, now = self.teacher, time.monotonic()
        urls = teacher.base_urls
        up = [u for u in urls if teacher._health[u].down_until <= now] or urls
        n, start = len(urls), teacher._rr
        url = min(up, key=lambda u: (u == avoid, self._in_flight[u], teacher._health[u].failures, (urls.index(u) - start) % n))
        teacher._rr = (urls.index(url) + 1) % n
        return url

    def _record(self, url: str, fault: _Fault | None) -> None:
        health = self.teacher._health[url]
        if fault is None:
            health.failures = 0
            return
        cfg, now = self.teacher.config, time.monotonic()
        if fault.url_down:
            if now >= health.down_until:  # requests already in flight when it went down do not escalate the pause
                health.failures += 1
                health.down_until = now + min(cfg.backoff_max, cfg.backoff_base * 2 ** (health.failures - 1))
        elif fault.retry_after is not None:
            health.down_until = max(health.down_until, now + fault.retry_after)
        elif fault.retryable:
            health.failures += 1

    async def _fetch(self, messages: Messages, settings: dict[str, Any]) -> Completion:
        teacher, cfg = self.teacher, self.teacher.config
        request = {
            "model": teacher.model, "max_tokens": settings["max_new_tokens"], "temperature": settings["temperature"],
            "top_p": settings["top_p"], "seed": settings["seed"],
        }
        url: str | None = None
        for attempt in range(1, cfg.max_retries + 2):
            await self._wait_for_url()
            await self._slots.acquire(priority=0 if attempt > 1 else 1)
            try:
                url = self._choose(avoid=url)
                text, fault = await self._attempt(url, messages, request)
            finally:
                self._slots.release()
            self._record(url, fault)
            if fault is None:
                return Completion(text, "ok", attempts=attempt)
            logger.debug("teacher request to %s failed (attempt %d): %s", url, attempt, fault.reason)
            if not fault.retryable or attempt > cfg.max_retries:
                break
            teacher.stats.add(retried=1)
            others_up = any(teacher._health[u].down_until <= time.monotonic() for u in teacher.base_urls if u != url)
            if not (others_up and (fault.url_down or fault.retry_after is not None)):
                await asyncio.sleep(random.uniform(0, min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))))
        teacher.stats.add(failed=1)
        return Completion(None, f"request_failed: {fault.reason}", attempts=attempt)

    async def _attempt(self, url: str, messages: Messages, request: dict[str, Any]) -> tuple[str | None, _Fault | None]:
        """One HTTP request under our deadline; a failure comes back as a fault, never raised."""
        self._in_flight[url] += 1
        self.teacher.stats.add(requests_sent=1)
        try:
            client = await self._client(url)
            output = await asyncio.wait_for(client.chat_completion(messages, **request), self.teacher.config.timeout)
            return _reply_text(output), None
        except Exception as err:  # noqa: BLE001 - every failure becomes a status, never a crash
            return None, classify(err, self.teacher.config)
        finally:
            self._in_flight[url] -= 1


# -- local teacher -------------------------------------------------------------------------------
class LocalTeacher(Teacher):
    """A transformers causal LM generating in-process: batched, left-padded, with its chat template.

    ``model``: ``"default"``/None (the embedded SmolLM2-135M-Instruct), a Hub id, a local directory or
    a .gguf file. Greedy when ``temperature`` is 0, else sampling seeded with ``seed`` once per
    ``generate`` call (so a sampled reply depends on the batch it ran in). Loads lazily, never pickles
    the model.
    """

    kind = "local"

    def __init__(
        self,
        model: str | os.PathLike | None = "default",
        config: GenerationConfig | None = None,
        cache_path: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
    ):
        super().__init__(config, cache_path)
        self.model_name = None if models.is_default(model) else str(model)
        self.revision, self.device, self.dtype = revision, device, dtype
        self._model = self._tokenizer = None
        self._loaded_device: str | None = None
        self._rank: int | None = None
        self._lock = threading.Lock()

    def __reduce__(self):
        return (
            _rebuild_local,
            (self.model_name, asdict(self.config), self.cache_path, self.revision, self.device, self.dtype),
        )

    def __repr__(self) -> str:
        return f"LocalTeacher({models.display_name(self.model_name)!r})"

    def scope(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "model": models.display_name(self.model_name), "revision": self.revision,
            "dtype": self.dtype, "files": models.local_model_stamp(self.model_name),
        }

    def bind_rank(self, rank: int | None) -> None:
        self._rank = rank

    def session(self) -> "_LocalSession":
        return _LocalSession(self)

    def load(self):
        """(tokenizer, model), loaded once per process and device."""
        with self._lock:
            device = models.prepare_device(self.device, self._rank)
            if self._model is None or self._loaded_device != device:
                kwargs = {"revision": self.revision} if self.revision else {}
                tokenizer = models.load_tokenizer(self.model_name, **kwargs)
                tokenizer.padding_side = "left"
                self._model = models.load_causal_lm(self.model_name, device=device, dtype=self.dtype, **kwargs)
                self._tokenizer, self._loaded_device = tokenizer, device
            return self._tokenizer, self._model

    def generate_batch(self, conversations: Sequence[Messages], settings: dict[str, Any]) -> list[str]:
        """One ``generate`` call over a batch (blocking): the reply text of each conversation."""
        import torch

        tokenizer, model = self.load()
        prompts = [self._render(tokenizer, m) for m in conversations]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
        gen.max_new_tokens, gen.max_length = settings["max_new_tokens"], None
        gen.pad_token_id = tokenizer.pad_token_id
        if settings["temperature"] > 0:
            gen.do_sample, gen.temperature, gen.top_p, gen.top_k = True, settings["temperature"], settings["top_p"], None
            torch.manual_seed(settings["seed"])
        else:
            gen.do_sample, gen.temperature, gen.top_p, gen.top_k = False, None, None, None
        with torch.inference_mode():
            out = model.generate(**batch, generation_config=gen)
        return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    @staticmethod
    def _render(tokenizer, messages: Messages) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # A base model without a chat template: a plain transcript ending where the reply starts.
        turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(turns) + "\n\nAssistant:"


def _rebuild_local(model, config, cache_path, revision, device, dtype) -> LocalTeacher:
    return LocalTeacher(model, GenerationConfig(**config), cache_path, revision=revision, device=device, dtype=dtype)


class _LocalSession(TeacherSession):
    """Collects the requests made while the loop is busy and runs them as length-sorted batches."""

    teacher: LocalTeacher

    async def __aenter__(self) -> "_LocalSession":
        self._queue: list[tuple[Messages, dict[str, Any], asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        return self

    async def _fetch(self, messages: Messages, settings: dict[str, Any]) -> Completion:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((messages, settings, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        teacher = self.teacher
        while self._queue:
            await asyncio.sleep(0)  # let every request of this round join the queue
            items, self._queue = self._queue, []
            groups: dict[str, list] = {}
            for item in items:
                groups.setdefault(json.dumps(item[1], sort_keys=True), []).append(item)
            for group in groups.values():
                group.sort(key=lambda it: sum(len(str(m.get("content", ""))) for m in it[0]))
                size = teacher.config.batch_size
                for lo in range(0, len(group), size):
                    chunk = group[lo:lo + size]
                    teacher.stats.add(requests_sent=len(chunk))
                    try:
                        texts = await asyncio.to_thread(teacher.generate_batch, [c[0] for c in chunk], chunk[0][1])
                        results = [Completion(t, "ok", attempts=1) for t in texts]
                    except Exception as err:  # noqa: BLE001 - a failed batch becomes statuses, never a crash
                        logger.warning("local teacher: generate failed for %d prompts: %s", len(chunk), err)
                        teacher.stats.add(failed=len(chunk))
                        results = [Completion(None, f"request_failed: {type(err).__name__}: {str(err)[:160]}", 1)] * len(chunk)
                    for (_, _, future), result in zip(chunk, results):
                        if not future.done():
                            future.set_result(result)


# -- construction from a name ----------------------------------------------------------------------
def load_teacher(
    teacher: str | os.PathLike | None,
    *,
    model: str | None = None,
    config: GenerationConfig | None = None,
    cache_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Teacher:
    """A teacher from a name: http(s) URLs (comma-separated for several) give an :class:`EndpointTeacher`
    serving ``model``; anything else (``default``, a Hub id, a directory, a .gguf) a :class:`LocalTeacher`."""
    if isinstance(teacher, str) and teacher.strip().startswith(("http://", "https://")):
        return EndpointTeacher(teacher, model=model, config=config, cache_path=cache_path, **kwargs)
    if model is not None:
        raise ConfigError("`model` (the served model name) only applies to endpoint teachers (URLs); for a local teacher pass the model itself as `teacher`.")
    return LocalTeacher(teacher, config=config, cache_path=cache_path, **kwargs)


__all__ = [
    "Completion", "EndpointTeacher", "GenerationConfig", "LocalTeacher", "Teacher", "TeacherSession",
    "TeacherStats", "load_teacher", "parse_retry_after", "run_sync",
]
