"""The plan: one row's texts, token ids and labelled positions under a preset, as :class:`~srt_hf.student.spans.Span` s.

    enc = Encoder(tokenizer)
    plan = plan_row(example, enc, preset, max_length=2048, rifd=True)   # a RowPlan, or the row's status
    spans = plan.spans()                                                   # A_cond, A_direct (, Q_cond, Q_direct)
    plans = plan_rows(examples, enc, preset, 2048, True)                 # the same, texts tokenized in one call

What each reference script scores for a row: the preset's prompt texts, each pass truncated as
``tokenizer.encode(text, truncation=True, max_length=...)`` does, labels from the *last* occurrence of
the target text. No model here: engines turn spans into losses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..formats import Example, RowProblem, user_content
from ..status import INVALID, SKIPPED, make
from ..templates import REVERSE_INSTRUCTION, Preset, format_prompt, format_reverse_prompt
from .spans import Span


def plan_row(ex: Example | RowProblem, enc: Encoder, preset: Preset, max_length: int, rifd: bool) -> RowPlan | str:
    """The spans of one row under ``preset`` (the reference scripts' texts and truncation), or its status."""
    if isinstance(ex, RowProblem):
        return make(INVALID, ex)
    if not ex.instruction.strip():
        return make(INVALID, "empty instruction")
    if not ex.response.strip():
        return make(SKIPPED, "empty response")
    L = max_length
    plan = RowPlan()
    if preset.name == "chat":
        prompt = enc.chat_prompt(ex.context)
        empty = enc.chat_prompt([{"role": "user", "content": ""}])
        plan.prompt_len = min(len(enc(prompt)), L)
        plan.add(enc, "A_cond", prompt + ex.response, ex.response, L)
        plan.add(enc, "A_direct", empty + ex.response, ex.response, L)
        if rifd:
            question = user_content(ex.instruction, ex.input)
            reverse = enc.chat_prompt([{"role": "user", "content": _reverse_request(ex.response)}])
            plan.add(enc, "Q_cond", reverse + question, question, L)
            plan.add(enc, "Q_direct", empty + question, question, L)
        return plan
    template = preset.template
    prompt = format_prompt(template, ex.instruction, ex.input)
    plan.prompt_len = min(len(enc(prompt)), L)
    plan.add(enc, "A_cond", prompt + ex.response, ex.response, L)
    direct_budget = L - plan.prompt_len + preset.direct_budget_offset
    plan.add(enc, "A_direct", preset.direct_prefix + ex.response, ex.response, direct_budget)
    if rifd:
        reverse = format_reverse_prompt(template, ex.response)
        reverse_len = min(len(enc(reverse)), L)
        plan.add(enc, "Q_cond", reverse + ex.instruction + ex.input, ex.instruction, L)
        question = ex.instruction + ex.input
        plan.add(enc, "Q_direct", question, question, L - reverse_len + 1)
    return plan


def plan_rows(examples: Sequence[Example | RowProblem], enc: Encoder, preset: Preset, max_length: int,
              rifd: bool) -> list[RowPlan | str]:
    """:func:`plan_row` for every example, with all their texts tokenized first in one batch call.

    One call per text costs the tokenizer's per-call overhead thousands of times and keeps its Rust threads idle;
    on a GPU that scores hundreds of rows a second, tokenizing text by text would set the pace. The texts a row
    needs do not depend on token counts, so a first pass records them (:meth:`Encoder.recording`) and the second
    plans from the filled cache: one plan, written once.
    """
    with enc.recording() as texts:
        for ex in examples:
            plan_row(ex, enc, preset, max_length, rifd)
    enc.prefetch(texts)
    return [plan_row(ex, enc, preset, max_length, rifd) for ex in examples]


def _reverse_request(response: str) -> str:
    return REVERSE_INSTRUCTION.format_map({"response": response})


@dataclass
class RowPlan:
    prompt_len: int = 0
    A_cond: Span | None = None
    A_direct: Span | None = None
    Q_cond: Span | None = None
    Q_direct: Span | None = None
    cut: set[str] = field(default_factory=set)  # the spans whose text was cut at its token budget

    def add(self, enc: Encoder, name: str, text: str, target: str, max_length: int) -> None:
        """Set span ``name`` (``enc.span``), noting whether its text was cut."""
        setattr(self, name, enc.span(text, target, max_length, name))
        if len(enc(text)) > max_length:
            self.cut.add(name)

    def names(self) -> list[str]:
        return [n for n in ("A_cond", "A_direct", "Q_cond", "Q_direct") if getattr(self, n) is not None]

    def spans(self) -> list[Span]:
        return [getattr(self, n) for n in self.names()]


class Encoder:
    """Tokenizes like ``tokenizer.encode(text, truncation=True, max_length=m)``, memoised per batch."""

    def __init__(self, tokenizer, chat: bool = False):
        self.tokenizer = tokenizer
        # Chat prompts already hold their special tokens as text.
        self.add_special = not chat
        self._cache: dict[str, tuple[int, ...]] = {}
        self._chat: dict[str, str] = {}
        self._recorded: list[str] | None = None  # texts asked for while recording (ids not computed)
        probe = tokenizer("", add_special_tokens=self.add_special)["input_ids"]
        with_text = tokenizer("a", add_special_tokens=self.add_special)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        self.head = len(probe) if with_text[: len(probe)] == probe else 0
        self.tail = len(with_text) - len(plain) - self.head

    def __call__(self, text: str) -> tuple[int, ...]:
        ids = self._cache.get(text)
        if ids is None and self._recorded is not None:
            self._recorded.append(text)
            return ()
        if ids is None:
            ids = tuple(self.tokenizer(text, add_special_tokens=self.add_special)["input_ids"])
            self._cache[text] = ids
        return ids

    @contextmanager
    def recording(self) -> Iterator[list[str]]:
        """Within the block, texts not yet tokenized are collected in the yielded list and stand as no tokens."""
        self._recorded = recorded = []
        try:
            yield recorded
        finally:
            self._recorded = None

    def prefetch(self, texts: Sequence[str]) -> None:
        """Tokenize the texts not cached yet in one batch call (ids as one call per text gives them)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            batch = self.tokenizer(todo, add_special_tokens=self.add_special)["input_ids"]
            self._cache.update(zip(todo, map(tuple, batch)))

    def truncate(self, ids: tuple[int, ...], max_length: int) -> tuple[int, ...]:
        if len(ids) <= max_length:
            return ids
        keep = max(max_length - self.head - self.tail, 0)
        return ids[: self.head + keep] + ids[len(ids) - self.tail :] if self.tail else ids[: self.head + keep]

    def span(self, text: str, target: str, max_length: int, group: str) -> Span:
        """The reference labelling: tokens before the *last* occurrence of ``target`` are masked."""
        ids = self.truncate(self(text), max_length)
        start = len(self(text[: text.rfind(target)]))
        return Span(ids, start, group)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("The student has no chat template; set `preset` to 'reflection', 'cherry' or 'superfiltering'.")
        key = json.dumps(messages, sort_keys=True)
        if key not in self._chat:  # plan_rows renders each row's prompts twice
            self._chat[key] = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self._chat[key]
