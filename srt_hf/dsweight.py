"""DS weight with self-consistency: which self-generated answers a model should learn from (docs/ARCHITECTURE.md).

For self-improvement the model answers each question K times. Candidates whose final answer agrees
with the majority vote (self-consistency) are kept, minus those the base model finds too far from
its own distribution:

* ``loss`` — the base model's mean token cross-entropy of the candidate's answer text given its
  question, under a text template (default ``"Question: {question}\\nAnswer: {answer}"``; ``"chat"``
  renders the question with the model's chat template and the answer as the assistant turn). The
  answer tokens are every token that covers a character of the answer; the text ends with the
  answer (nothing after ``{answer}`` is scored), and no EOS is added.
* ``w = clip(mean_valid_loss / loss, 0, 2)`` — ``mean_valid_loss`` is the same loss averaged over a
  small labelled valid set (~5% of the train size); ``w = 0`` when ``loss = 0``.
* ``d = w if w > 1 else min(1 / w, 5)`` — how far the candidate is from the valid data, either way.
* Among the majority-consistent candidates, those with ``d`` at or below the ``quantile`` (0.79, as
  in the reference scripts) of their ``d`` values are kept. A majority needs ``min_votes`` agreeing
  answers (default 2: with every answer different there is no consensus to learn from; 1 gives a
  plain plurality vote).

Every candidate row carries its extracted answer, the vote, ``loss``, ``w``, ``d``, ``selected`` and a
``selection_reason``. Everything is deterministic: the same candidates give the same decisions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Sequence

import numpy as np

from . import models
from .errors import ConfigError, InputError

DEFAULT_TEMPLATE = "Question: {question}\nAnswer: {answer}"
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


# ------------------------------------------------------------------------------------------------
# Answers and the vote


def extract_last_number(text: str | None) -> str | None:
    """The last number in ``text``, normalised (``"1,200.50"`` → ``"1200.5"``, ``"-0"`` → ``"0"``), else None."""
    if not text:
        return None
    for raw in reversed(_NUMBER.findall(text)):
        try:
            value = Decimal(raw.replace(",", "").lstrip("+"))
        except InvalidOperation:
            continue
        if value == 0:
            return "0"
        out = format(value.normalize(), "f")
        return out
    return None


@dataclass
class Vote:
    """Self-consistency over one question's candidates."""

    answers: list[str | None]  # the extracted answer of each candidate (None: none found)
    majority: str | None  # the most common answer (ties: the one that appeared first); None below min_votes
    votes: int  # candidates giving the majority answer
    answered: int  # candidates with an answer

    @property
    def agree(self) -> list[bool]:
        return [a is not None and a == self.majority for a in self.answers]


def self_consistency(
    candidates: Sequence[str | None],
    extract_answer: Callable[[str | None], str | None] = extract_last_number,
    min_votes: int = 1,
) -> Vote:
    """Majority vote over the final answers of ``candidates`` (unanswered candidates do not vote).

    The most common answer wins (ties: the one that appeared first); it is no majority (None) when
    fewer than ``min_votes`` candidates give it.
    """
    answers = [extract_answer(c) for c in candidates]
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return Vote(answers, None, 0, 0)
    top = max(counts.values())
    majority = next(a for a in answers if a is not None and counts[a] == top)  # first to appear among the tied
    return Vote(answers, majority if top >= min_votes else None, top, sum(counts.values()))


# ------------------------------------------------------------------------------------------------
# Weights


def ds_weights(losses: Sequence[float], mean_valid_loss: float, max_weight: float = 2.0) -> np.ndarray:
    """``w = clip(mean_valid_loss / loss, 0, max_weight)``; 0 where loss is 0; NaN where loss is NaN."""
    loss = np.asarray(losses, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.clip(mean_valid_loss / loss, 0.0, max_weight)
    w[loss == 0] = 0.0
    w[~np.isfinite(loss)] = np.nan
    return w


def ds_distance(w: Sequence[float], max_d: float = 5.0) -> np.ndarray:
    """``d = w if w > 1 else min(1 / w, max_d)`` (``w = 0`` gives ``max_d``); NaN stays NaN."""
    w = np.asarray(w, dtype=float)
    with np.errstate(divide="ignore"):
        inverse = np.minimum(np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), np.inf), max_d)
    return np.where(np.isnan(w), np.nan, np.where(w > 1, w, inverse))


# ------------------------------------------------------------------------------------------------
# Base-model losses


