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

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_length:
            for row, matcher in enumerate(self.matchers):
                if not matcher.is_stopped():
                    matcher.consume_token(int(input_ids[row, -1]))
        for row, matcher in enumerate(self.matchers):
            self._torch.fill_next_token_bitmask(matcher, self.mask, row)
        self._torch.apply_token_bitmask_inplace(scores, self.mask.to(scores.device))
        return scores


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
