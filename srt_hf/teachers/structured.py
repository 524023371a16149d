"""Structured output: the ``response_format`` dialects servers speak, and the local teacher's JSON grammar.

    body.update(DIALECTS["json_schema"](schema))     # OpenAI, vLLM, SGLang, llama.cpp, recent TGI
    processor = JSONGrammar(tokenizer, schema, batch_size=8, prompt_length=120)   # LocalTeacher (llguidance)

Servers disagree on how a JSON schema is asked for. ``EndpointTeacher`` tries the dialects below in order
on its first structured request and keeps the first one the server accepts *and* obeys (a reply that is a
JSON object); a server that rejects or ignores them all has no structured output, and the reflections
fall back to the marker layout (``--structured auto``) or stop with an error (``--structured json``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

#: name -> the request-body fields that ask for ``schema``, in the order they are tried.
DIALECTS: dict[str, Callable[[dict], dict[str, Any]]] = {
    "json_schema": lambda schema: {  # OpenAI's dialect
        "response_format": {"type": "json_schema", "json_schema": {"name": "reflection", "schema": schema, "strict": True}}
    },
    "tgi": lambda schema: {"response_format": {"type": "json", "value": schema}},  # TGI's grammar
    "json_object": lambda schema: {"response_format": {"type": "json_object", "schema": schema}},  # llama-cpp-python
    "guided_json": lambda schema: {"guided_json": schema},  # vLLM's guided-decoding field
}
UNSUPPORTED = "unsupported"


def looks_like_json_object(text: str | None) -> bool:
    """Whether a reply is (or, cut off, begins as) a JSON object: how a probe tells an obeyed schema."""
    core = re.sub(r"^\s*```(?:json)?\s*", "", text or "").strip()
    if not core.startswith("{"):
        return False
    try:
        return isinstance(json.loads(core.rstrip("`").strip()), dict)
    except ValueError:
        return True  # cut off mid-object: the server did follow the schema


class JSONGrammar:
    """A transformers logits processor that keeps each row of a batch inside ``schema`` (llguidance).

    One matcher per row; the batch is left-padded, so every row's new tokens start at ``prompt_length``.
    After the object is complete the grammar allows only the end-of-sequence token.
    """

    def __init__(self, tokenizer, schema: dict, *, batch_size: int, prompt_length: int):
        llguidance, lltorch = _llguidance()
        key = id(tokenizer)
        if key not in _LL_TOKENIZERS:
            import llguidance.hf

            _LL_TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer)
        ll_tokenizer = _LL_TOKENIZERS[key]
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        self.matchers = [llguidance.LLMatcher(ll_tokenizer, grammar) for _ in range(batch_size)]
        self.mask = lltorch.allocate_token_bitmask(batch_size, ll_tokenizer.vocab_size)
        self.prompt_length = prompt_length
        self._torch = lltorch
        # Rows' masks on llguidance's thread pool where there are cores for it: measured on 2 busy cores it is
        # 5x slower than one row after another (1.5 ms a step for 32 rows); benchmarks/bench_teacher.py on a GPU host.
        self._executor = _executor(llguidance) if batch_size >= 8 and (os.cpu_count() or 1) >= POOL_MIN_CORES else None

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_length:
            last = input_ids[:, -1].tolist()  # one device-to-host copy per step, not one per row
            live = [(matcher, token) for matcher, token in zip(self.matchers, last) if not matcher.is_stopped()]
            if self._executor is not None and live:
                self._torch.consume_token_par(self._executor, live)
            else:
                for matcher, token in live:
                    matcher.consume_token(token)
        if self._executor is not None:  # the rows' masks on a thread pool: per row, the mask is the grammar's cost
            self._torch.fill_next_token_bitmask_par(self._executor, [(m, row) for row, m in enumerate(self.matchers)], self.mask)
        else:
            for row, matcher in enumerate(self.matchers):
                self._torch.fill_next_token_bitmask(matcher, self.mask, row)
        apply_token_bitmask(scores, self.mask.to(scores.device))
        return scores


def apply_token_bitmask(scores, mask) -> None:
    """Set to -inf, in place, the score of every token whose bit is 0 in llguidance's packed mask.

    ``scores``: (B, V); ``mask``: (B, W) int32, bit ``k`` of word ``w`` for token ``32 w + k``; tokens past ``32 W``
    are never allowed. Plain tensor ops, where ``llguidance.torch.apply_token_bitmask_inplace`` is a ``torch.compile``
    function: that needs a C++ compiler at run time on a CPU, compiles for seconds in every process (5 s cold on 2
    cores), and on torch 2.11 CPU-only hosts it left the next backward pass crashing (a recycle, then training, in
    one process).
    """
    import torch

    shifts = torch.arange(32, dtype=torch.int32, device=mask.device)
    allowed = ((mask.unsqueeze(-1) >> shifts) & 1).view(mask.shape[0], -1)  # (B, 32 W): arithmetic shift, bit 31 too
    vocab = min(scores.shape[1], allowed.shape[1])
    scores[:, :vocab].masked_fill_(allowed[:, :vocab] == 0, float("-inf"))
    scores[:, vocab:] = float("-inf")


POOL_MIN_CORES = 8  # fewer cores: the rows' masks one after another
_EXECUTOR: list = []


def _executor(llguidance):
    """llguidance's thread pool, made once per process."""
    if not _EXECUTOR:
        _EXECUTOR.append(llguidance.LLExecutor())
    return _EXECUTOR[0]


_LL_TOKENIZERS: dict[int, Any] = {}


def _llguidance():
    try:
        import llguidance
        import llguidance.torch as lltorch
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError(
            "Structured output on a local teacher needs llguidance: pip install \"srt-hf[structured]\" "
            "(or pass --structured off to use the marker layout)."
        ) from None
    return llguidance, lltorch


def available_locally() -> bool:
    """Whether the local teacher can constrain decoding (llguidance is installed)."""
    try:
        _llguidance()
    except Exception:  # noqa: BLE001 - any import problem means no
        return False
    return True