@dataclass
class DSWeightConfig:
    """How DS weights are computed and applied."""

    model: str | None = field(default="default", metadata={"help": "Base model scoring the losses: 'default', a Hub id, a local directory or a .gguf file."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the base model."})
    template: str = field(default=DEFAULT_TEMPLATE, metadata={"help": "Text template with {question} and {answer} (nothing after {answer} is scored), or 'chat' for the model's chat template."})
    quantile: float = field(default=0.79, metadata={"help": "Keep majority-consistent candidates whose d is at or below this quantile of their d values."})
    min_votes: int = field(default=2, metadata={"help": "Answers that must agree for a majority (1: plain plurality)."})
    max_weight: float = field(default=2.0, metadata={"help": "Upper clip of w = mean_valid_loss / loss."})
    max_d: float = field(default=5.0, metadata={"help": "Upper cap of d = 1 / w for w <= 1."})
    max_length: int = field(default=1024, metadata={"help": "Tokens per scored text (the end is cut)."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype while scoring."})
    device: str | None = field(default=None, metadata={"help": "Device. Default: cuda when available, else cpu."})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "Tokens per forward pass. Default: 4096 on CPU, 65536 on GPU."})

    def __post_init__(self) -> None:
        if self.template != "chat" and ("{question}" not in self.template or "{answer}" not in self.template):
            raise ConfigError(f"DS weight `template` must contain {{question}} and {{answer}} (or be 'chat'), got {self.template!r}.")
        if not 0 <= self.quantile <= 1:
            raise ConfigError(f"DS weight `quantile` is between 0 and 1, got {self.quantile}.")
        if self.min_votes < 1:
            raise ConfigError(f"DS weight `min_votes` is at least 1, got {self.min_votes}.")

    def digest(self) -> str:
        state = {k: v for k, v in asdict(self).items() if k not in ("device", "max_batch_tokens")}
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


class AnswerLoss(models.LazyModel):
    """The base model's mean cross-entropy of answer texts given their questions (lazy model)."""

    def __init__(self, config: DSWeightConfig | None = None, **kwargs: Any):
        self.config = config or DSWeightConfig(**kwargs)

    def _model_settings(self):
        return self.config.model, self.config.revision, self.config.dtype, self.config.device

    def _check_tokenizer(self, tokenizer) -> None:
        if self.config.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("DS weight template 'chat' needs a model with a chat template; use a text template instead.")

    def prefix(self, question: str) -> str:
        """The text before the answer."""
        if self.config.template == "chat":
            return self.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
        head = self.config.template.split("{answer}", 1)[0]
        return head.replace("{question}", question)

    def span(self, question: str, answer: str):
        """The token ids of prefix + answer and the first answer token (a :class:`srt_hf.span_loss.Span`)."""
        from .span_loss import Span

        prefix = self.prefix(question)
        text = prefix + answer
        add_special = self.config.template != "chat"  # a chat prompt holds its special tokens as text
        tok = self.tokenizer
        if getattr(tok, "is_fast", False):
            enc = tok(text, add_special_tokens=add_special, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            start = next((i for i, (a, b) in enumerate(offsets) if b > len(prefix) and b > a), len(ids))
        else:
            ids = tok(text, add_special_tokens=add_special)["input_ids"]
            start = len(tok(prefix, add_special_tokens=add_special)["input_ids"])
        return Span(tuple(ids[: self.config.max_length]), start, "ds")

    def __call__(self, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Mean answer-token loss per (question, answer); NaN where no answer token is left."""
        from .span_loss import span_losses

        if len(questions) != len(answers):
            raise InputError(f"{len(questions)} questions but {len(answers)} answers", fix="pass one answer per question")
        spans = [self.span(q or "", a or "") for q, a in zip(questions, answers)]
        model = self.model
        budget = self.config.max_batch_tokens or (65536 if model.device.type == "cuda" else 4096)
        return span_losses(model, spans, max_batch_tokens=budget)


# ------------------------------------------------------------------------------------------------
# The filter


@dataclass
class DSDecisions:
    """Per-candidate columns of the DS-weight filter, plus the quantile threshold and the mean valid loss."""

    columns: dict[str, list]
    threshold: float | None
    mean_valid_loss: float

    @property
    def selected(self) -> list[bool]:
        return self.columns["selected"]


def ds_weight_decisions(
    groups: Sequence[Any],
    candidates: Sequence[str | None],
    losses: Sequence[float],
    mean_valid_loss: float,
    *,
    extract_answer: Callable[[str | None], str | None] = extract_last_number,
    quantile: float = 0.79,
    max_weight: float = 2.0,
    max_d: float = 5.0,
    min_votes: int = 2,
) -> DSDecisions:
    """Vote per group (question), weigh, and keep majority-consistent candidates with ``d`` <= the quantile.

    ``groups[i]`` names the question of candidate ``i``; ``losses[i]`` is its base-model loss.
    """
    n = len(candidates)
    if not (len(groups) == len(losses) == n):
        raise InputError(f"{len(groups)} groups, {n} candidates and {len(losses)} losses", fix="pass one of each per candidate")
    if not math.isfinite(mean_valid_loss) or mean_valid_loss <= 0:
        raise InputError(f"the mean valid loss is {mean_valid_loss}", fix="the valid set needs at least one answer with a positive loss")
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    answer: list[str | None] = [None] * n
    majority: list[str | None] = [None] * n
    votes, answered = [0] * n, [0] * n
    for rows in members.values():
        vote = self_consistency([candidates[i] for i in rows], extract_answer, min_votes)
        for j, i in enumerate(rows):
            answer[i], majority[i], votes[i], answered[i] = vote.answers[j], vote.majority, vote.votes, vote.answered
    consistent = [a is not None and a == m for a, m in zip(answer, majority)]
    w = ds_weights(losses, mean_valid_loss, max_weight)
    d = ds_distance(w, max_d)
    pool = [i for i in range(n) if consistent[i] and np.isfinite(d[i])]
    threshold = float(np.quantile(d[pool], quantile)) if pool else None
    in_pool = set(pool)
    selected = [i in in_pool and d[i] <= threshold for i in range(n)] if pool else [False] * n
    reasons = []
    for i in range(n):
        tally = f"{votes[i]}/{len(members[groups[i]])} votes"
        if answer[i] is None:
            reasons.append("dropped: no final numeric answer")
        elif majority[i] is None:
            reasons.append(f"dropped: no majority answer (the most common answer has {tally}, {min_votes} needed)")
        elif not consistent[i]:
            reasons.append(f"dropped: disagrees with the majority answer (answer {answer[i]}, majority {majority[i]}, {tally})")
        elif not np.isfinite(d[i]):
            reasons.append("dropped: no answer token to score (loss is missing)")
        elif selected[i]:
            reasons.append(f"kept: majority answer, d within the {quantile:g} quantile (answer {answer[i]}, {tally}, d={d[i]:.3f} <= {threshold:.3f})")
        else:
            reasons.append(f"dropped: d above the {quantile:g} quantile of consistent candidates (d={d[i]:.3f} > {threshold:.3f})")
    columns = {
        "answer": answer, "majority_answer": majority, "votes": votes, "answered": answered, "consistent": consistent,
        "loss": [float(v) for v in np.asarray(losses, dtype=float)], "w": [float(v) for v in w], "d": [float(v) for v in d],
        "selected": [bool(s) for s in selected], "selection_reason": reasons,
    }
    return DSDecisions(columns, threshold, float(mean_valid_loss))


def ds_weight_filter(
    candidates,
    valid,
    config: DSWeightConfig | None = None,
    *,
    question_column: str = "question",
    response_column: str = "response",
    group_column: str | None = None,
    valid_question_column: str = "question",
    valid_answer_column: str = "solution",
    extract_answer: Callable[[str | None], str | None] = extract_last_number,
    scorer: AnswerLoss | None = None,
):
    """The DS-weight filter on ``datasets.Dataset`` s: returns ``(candidates with the decision columns, DSDecisions)``.

    ``candidates``: one row per sampled answer (``question_column``, ``response_column``; candidates of
    a question share ``group_column``, default the question text). ``valid``: labelled rows
    (``valid_question_column``, ``valid_answer_column``) for the mean valid loss.
    """
    from .selection import with_decisions

    config = config or DSWeightConfig()
    for ds, cols, what in ((candidates, (question_column, response_column, group_column), "candidates"),
                           (valid, (valid_question_column, valid_answer_column), "valid set")):
        for c in cols:
            if c and c not in ds.column_names:
                raise InputError(f"the {what} have no column {c!r} (they have {ds.column_names})", column=c,
                                 fix="name the right column (question / response / group / valid columns)")
    scorer = scorer or AnswerLoss(config)
    valid_losses = scorer(valid[valid_question_column], valid[valid_answer_column])
    finite = valid_losses[np.isfinite(valid_losses)]
    if not len(finite):
        raise InputError("no valid-set answer could be scored", fix="check the valid set's answer column and max_length")
    losses = scorer(candidates[question_column], candidates[response_column])
    decisions = ds_weight_decisions(
        candidates[group_column or question_column], candidates[response_column], losses, float(finite.mean()),
        extract_answer=extract_answer, quantile=config.quantile, max_weight=config.max_weight, max_d=config.max_d,
        min_votes=config.min_votes,
    )
    cols = dict(decisions.columns)
    selected, reasons = cols.pop("selected"), cols.pop("selection_reason")
    return with_decisions(candidates, selected, reasons, cols), decisions
