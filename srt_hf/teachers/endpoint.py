"""EndpointTeacher: any OpenAI-compatible chat server.

    teacher = EndpointTeacher("http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-72B-Instruct", api_key_env="VLLM_API_KEY")

TGI, vLLM, SGLang, llama.cpp, ``transformers serve``, OpenAI, Azure, Inference Endpoints and Inference
Providers (``https://router.huggingface.co/v1``). srt_hf writes the chat-completion request itself, on the
HTTP library huggingface_hub uses (httpx2): huggingface_hub's ``chat_completion`` would attach the HF token
to any host and rewrite OpenAI's ``json_schema`` response format into TGI's. srt_hf owns the per-request
timeout, retries with exponential backoff and full jitter (see :mod:`.http`), a bound on requests in flight,
load spreading with failover over several base URLs, a circuit breaker per URL, and which credential goes
to which host (see :mod:`.credentials`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict
from typing import Any, Sequence

from ..errors import ConfigError, TeacherError
from ..status import INVALID, make
from .base import Completion, GenerationConfig, Messages, StructuredOutputUnsupported, Teacher, TeacherSession
from .credentials import Credentials, host_of, is_hf_host
from .http import (
    HTTPStatusError,
    ReplyTooLarge,
    _Fault,
    _http_module,
    _PrioritySlots,
    _UrlHealth,
    api_root,
    chat_url,
    classify,
    parse_reply,
    refuses_fields,
    reply_cap,
    shorten,
)
from .structured import DIALECTS, UNSUPPORTED, looks_like_json_object

logger = logging.getLogger(__name__)

#: Secrets passed as arguments (api_key, header values), by (base URLs, model). Never pickled: processes forked
#: by ``Dataset.map(num_proc=…)`` inherit them, spawned ones read ``api_key_env`` from their environment.
_SECRETS: dict[tuple, tuple[str | None, dict[str, str]]] = {}
_RETRY_LOG_EVERY = 5.0  # seconds between two retry lines per URL at the default log level


class EndpointTeacher(Teacher):
    """A teacher behind one or more OpenAI-compatible chat endpoints.

    ``base_urls``: one URL, a list, or a comma-separated string (``http://host:8000`` or ``…/v1``).
    ``model``: the model name sent with each request; without it srt_hf asks the server which model it
    serves (``/v1/models``, TGI's ``/info``) and keys the cache and the provenance on that id.
    ``api_key`` / ``api_key_env``: the key sent as ``Authorization: Bearer …`` to these URLs' hosts (default:
    the HF token for Hugging Face hosts only, ``OPENAI_API_KEY`` for api.openai.com, nothing elsewhere).
    ``headers``: more headers for these hosts (Azure's ``api-key``, an organisation id). ``extra_body``:
    fields merged into every request body (server-specific sampling settings such as ``top_k``); they are
    part of the cache key. ``token`` is the old name of ``api_key``.
    """

    kind = "endpoint"

    def __init__(
        self,
        base_urls: str | Sequence[str],
        model: str | None = None,
        config: GenerationConfig | None = None,
        cache_path: str | os.PathLike | None = None,
        token: str | None = None,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        headers: dict[str, str] | None = None,
        extra_body: dict[str, Any] | None = None,
        served_model: str | None = None,
    ):
        super().__init__(config, cache_path)
        urls = [u.strip() for u in base_urls.split(",")] if isinstance(base_urls, str) else [str(u).strip() for u in base_urls]
        urls = [u.rstrip("/") for u in urls if u]
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if not urls or bad:
            raise ConfigError(f"EndpointTeacher needs http(s) base URLs (got {bad or base_urls!r}); set `base_urls` to e.g. http://127.0.0.1:8000/v1.")
        if extra_body is not None and not isinstance(extra_body, dict):
            raise ConfigError(f"`extra_body` must be a JSON object (a dict), got {type(extra_body).__name__}.")
        self.base_urls = urls
        self.model = model
        self.api_key_env = api_key_env
        self.extra_body = dict(extra_body or {})
        api_key = api_key if api_key is not None else token
        if api_key is not None or headers:
            _SECRETS[self._secret_key()] = (api_key, dict(headers or {}))
        secret_key, secret_headers = _SECRETS.get(self._secret_key(), (None, {}))
        self.credentials = Credentials([host_of(u) for u in urls], api_key=secret_key, api_key_env=api_key_env, headers=secret_headers)
        self._health = {u: _UrlHealth() for u in urls}
        self._rr = 0
        self.tokens_field = "max_tokens"  # becomes max_completion_tokens when the server asks for it
        self.structured_dialect: str | None = None  # found on the first structured request
        #: what each dialect tried got: "refused: <the server's words>" or "ignored" (never asked again)
        self.dialect_outcomes: dict[str, str] = {}
        self._served = served_model  # the model the server named, asked once (and carried by pickles)
        self.concurrency = self.config.max_concurrency  # requests at once: halved while the server queues (timeouts)

    def _secret_key(self) -> tuple:
        return (tuple(self.base_urls), self.model)

    def __reduce__(self):
        settings = {"api_key_env": self.api_key_env, "extra_body": self.extra_body, "served_model": self._served}
        return (_rebuild_endpoint, (self.base_urls, self.model, asdict(self.config), self.cache_path, settings))

    def __repr__(self) -> str:
        return f"EndpointTeacher({self.base_urls!r}, model={self.model!r})"

    # identity
    def served_model(self) -> str | None:
        """The model name for requests and the cache key: the configured one, else the one the server names."""
        if self.model is not None:
            return self.model
        if self._served is None:
            names = {_ask_served_model(u, self.credentials) for u in self.base_urls} - {None}
            if len(names) > 1:
                raise ConfigError(f"The teacher URLs serve different models ({', '.join(sorted(names))}); name one with --teacher-model.")
            self._served = names.pop() if names else ""  # "" once asked without an answer
        return self._served or None

    def scope(self) -> dict[str, Any]:
        model = self.served_model()
        scope: dict[str, Any] = {"kind": self.kind, "model": model}
        if model is None:  # the server would not say which model it serves: tell servers apart by address
            scope["base_urls"] = sorted(self.base_urls)
        if self.extra_body:
            scope["extra_body"] = self.extra_body
        return scope

    def transport(self) -> dict[str, Any]:
        """How srt_hf talks to the server, without any secret (for run.json)."""
        return {"base_urls": self.base_urls, "credentials": self.credentials.describe(), "structured": self.structured_dialect}

    # the structured-output probe, kept in the run folder (teachers/probe_store.py)
    def probe_key(self) -> str:
        """Whom a probe's outcome is about: the base URLs and the model."""
        return f"{','.join(self.base_urls)} {self.served_model() or ''}".strip()

    def probe_state(self) -> dict[str, Any]:
        """The probe's outcome: the dialect found (or "unsupported") and what each dialect tried got."""
        return {"dialect": self.structured_dialect, "tried": dict(self.dialect_outcomes), "refusals_answered": True}

    def restore_probe(self, state: dict[str, Any]) -> None:
        """Take a stored outcome: a resumed run asks no probe (a dialect refused before is not asked again).

        Refusals stored without ``refusals_answered`` (an older srt_hf) may have been a proxy refusing every request:
        where no dialect was answered either (ignored), those dialects are asked again, and so is "unsupported"."""
        dialect = state.get("dialect")
        tried = {k: str(v) for k, v in (state.get("tried") or {}).items() if k in DIALECTS}
        if not state.get("refusals_answered") and "ignored" not in tried.values():  # nothing says the server answered
            tried = {k: v for k, v in tried.items() if not v.startswith("refused")}
            if dialect == UNSUPPORTED:
                dialect = None
        if dialect in DIALECTS or dialect == UNSUPPORTED:
            self.structured_dialect = dialect
        self.dialect_outcomes.update(tried)

    def session(self) -> _EndpointSession:
        return _EndpointSession(self)


def _rebuild_endpoint(base_urls: list[str], model: str | None, config: dict, cache_path: str | None, settings: dict | None = None) -> EndpointTeacher:
    return EndpointTeacher(base_urls, model, GenerationConfig(**config), cache_path, **(settings or {}))


def _ask_served_model(base_url: str, credentials: Credentials) -> str | None:
    """Which model a server serves: ``/v1/models`` (one model), else TGI's ``/info``; None if it will not say."""
    http = _http_module()
    root = api_root(base_url)
    found: str | None = None
    with http.Client(timeout=10.0, follow_redirects=False) as client:
        for path, read in (("/v1/models", _one_model_id), ("/info", lambda d: d.get("model_id"))):
            url = root + path
            try:
                response = client.get(url, headers=credentials.headers_for(url))
                data = response.json() if response.status_code == 200 else None
            except (http.HTTPError, ValueError):
                continue
            if isinstance(data, dict):
                found = read(data)
                if found:
                    break
    if found is None:
        logger.warning("teacher %s: could not ask which model it serves; its replies are cached under the URL (pass --teacher-model to name it).", base_url)
    return found


def _one_model_id(data: dict) -> str | None:
    models = [m.get("id") for m in data.get("data") or [] if isinstance(m, dict) and m.get("id")]
    if len(models) > 1:
        raise ConfigError(f"The teacher server lists {len(models)} models ({', '.join(models[:5])}…); choose one with --teacher-model.")
    return models[0] if models else None


def request_body(
    model: str | None, messages: Messages, settings: dict[str, Any], *, tokens_field: str = "max_tokens",
    extra_body: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The chat-completion request body: model, messages, the generation settings, ``extra_body``, then ``extra``
    (the structured-output fields). Online requests and batch-file lines are built here alike."""
    body: dict[str, Any] = {"model": model or "default", "messages": messages}
    body[tokens_field] = settings["max_new_tokens"]
    body.update(temperature=settings["temperature"], top_p=settings["top_p"], seed=settings["seed"])
    body.update(extra_body or {})
    body.update(extra or {})
    return body


class _EndpointSession(TeacherSession):
    teacher: EndpointTeacher

    async def __aenter__(self) -> _EndpointSession:
        from huggingface_hub import constants

        hub_urls = [u for u in self.teacher.base_urls if is_hf_host(u)]
        if hub_urls and constants.is_offline_mode():
            raise ConfigError(
                f"HF_HUB_OFFLINE=1 forbids requests to {hub_urls[0]}; unset HF_HUB_OFFLINE to use a Hugging Face "
                "endpoint or provider as the teacher, or set `teacher` to a server of your own or a local model."
            )
        self._model = self.teacher.served_model()
        self._slots = _PrioritySlots(self.teacher.concurrency)
        self._last_answer = dict.fromkeys(self.teacher.base_urls, -math.inf)  # monotonic time of each URL's last reply
        self._last_shrink = -math.inf
        self._probe = asyncio.Lock()
        self._in_flight = dict.fromkeys(self.teacher.base_urls, 0)
        self._last_log = dict.fromkeys(self.teacher.base_urls, 0.0)
        # timeout=None: the deadline is ours (asyncio.wait_for), and so are the retries.
        self._http = _http_module().AsyncClient(timeout=None, follow_redirects=True, event_hooks={"request": [self._authorize]})
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._http.aclose()

    async def _authorize(self, request) -> None:
        """Every request, redirects included, carries the credentials of its own host and no others."""
        request.headers.pop("authorization", None)
        request.headers.update(self.teacher.credentials.headers_for(str(request.url)))

    def body(self, messages: Messages, settings: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The chat-completion request body (what a batch file line holds, too: see :func:`request_body`)."""
        return request_body(self._model, messages, settings, tokens_field=self.teacher.tokens_field,
                            extra_body=self.teacher.extra_body, extra=extra)

    # -- URL choice and health ------------------------------------------------------------------
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
        health, cfg, now = self.teacher._health[url], self.teacher.config, time.monotonic()
        if fault is None:
            health.failures, health.in_row, health.failing_since = 0, 0, None
            return
        health.in_row += 1
        health.last_fault = fault
        if health.failing_since is None:
            health.failing_since = now
        if fault.url_down:
            if now >= health.down_until:  # requests already in flight when it went down do not escalate the pause
                health.failures += 1
                health.down_until = now + min(cfg.backoff_max, cfg.backoff_base * 2 ** (health.failures - 1))
        elif fault.retry_after is not None:
            health.down_until = max(health.down_until, now + fault.retry_after)
        elif fault.retryable:
            health.failures += 1

    def _check_fatal(self, url: str, fault: _Fault) -> None:
        """Stop the run on a fault no retry can fix, or when every URL's breaker is open."""
        teacher = self.teacher
        if fault.fatal:
            raise TeacherError(f"The teacher at {url} answered {fault.quoted()}; {fault.fatal}. Finished work is kept; rerun to resume.")
        now = time.monotonic()
        if all(teacher._health[u].broken(teacher.config, now) for u in teacher.base_urls):
            health = teacher._health[url]
            last, limit = health.last_fault, health.limit_reached(teacher.config, now) or "--breaker-failures"
            what = (f"failed {health.in_row} requests in a row" if limit.startswith("--breaker-failures") else
                    f"answered nothing but failures for {now - (health.failing_since or now):.0f}s ({health.in_row} requests)")
            check = ("check what the server says about the request (the model: --teacher-model; the key: "
                     "--teacher-api-key-env)" if refuses_fields(last or fault, {})  # up, and refusing what it is sent
                     else "check that the server is up and the URL is right (--teacher)")
            if (last or fault).timed_out:
                check += f"; a server that is up but slower than that needs a longer --timeout (now {teacher.config.timeout:g} s)"
            raise TeacherError(
                f"The teacher at {', '.join(teacher.base_urls)} {what} (last: {(last or fault).quoted()}); "
                f"{check}, or raise {limit.split()[0]} (now {limit.split()[1]}). Finished work is kept; rerun to resume."
            )

    def _ease_off(self, url: str) -> None:
        """A timeout while the same server answered others: it queues what it cannot run at once, and the wait
        counts against our deadline (llama.cpp with few slots, Ollama). Such a timeout is retried but not counted by
        the breaker, and the requests in flight are halved, at most once per timeout period, for the rest of the run.
        """
        teacher, now = self.teacher, time.monotonic()
        if self._slots.size == 1 or now - self._last_shrink < teacher.config.timeout:
            return
        self._last_shrink = now
        teacher.concurrency = self._slots.shrink()
        logger.warning("teacher %s: requests time out while others are answered (the server queues what it cannot run "
                       "at once): %d request%s at once from now on (--max-concurrency %d)", url, teacher.concurrency,
                       "" if teacher.concurrency == 1 else "s", teacher.config.max_concurrency)

    def _log_retry(self, url: str, attempt: int, fault: _Fault, queued: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_log[url] >= _RETRY_LOG_EVERY:
            self._last_log[url] = now
            cfg = self.teacher.config
            hint = "" if not queued else " (one request at a time: raise --timeout)" if self._slots.size == 1 else (
                " (the server queues what it cannot run at once: raise --timeout, or lower --max-concurrency)")
            logger.warning("teacher %s: %s; retrying (attempt %d of %d)%s", url, fault.reason, attempt + 1, cfg.max_retries + 1, hint)

    # -- requests -------------------------------------------------------------------------------
    async def _fetch(self, messages: Messages, settings: dict[str, Any], schema: dict | None) -> Completion:
        if schema is None:
            return (await self._request(messages, settings))[0]
        if self.teacher.structured_dialect is None:
            async with self._probe:  # the first structured request finds the dialect; the others wait for it
                if self.teacher.structured_dialect is None:
                    return await self._find_dialect(messages, settings, schema)
        if self.teacher.structured_dialect == UNSUPPORTED:
            tried = "; ".join(f"{name} {outcome}" for name, outcome in self.teacher.dialect_outcomes.items())
            raise StructuredOutputUnsupported(
                f"the teacher at {', '.join(self.teacher.base_urls)} does not enforce JSON schemas"
                + (f" ({shorten(tried, 400)})" if tried else ""))
        return (await self._request(messages, settings, DIALECTS[self.teacher.structured_dialect](schema)))[0]

    async def _find_dialect(self, messages: Messages, settings: dict[str, Any], schema: dict) -> Completion:
        """Ask in each dialect not tried before until the server obeys one; remember what each one got.

        A refusal (a 4xx, or a 5xx that names the request's fields: see :func:`.http.refuses_fields`) or a reply
        that is no JSON object moves on to the next dialect and is remembered. A server that is down (timeouts,
        other 5xx) decides nothing: the request fails as any other, and a later one probes again. Where every
        dialect was refused, the same request without one must be answered before the server is taken to have no
        structured output: a proxy that refuses every request with a 400 (LiteLLM without its database, a bad
        key) has said nothing about dialects.
        """
        teacher, ignored = self.teacher, []
        tried: dict[str, str] = {}  # this probe's outcomes, kept on the teacher once they say something about dialects
        for name, fields in DIALECTS.items():
            if name in teacher.dialect_outcomes:
                continue
            completion, fault = await self._request(messages, settings, fields(schema), probing=True)
            if completion.text is not None and looks_like_json_object(completion.text):
                teacher.dialect_outcomes.update(tried)
                teacher.structured_dialect = name
                logger.info("teacher %s: structured output through %s", teacher.base_urls[0], name)
                return completion
            if completion.text is None and not (fault is not None and refuses_fields(fault, fields(schema))):
                if "ignored" in tried.values():  # the server answered this probe: its refusals were about dialects
                    teacher.dialect_outcomes.update(tried)
                return completion  # not reached (timeouts, 5xx): decide on a later request
            if completion.text is None:
                tried[name] = f"refused: {fault.quoted()}"
            else:
                tried[name] = "ignored"
                if completion.ok:
                    ignored.append(completion.text)
        if tried and all(outcome.startswith("refused") for outcome in tried.values()):  # is a request without one answered?
            plain, _ = await self._request(messages, settings)
            if plain.text is None:  # refused too: the refusals were not about dialects
                return plain
            if plain.ok:
                ignored.append(plain.text)  # a reply to the JSON prompt: used where it reads
        teacher.dialect_outcomes.update(tried)
        teacher.structured_dialect = UNSUPPORTED
        outcomes = "; ".join(f"{name} {outcome}" for name, outcome in teacher.dialect_outcomes.items())
        logger.warning("teacher %s does not enforce JSON schemas (%s); reflections use the marker layout",
                       teacher.base_urls[0], shorten(outcomes, 400))
        raise StructuredOutputUnsupported(
            f"the teacher at {', '.join(teacher.base_urls)} does not enforce JSON schemas ({shorten(outcomes, 400)})",
            replies=ignored)

    async def _request(
        self, messages: Messages, settings: dict[str, Any], extra: dict | None = None, *, probing: bool = False
    ) -> tuple[Completion, _Fault | None]:
        """One request with its retries; a failure becomes a ``request_failed`` completion (or a fatal error).

        ``probing``: a dialect probe, whose refusal (a 4xx, or a 5xx naming the request's fields) is an answer about
        the server, not a failure: it is neither retried nor counted by the breaker.
        """
        teacher, cfg = self.teacher, self.teacher.config
        url: str | None = None
        attempt, fault = 0, None
        while attempt <= cfg.max_retries:
            attempt += 1
            await self._wait_for_url()
            await self._slots.acquire(priority=0 if attempt > 1 else 1)
            try:
                url = self._choose(avoid=url)
                reply, fault = await self._attempt(url, self.body(messages, settings, extra))
            finally:
                self._slots.release()
            if fault is not None and self._tokens_field_rejected(fault):
                teacher.tokens_field, attempt = "max_completion_tokens", attempt - 1  # not the server's fault: ask again
                continue
            if fault is not None and fault.oversized:  # the server answered, beyond any reply to these settings
                self._record(url, None)
                teacher.stats.add(oversized=1)
                return Completion(None, make(INVALID, fault.reason), attempts=attempt), fault
            if probing and fault is not None and refuses_fields(fault, extra or {}):
                # an answer about the dialect: it neither fails nor clears the breaker (a proxy may refuse every request)
                return Completion.failed(fault.reason, attempt), fault
            if fault is None:
                self._record(url, None)
                self._last_answer[url] = time.monotonic()
                cut_at = settings["max_new_tokens"] if reply.finish_reason == "length" else None
                return Completion.reply(reply.text, cut_at=cut_at, attempts=attempt, usage=reply.usage), None
            queued = fault.timed_out and time.monotonic() - self._last_answer[url] <= cfg.timeout
            if queued:  # others were answered meanwhile: this server is up and queueing, not failing
                self._ease_off(url)
            else:
                self._record(url, fault)
                self._check_fatal(url, fault)
            if not fault.retryable or attempt > cfg.max_retries:
                break
            teacher.stats.add(retried=1)
            self._log_retry(url, attempt, fault, queued)
            others_up = any(teacher._health[u].down_until <= time.monotonic() for u in teacher.base_urls if u != url)
            if not (others_up and (fault.url_down or fault.retry_after is not None)):
                await asyncio.sleep(random.uniform(0, min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))))
        teacher.stats.add(failed=1)
        return Completion.failed(fault.reason, attempt), fault

    def _tokens_field_rejected(self, fault: _Fault) -> bool:
        """A 400 saying to use ``max_completion_tokens`` (newer OpenAI models): switch once for the run."""
        return (
            self.teacher.tokens_field == "max_tokens" and fault.reason.startswith("HTTP 400")
            and "max_completion_tokens" in fault.body
        )

    async def _attempt(self, url: str, body: dict[str, Any]):
        """One HTTP request under our deadline; a failure comes back as a fault, never raised."""
        self._in_flight[url] += 1
        self.teacher.stats.add(requests_sent=1)
        try:
            response = await asyncio.wait_for(self._post(chat_url(url), body), self.teacher.config.timeout)
            return parse_reply(response), None
        except Exception as err:  # noqa: BLE001 - every failure becomes a status or a fatal error, never a crash
            return None, classify(err, self.teacher.config)
        finally:
            self._in_flight[url] -= 1

    async def _post(self, url: str, body: dict[str, Any]) -> Any:
        """POST the request; the body is read as far as :func:`~.http.reply_cap` allows (an error body too)."""
        max_new_tokens = int(body.get(self.teacher.tokens_field) or self.teacher.config.max_new_tokens)
        cap = reply_cap(max_new_tokens)
        content = json.dumps(body, ensure_ascii=False)
        async with self._http.stream("POST", url, content=content, headers={"content-type": "application/json"}) as response:
            data = await _read_bounded(response, cap, max_new_tokens, error=response.status_code >= 400)
        if response.status_code >= 400:
            raise HTTPStatusError(response.status_code, response.headers, data.decode("utf-8", "replace"))
        return json.loads(data)


#: Bytes of a too-large reply counted (and dropped) to name its size; beyond them it is "more than N bytes".
_COUNT_BEYOND_CAP = 64 << 20


async def _read_bounded(response, cap: int, max_new_tokens: int, *, error: bool = False) -> bytes:
    """The body of ``response`` if it is at most ``cap`` bytes, else :class:`ReplyTooLarge` (nothing beyond the cap is
    kept in memory; a declared Content-Length over the cap is refused before reading). An error body is cut at the
    cap instead: only its message matters."""
    declared = response.headers.get("content-length")
    if not error and declared and declared.isdigit() and int(declared) > cap:
        raise ReplyTooLarge(int(declared), cap, max_new_tokens)
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size <= cap:
            chunks.append(chunk)
        elif error:
            chunks.append(chunk[: max(0, cap - (size - len(chunk)))])
            break
        elif size > cap + _COUNT_BEYOND_CAP:
            raise ReplyTooLarge(size, cap, max_new_tokens, at_least=True)
    if size > cap and not error:
        raise ReplyTooLarge(size, cap, max_new_tokens)
    return b"".join(chunks)


__all__ = ["EndpointTeacher"]
