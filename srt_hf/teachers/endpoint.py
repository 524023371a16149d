"""EndpointTeacher: any OpenAI-compatible chat server, through ``huggingface_hub.AsyncInferenceClient``.

    teacher = EndpointTeacher("http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-72B-Instruct")

TGI, vLLM, ``transformers serve``, Inference Endpoints, Inference Providers
(``https://router.huggingface.co/v1``). The client never retries on its own; srt_hf owns the per-request
timeout, retries with exponential backoff and full jitter (see :mod:`srt_hf.teachers.http`), a bound on
requests in flight, and load spreading with failover over several base URLs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import asdict
from typing import Any, Sequence

from ..errors import ConfigError
from ..status import OK, REQUEST_FAILED, make
from .base import Completion, GenerationConfig, Messages, Teacher, TeacherSession
from .http import _Fault, _http_module, _is_hub_host, _PrioritySlots, _read_error_body, _reply_text, _UrlHealth, classify

logger = logging.getLogger(__name__)

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
                return Completion(text, OK, attempts=attempt)
            logger.debug("teacher request to %s failed (attempt %d): %s", url, attempt, fault.reason)
            if not fault.retryable or attempt > cfg.max_retries:
                break
            teacher.stats.add(retried=1)
            others_up = any(teacher._health[u].down_until <= time.monotonic() for u in teacher.base_urls if u != url)
            if not (others_up and (fault.url_down or fault.retry_after is not None)):
                await asyncio.sleep(random.uniform(0, min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))))
        teacher.stats.add(failed=1)
        return Completion(None, make(REQUEST_FAILED, fault.reason), attempts=attempt)

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
