"""LocalTeacher: a transformers causal LM generating in-process, in length-sorted batches."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from dataclasses import asdict
from typing import Any, Sequence

from .. import models, progress
from ..errors import ConfigError
from .base import Completion, GenerationConfig, Messages, StructuredOutputUnsupported, Teacher, TeacherSession

logger = logging.getLogger(__name__)

# the embedded 135M model's guards (see LocalTeacher); README's demo measures what they give
EMBEDDED_GUARDS = {"no_repeat_ngram_size": 5, "soft_string_chars": 400}


class LocalTeacher(Teacher):
    """A transformers causal LM generating in-process: batched, left-padded, with its chat template.

    ``model``: ``"default"``/None (the embedded SmolLM2-135M-Instruct), a Hub id, a local directory or
    a .gguf file. Greedy when ``temperature`` is 0, else sampling seeded with ``seed`` once per
    ``generate`` call (so a sampled reply depends on the batch it ran in). Loads lazily, never pickles
    the model.

    Guards for small models (:mod:`.decoding_guards`), on by default for the embedded model only, which
    otherwise loops under greedy decoding and rarely closes a JSON string: ``no_repeat_ngram_size``, a
    reply may not repeat one of its own n-grams of this length (the prompt may be quoted); and
    ``soft_string_chars``, under a JSON schema a string longer than this is nudged to close at its next
    natural end. None means 5 and 400 for the embedded model, 0 (off) for every other. Under a JSON
    schema the review is also held to ``review_max_length`` characters, so that it cannot eat the token
    budget of the texts after it (the review is not kept as data).
    """

    kind = "local"
    review_max_length = 200

    def __init__(
        self,
        model: str | os.PathLike | None = "default",
        config: GenerationConfig | None = None,
        cache_path: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        no_repeat_ngram_size: int | None = None,
        soft_string_chars: int | None = None,
    ):
        super().__init__(config, cache_path)
        self.model_name = None if models.is_default(model) else str(model)
        self.revision, self.device, self.dtype = revision, device, dtype
        embedded = self.model_name is None
        if no_repeat_ngram_size is None:
            no_repeat_ngram_size = EMBEDDED_GUARDS["no_repeat_ngram_size"] if embedded else 0
        if soft_string_chars is None:
            soft_string_chars = EMBEDDED_GUARDS["soft_string_chars"] if embedded else 0
        if dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ConfigError(f"Unknown local teacher dtype {dtype!r}: set --teacher-dtype (dtype) to float32, bfloat16, float16 or auto.")
        if no_repeat_ngram_size < 0 or no_repeat_ngram_size == 1:
            raise ConfigError(f"no_repeat_ngram_size must be 0 (off) or at least 2, got {no_repeat_ngram_size}.")
        if soft_string_chars < 0:
            raise ConfigError(f"soft_string_chars must be 0 (off) or a number of characters, got {soft_string_chars}.")
        self.no_repeat_ngram_size, self.soft_string_chars = no_repeat_ngram_size, soft_string_chars
        self._model = self._tokenizer = None
        self._loaded_device: str | None = None
        self._rank: int | None = None
        self._lock = threading.Lock()

    def __reduce__(self):
        return (
            _rebuild_local,
            (self.model_name, asdict(self.config), self.cache_path, self.revision, self.device, self.dtype,
             self.guards()),
        )

    def __repr__(self) -> str:
        return f"LocalTeacher({models.display_name(self.model_name)!r})"

    def scope(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "model": models.display_name(self.model_name), "revision": self.revision,
            "dtype": self.dtype, "files": models.local_model_stamp(self.model_name),
            **{name: value for name, value in self.guards().items() if value},
        }

    def guards(self) -> dict[str, int]:
        """The small-model guards in use (0: off)."""
        return {"no_repeat_ngram_size": self.no_repeat_ngram_size, "soft_string_chars": self.soft_string_chars}

    def transport(self) -> dict[str, Any]:
        from .structured import available_locally

        return {"device": self.device, "structured": "llguidance" if available_locally() else None}

    def placement(self) -> dict[str, str]:
        """Where the model runs, for run.json: its dtype and the device it loaded on (else the one it would load on)."""
        return {"dtype": self.dtype, "device": self._loaded_device or models.prepare_device(self.device, self._rank)}

    def bind_rank(self, rank: int | None) -> None:
        self._rank = rank

    def session(self) -> _LocalSession:
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

    def generate_batch(self, conversations: Sequence[Messages], settings: dict[str, Any],
                       schema: dict | None = None) -> list[tuple[str, bool, dict[str, int]] | ValueError]:
        """One ``generate`` call over a batch (blocking): each conversation's (reply, stopped at the token limit,
        token usage). The usage is counted as a server counts it: ``prompt_tokens`` the prompt's tokens (padding
        left out), ``completion_tokens`` the new tokens up to and including the end-of-sequence token.

        With ``schema`` the decoding is constrained to it (a JSON grammar, :class:`.structured.JSONGrammar`).
        A conversation whose prompt and reply would pass the positions the model holds gets a ValueError naming
        the fix instead, and the others are generated without it.
        """
        tokenizer, model = self.load()
        encoded = tokenizer([self._render(tokenizer, m) for m in conversations], add_special_tokens=False)
        past = _past_positions(model, [len(ids) for ids in encoded["input_ids"]], settings["max_new_tokens"])
        fit = [i for i in range(len(conversations)) if i not in past]
        replies = dict(zip(fit, self._generate(tokenizer, model, {k: [v[i] for i in fit] for k, v in encoded.items()},
                                               settings, schema))) if fit else {}
        return [replies[i] if i in replies else past[i] for i in range(len(conversations))]

    def _generate(self, tokenizer, model, encoded: dict[str, list], settings: dict[str, Any],
                  schema: dict | None) -> list[tuple[str, bool, dict[str, int]]]:
        import torch

        batch = tokenizer.pad(encoded, return_tensors="pt").to(model.device)  # left padding (set at load)
        prompts = encoded["input_ids"]
        prompt_length = batch["input_ids"].shape[1]
        gen = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
        gen.max_new_tokens, gen.max_length = settings["max_new_tokens"], None
        gen.pad_token_id = tokenizer.pad_token_id
        if settings["temperature"] > 0:
            gen.do_sample, gen.temperature, gen.top_p, gen.top_k = True, settings["temperature"], settings["top_p"], None
            torch.manual_seed(settings["seed"])
        else:
            gen.do_sample, gen.temperature, gen.top_p, gen.top_k = False, None, None, None
        from transformers import LogitsProcessorList

        from .decoding_guards import ReplyRepeatGuard, StringLengthNudge

        processors = LogitsProcessorList([_DecodingNote(prompt_length, gen.max_new_tokens, len(prompts))])
        if self.no_repeat_ngram_size:
            processors.append(ReplyRepeatGuard(self.no_repeat_ngram_size, prompt_length))
        if schema is not None:
            from .structured import JSONGrammar

            if self.soft_string_chars:
                processors.append(StringLengthNudge(tokenizer, self.soft_string_chars, prompt_length))
            # last: the grammar has the final word on what may come next
            processors.append(JSONGrammar(tokenizer, schema, batch_size=len(prompts), prompt_length=prompt_length))
        with torch.inference_mode():
            out = model.generate(**batch, generation_config=gen, logits_processor=processors)
        new = out[:, prompt_length:]  # (B, T_new); rows that ended early are padded
        stops = _stop_ids(gen, tokenizer)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()  # (B,): left padding is not counted
        return [(text, _hit_limit(row.tolist(), stops, settings["max_new_tokens"]),
                 {"prompt_tokens": int(n_prompt), "completion_tokens": _generated(row.tolist(), stops)})
                for text, row, n_prompt in zip(texts, new, prompt_tokens)]

    @staticmethod
    def _render(tokenizer, messages: Messages) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # A base model without a chat template: a plain transcript ending where the reply starts.
        turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(turns) + "\n\nAssistant:"


class _DecodingNote:
    """A logits processor that changes nothing: it says beside the progress bar which token a batch is decoding.
    A local batch ends all its rows at once, so without it the bar would stand still for minutes on a CPU."""

    def __init__(self, prompt_length: int, max_new_tokens: int, rows: int):
        self.prompt_length, self.max_new_tokens, self.rows = prompt_length, max_new_tokens, rows

    def __call__(self, input_ids, scores):
        progress.note("teacher: %d replies at token %d/%d", self.rows, input_ids.shape[1] - self.prompt_length + 1,
                      self.max_new_tokens)
        return scores


def _rebuild_local(model, config, cache_path, revision, device, dtype, guards) -> LocalTeacher:
    return LocalTeacher(model, GenerationConfig(**config), cache_path, revision=revision, device=device, dtype=dtype, **guards)


class _LocalSession(TeacherSession):
    """Collects the requests made while the loop is busy and runs them as length-sorted batches."""

    teacher: LocalTeacher

    async def __aenter__(self) -> _LocalSession:
        self._queue: list[tuple[Messages, dict[str, Any], dict | None, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        return self

    async def _fetch(self, messages: Messages, settings: dict[str, Any], schema: dict | None) -> Completion:
        if schema is not None:
            from .structured import available_locally

            if not available_locally():
                raise StructuredOutputUnsupported("llguidance is not installed (pip install llguidance)")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((messages, settings, schema, future))
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
                groups.setdefault(json.dumps(item[1:3], sort_keys=True), []).append(item)
            for group in groups.values():
                group.sort(key=lambda it: sum(len(str(m.get("content", ""))) for m in it[0]))
                size = teacher.config.batch_size
                for lo in range(0, len(group), size):
                    chunk = group[lo:lo + size]
                    teacher.stats.add(requests_sent=len(chunk))
                    settings, schema = chunk[0][1], chunk[0][2]
                    try:
                        replies = await asyncio.to_thread(teacher.generate_batch, [c[0] for c in chunk], settings, schema)
                        results = [_completion(reply, settings["max_new_tokens"]) for reply in replies]
                        teacher.stats.add(failed=sum(isinstance(reply, ValueError) for reply in replies))
                    except Exception as err:  # noqa: BLE001 - a failed batch becomes statuses, never a crash
                        logger.warning("local teacher: generate failed for %d prompts: %s", len(chunk), err)
                        teacher.stats.add(failed=len(chunk))
                        results = [Completion.failed(f"{type(err).__name__}: {str(err)[:160]}", 1)] * len(chunk)
                    for (*_, future), result in zip(chunk, results):
                        if not future.done():
                            future.set_result(result)


def _completion(reply: tuple[str, bool, dict[str, int]] | ValueError, max_new_tokens: int) -> Completion:
    if isinstance(reply, ValueError):
        return Completion.failed(f"ValueError: {reply}", 1)
    text, hit_limit, usage = reply
    return Completion.reply(text, cut_at=max_new_tokens if hit_limit else None, attempts=1, usage=usage)


def _past_positions(model, prompt_lengths: list[int], max_new_tokens: int) -> dict[int, ValueError]:
    """The prompts (by index) that with ``max_new_tokens`` would pass the positions the teacher holds, each with its
    error: a learned position table has no row there (an IndexError on a CPU; on CUDA a device-side assert that
    would leave every later batch of the process failing too)."""
    limit = models.position_limit(model)
    if limit is None:
        return {}
    name = type(model).__name__
    return {i: ValueError(f"prompt ({n} tokens) + max_new_tokens ({max_new_tokens}) > the {limit} positions {name} "
                          "holds: lower --max-new-tokens" if n < limit else
                          f"the prompt ({n} tokens) fills the {limit} positions {name} holds: the row is too long "
                          "for this teacher")
            for i, n in enumerate(prompt_lengths) if n + max_new_tokens > limit}


def _stop_ids(gen, tokenizer) -> set[int]:
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids


def _generated(row: list[int], stops: set[int]) -> int:
    """The tokens a row generated: up to and including its first end-of-sequence token (after it: padding)."""
    for i, token in enumerate(row):
        if token in stops:
            return i + 1
    return len(row)


def _hit_limit(row: list[int], stops: set[int], max_new_tokens: int) -> bool:
    """Whether a generated row ran to ``max_new_tokens`` without an end-of-sequence token."""
    return len(row) >= max_new_tokens and not stops.intersection(row)
