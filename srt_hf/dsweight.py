"""DS weight with self-consistency: which self-generated answers a model should learn from (docs/ARCHITECTURE.md).

    table, decisions = ds_weight_filter(candidates, valid, DSWeightConfig())   # the reference's rules
    table, decisions = ds_weight_filter(candidates, valid, DSWeightConfig(**SRT_HF_VARIANT))  # srt_hf's own

For self-improvement the model answers each question K times. Candidates whose final answer agrees
with the majority vote (self-consistency) are kept, minus those the base model finds too far from
its own distribution. The defaults follow the reference code (rubickkcibur/IWSI, the ``K-Mixed``
mode of its ``baseline.sh``, ``--uncertainty_th 0.79``); each has a documented alternative:

* **Final answer** (``answer_extraction``). ``answer_is`` (default): lower-case the text, take what
  follows the last "the answer is" (the whole text when it has none), then what follows the last "="
  in that, and read its first unsigned number (commas removed) as ``int(float(x))``: "3.7" gives "3".
  ``last_number``: the last signed number of the text, exact (``"1,200.50"`` → ``"1200.5"``).
* **Vote** (``min_votes``). The most common answer wins (ties: the one that appeared first); with the
  default 1 a lone answer is a majority, as in the reference; 2 asks for two agreeing answers.
* **Loss.** The base model's mean token cross-entropy of the text ``template`` renders
  (``{question}``, ``{answer}``, and ``{eos}`` for the tokenizer's EOS token; nothing after
  ``{answer}`` is used), tokenized with the tokenizer's special tokens and cut after ``max_length``
  tokens (400, the reference's). ``loss_tokens="text"`` (default) scores every token after the first
  — the reference scores ``"Q: " + question + "\nA: " + eos + answer`` whole, question included;
  ``"answer"`` scores only the tokens that cover a character of the answer. ``template="chat"``
  renders the question with the model's chat template (its special tokens are text there).
* ``w = clip(mean_valid_loss / loss, 0, 2)`` — ``mean_valid_loss`` is the same loss averaged over a
  small labelled valid set (~5% of the train size); ``w = 0`` when ``loss = 0``.
* ``d = w if w > 1 else min(1 / w, 5)`` — how far the candidate is from the valid data, either way.
* **Pool and threshold.** The pool is the majority-consistent candidates with ``w > 0``
  (``zero_weight_in_pool=True`` lets ``w = 0``, i.e. ``d = 5``, in). ``threshold_rule="rank"``
  (default): ``th = sorted(d)[int(N · quantile)]`` over the pool's N values and a candidate is kept
  iff ``d < th`` — so every candidate tied at ``th`` is dropped; with ``int(N · quantile) = N``
  (``quantile = 1``) all are kept. ``"quantile"``: ``th = np.quantile(d, quantile)`` (linear
  interpolation) and ``d <= th`` is kept.

Not reproduced, on purpose: the reference computes its losses in bfloat16 on batches left-padded to
400 tokens, where the first token is also "scored" from the logits of a pad position (whose attention
is fully masked, so its value depends on the attention kernel); srt_hf scores each token from the
tokens before it, in ``dtype`` (float32 by default). Its answers are taken as given (the reference
rewrites the sampled text after "the answer is" before scoring).

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

DEFAULT_TEMPLATE = "Q: {question}\nA: {eos}{answer}"  # the reference's text (IWSI record_loss.py)
ANSWER_TEMPLATE = "Question: {question}\nAnswer: {answer}"  # srt_hf's variant, scored on the answer tokens
LOSS_TOKENS = ("text", "answer")
THRESHOLD_RULES = ("rank", "quantile")
ANSWER_EXTRACTIONS = ("answer_is", "last_number")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_UNSIGNED = re.compile(r"\d+\.?\d*")


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


def extract_answer_is(text: str | None) -> str | None:
    """The reference's final answer: the first number after the last "the answer is", then after the last "=".

    Lower-cased, commas removed, read as ``int(float(x))`` (``"3.7"`` → ``"3"``; no sign is read);
    None when nothing is left or the number has more than 30 characters.
    """
    if not text:
        return None
    tail = text.lower().split("the answer is")[-1].strip()
    if "=" in tail:
        tail = tail.split("=")[-1].strip()
    found = _UNSIGNED.search(tail.replace(",", ""))
    if found is None or len(found.group()) > 30:
        return None
    return str(int(float(found.group())))


ANSWER_EXTRACTORS: dict[str, Callable[[str | None], str | None]] = {
    "answer_is": extract_answer_is,
    "last_number": extract_last_number,
}


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
    extract_answer: Callable[[str | None], str | None] = extract_answer_is,
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
    """How DS weights are computed and applied. The defaults follow the reference code (see the module docstring)."""

    model: str | None = field(default="default", metadata={"help": "Base model scoring the losses: 'default', a Hub id, a local directory or a .gguf file."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the base model."})
    template: str = field(default=DEFAULT_TEMPLATE, metadata={"help": "Text template with {question} and {answer} (and {eos}: the tokenizer's EOS token; nothing after {answer} is used), or 'chat' for the model's chat template. Default: the reference's."})
    loss_tokens: str = field(default="text", metadata={"help": "Tokens the loss averages: 'text' (every token after the first, question included, as the reference) or 'answer' (the answer's tokens only)."})
    answer_extraction: str = field(default="answer_is", metadata={"help": "Final answer: 'answer_is' (the reference's: first number after the last 'the answer is', then after the last '=', as int(float(x))) or 'last_number' (the last number, exact)."})
    quantile: float = field(default=0.79, metadata={"help": "Share of the pool's d values the threshold sits at (0.79 as in the reference scripts)."})
    threshold_rule: str = field(default="rank", metadata={"help": "'rank' (the reference's: th = sorted(d)[int(N*quantile)], keep d < th) or 'quantile' (th = numpy's interpolated quantile, keep d <= th)."})
    min_votes: int = field(default=1, metadata={"help": "Answers that must agree for a majority (1: plain plurality, as the reference; 2: a lone answer is no majority)."})
    zero_weight_in_pool: bool = field(default=False, metadata={"help": "Let candidates with w = 0 (loss 0) into the pool as d = max_d (the reference leaves them out)."})
    max_weight: float = field(default=2.0, metadata={"help": "Upper clip of w = mean_valid_loss / loss."})
    max_d: float = field(default=5.0, metadata={"help": "Upper cap of d = 1 / w for w <= 1."})
    max_length: int = field(default=400, metadata={"help": "Tokens per scored text, from the start (400: the reference's model_max_length)."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype while scoring."})
    device: str | None = field(default=None, metadata={"help": "Device. Default: cuda when available, else cpu."})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "Tokens per forward pass. Default: 4096 on CPU, 65536 on GPU."})

    def __post_init__(self) -> None:
        if self.template != "chat" and ("{question}" not in self.template or "{answer}" not in self.template):
            raise ConfigError(f"DS weight `template` must contain {{question}} and {{answer}} (or be 'chat'), got {self.template!r}.")
        for name, allowed in (("loss_tokens", LOSS_TOKENS), ("threshold_rule", THRESHOLD_RULES), ("answer_extraction", ANSWER_EXTRACTIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"DS weight `{name}` is one of {', '.join(allowed)}; got {getattr(self, name)!r}.")
        if not 0 <= self.quantile <= 1:
            raise ConfigError(f"DS weight `quantile` is between 0 and 1, got {self.quantile}.")
        if self.min_votes < 1:
            raise ConfigError(f"DS weight `min_votes` is at least 1, got {self.min_votes}.")
        if self.max_length < 2:
            raise ConfigError(f"DS weight `max_length` is at least 2 tokens, got {self.max_length}.")

    def digest(self) -> str:
        state = {k: v for k, v in asdict(self).items() if k not in ("device", "max_batch_tokens")}
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]

    def rule(self) -> dict[str, Any]:
        """The settings that decide what is kept (for run.json and the card)."""
        names = ("template", "loss_tokens", "answer_extraction", "quantile", "threshold_rule", "min_votes",
                 "zero_weight_in_pool", "max_weight", "max_d", "max_length", "dtype")
        return {name: getattr(self, name) for name in names}


# The choices srt_hf made before its defaults followed the reference: the answer's tokens after
# "Question: …\nAnswer: ", two agreeing answers, numpy's quantile with d <= th, w = 0 in the pool,
# the exact last number. ``DSWeightConfig(**SRT_HF_VARIANT)``.
SRT_HF_VARIANT: dict[str, Any] = {
    "template": ANSWER_TEMPLATE, "loss_tokens": "answer", "min_votes": 2, "threshold_rule": "quantile",
    "zero_weight_in_pool": True, "answer_extraction": "last_number", "max_length": 1024,
}


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
        if "{eos}" in head:
            eos = self.tokenizer.eos_token
            if not eos:
                raise ConfigError("The DS weight template names {eos} but the model's tokenizer has no EOS token; drop {eos} from the template.")
            head = head.replace("{eos}", eos)
        return head.replace("{question}", question)

    def token_limit(self) -> int:
        """``max_length``, checked against the model's positions (past them: an error naming the fix)."""
        return models.within_positions(self.model, self.config.max_length, setting="DS weight `max_length` (--max-length)", explicit=True)

    def span(self, question: str, answer: str):
        """The token ids of prefix + answer and the first scored token (a :class:`srt_hf.student.spans.Span`).

        ``loss_tokens="text"``: every token after the first; ``"answer"``: the first token that covers a
        character of the answer onwards.
        """
        from .student.spans import Span

        prefix = self.prefix(question)
        text = prefix + answer
        add_special = self.config.template != "chat"  # a chat prompt holds its special tokens as text
        tok = self.tokenizer
        if self.config.loss_tokens == "text":
            ids = tok(text, add_special_tokens=add_special)["input_ids"]
            return Span(tuple(ids[: self.token_limit()]), 0, "ds")
        if getattr(tok, "is_fast", False):
            enc = tok(text, add_special_tokens=add_special, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            start = next((i for i, (a, b) in enumerate(offsets) if b > len(prefix) and b > a), len(ids))
        else:
            ids = tok(text, add_special_tokens=add_special)["input_ids"]
            start = len(tok(prefix, add_special_tokens=add_special)["input_ids"])
        return Span(tuple(ids[: self.token_limit()]), start, "ds")

    def __call__(self, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Mean loss per (question, answer) over the ``loss_tokens``; NaN where no such token is left."""
        from .student.engines import span_losses

        if len(questions) != len(answers):
            raise InputError(f"{len(questions)} questions but {len(answers)} answers", fix="pass one answer per question")
        spans = [self.span(q or "", a or "") for q, a in zip(questions, answers)]
        return span_losses(self.model, spans, max_batch_tokens=self.config.max_batch_tokens)


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
    extract_answer: Callable[[str | None], str | None] = extract_answer_is,
    quantile: float = 0.79,
    max_weight: float = 2.0,
    max_d: float = 5.0,
    min_votes: int = 1,
    threshold_rule: str = "rank",
    zero_weight_in_pool: bool = False,
) -> DSDecisions:
    """Vote per group (question), weigh, and keep the majority-consistent candidates whose ``d`` passes the threshold.

    ``groups[i]`` names the question of candidate ``i``; ``losses[i]`` is its base-model loss. The
    defaults are the reference's rules (module docstring): a plain plurality vote, a pool without
    ``w = 0``, ``th = sorted(d)[int(N · quantile)]`` and ``d < th``.
    """
    n = len(candidates)
    if not (len(groups) == len(losses) == n):
        raise InputError(f"{len(groups)} groups, {n} candidates and {len(losses)} losses", fix="pass one of each per candidate")
    if not math.isfinite(mean_valid_loss) or mean_valid_loss <= 0:
        raise InputError(f"the mean valid loss is {mean_valid_loss}", fix="the valid set needs at least one answer with a positive loss")
    if threshold_rule not in THRESHOLD_RULES:
        raise ConfigError(f"DS weight `threshold_rule` is one of {', '.join(THRESHOLD_RULES)}; got {threshold_rule!r}.")
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
    pool = [i for i in range(n) if consistent[i] and np.isfinite(d[i]) and (zero_weight_in_pool or w[i] > 0)]
    threshold = _threshold(d[pool], quantile, threshold_rule) if pool else None
    in_pool = set(pool)
    strict = threshold_rule == "rank"
    selected = [i in in_pool and (d[i] < threshold if strict else d[i] <= threshold) for i in range(n)]
    kept_sign, dropped_sign = ("<", ">=") if strict else ("<=", ">")
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
            reasons.append("dropped: no token to score (loss is missing)")
        elif i not in in_pool:
            reasons.append(f"dropped: weight 0, left out of the d pool (loss {float(losses[i]):g})")
        elif selected[i]:
            reasons.append(f"kept: majority answer, d within the {quantile:g} threshold "
                           f"(answer {answer[i]}, {tally}, d={d[i]:.3f} {kept_sign} {threshold:.3f})")
        else:
            reasons.append(f"dropped: d beyond the {quantile:g} threshold of consistent candidates "
                           f"(d={d[i]:.3f} {dropped_sign} {threshold:.3f})")
    columns = {
        "answer": answer, "majority_answer": majority, "votes": votes, "answered": answered, "consistent": consistent,
        "loss": [float(v) for v in np.asarray(losses, dtype=float)], "w": [float(v) for v in w], "d": [float(v) for v in d],
        "selected": [bool(s) for s in selected], "selection_reason": reasons,
    }
    return DSDecisions(columns, threshold, float(mean_valid_loss))


def _threshold(d: np.ndarray, quantile: float, rule: str) -> float:
    """``rank``: the value at position ``int(N · quantile)`` of the sorted pool (inf past the end: all are kept);
    ``quantile``: numpy's linearly interpolated quantile."""
    if rule == "quantile":
        return float(np.quantile(d, quantile))
    k = int(len(d) * quantile)  # the reference's int(len · q), float rounding included
    return float(np.sort(d)[k]) if k < len(d) else math.inf


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
    extract_answer: Callable[[str | None], str | None] | None = None,
    scorer: AnswerLoss | None = None,
):
    """The DS-weight filter on ``datasets.Dataset`` s: returns ``(candidates with the decision columns, DSDecisions)``.

    ``candidates``: one row per sampled answer (``question_column``, ``response_column``; candidates of
    a question share ``group_column``, default the question text). ``valid``: labelled rows
    (``valid_question_column``, ``valid_answer_column``) for the mean valid loss. ``extract_answer``
    overrides ``config.answer_extraction`` with a function of your own.
    """
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
        extract_answer=extract_answer or ANSWER_EXTRACTORS[config.answer_extraction], quantile=config.quantile,
        max_weight=config.max_weight, max_d=config.max_d, min_votes=config.min_votes, threshold_rule=config.threshold_rule,
        zero_weight_in_pool=config.zero_weight_in_pool,
    )
    from .dataio import with_columns  # not srt_hf.selection: its DS-weight method imports this module

    cols = dict(decisions.columns)
    front = {"selected": cols.pop("selected"), "selection_reason": cols.pop("selection_reason")}
    return with_columns(candidates, {**front, **cols}, {"selected": "bool", "selection_reason": "string"}), decisions
