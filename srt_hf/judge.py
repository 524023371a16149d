"""Pairwise judging, the papers' way: a judge scores two answers, in both orders, and the two verdicts decide.

    messages = judge_messages(question, answer_a, answer_b)          # A shown first
    verdict = parse_verdict("8 6\\nAnswer 1 is more complete.")      # Verdict(score_1=8.0, score_2=6.0, status='ok')
    result_ab = order_result(verdict, a_position=1)                   # 'win' (for A)
    outcome = combine(result_ab, order_result(verdict_ba, a_position=2))

The rule (Reflection-Tuning, Selective Reflection-Tuning and Cherry LLM all evaluate this way): the judge
sees the pair twice, once with A first and once with B first, and scores each answer from 1 to 10. Each
order gives A a win (higher score), a tie (equal) or a loss. Together:

* **win** — A wins both orders, or wins one and ties the other;
* **tie** — both orders tie, or A wins one and loses the other (the judge only followed the position);
* **loss** — A loses both orders, or loses one and ties the other.

So a judge that always prefers the first (or second) answer produces ties, not wins: position bias
cancels. The winning score is ``(wins - losses) / judged + 1`` (above 1: A is better).

Verdicts are read from text: a JSON object (``{"score_1": 8, "score_2": 6}``, what a judge constrained to
:data:`VERDICT_SCHEMA` answers), else the first line holding two numbers (``8 6``, ``8/10, 6/10``),
else labelled scores anywhere (``Answer 1: 8`` … ``Answer 2: 6``). Anything else is ``parse_failed``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .status import OK, PARSE_FAILED, make

PROMPT = Path(__file__).parent / "prompts" / "pairwise_judge.jinja"
WIN, TIE, LOSS = "win", "tie", "loss"
OUTCOMES = (WIN, TIE, LOSS)
SCORE_RANGE = (0.0, 10.0)

#: The verdict as a JSON schema: the review first (the judge reasons before it scores), then both scores.
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "review": {"type": "string"},
        "score_1": {"type": "number", "minimum": 1, "maximum": 10},
        "score_2": {"type": "number", "minimum": 1, "maximum": 10},
    },
    "required": ["review", "score_1", "score_2"],
    "additionalProperties": False,
}

_NUMBER = r"(\d+(?:\.\d+)?)"
_OUT_OF = r"(?:\s*/\s*10(?!\d))?"
_FIRST_LINE = re.compile(rf"^\W*?(?:scores?\s*[:=]?\s*)?{_NUMBER}{_OUT_OF}\s*(?:,|;|and|vs\.?|-|\s)\s*{_NUMBER}{_OUT_OF}\W*$", re.IGNORECASE)
_LABELLED = re.compile(rf"(?:answer|assistant|response)\s*(?:#\s*)?([12])\s*(?:score)?\s*[:=\-]?\s*\**\s*{_NUMBER}{_OUT_OF}", re.IGNORECASE)


@dataclass
class Verdict:
    """One judge reply: the scores of the answer shown first and second, and the status of the reply."""

    score_1: float | None
    score_2: float | None
    status: str = OK

    @property
    def ok(self) -> bool:
        return self.status == OK


def load_prompt(template: str | None = None) -> str:
    """The judge prompt: the built-in one, a .jinja file, or template text (sees question, answer_1, answer_2)."""
    if template is None:
        return PROMPT.read_text(encoding="utf-8")
    if "{{" in template or "\n" in template:
        return template
    path = Path(template).expanduser()
    if not path.is_file():
        raise ConfigError(f"`judge_template` = {template!r} is neither a file nor Jinja text; pass a .jinja file that "
                          "uses {{ question }}, {{ answer_1 }} and {{ answer_2 }}")
    return path.read_text(encoding="utf-8")


def judge_messages(
    question: str, answer_1: str, answer_2: str, template: str | None = None, *, structured: bool = False
) -> list[dict[str, str]]:
    """The judge's conversation for one order: ``answer_1`` is shown first. ``structured``: the reply is
    constrained to :data:`VERDICT_SCHEMA`, so the prompt asks for that JSON object instead of the plain layout."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    try:
        text = env.from_string(load_prompt(template))
        content = text.render(question=question, answer_1=answer_1, answer_2=answer_2, structured=structured)
    except jinja2.TemplateError as err:
        raise ConfigError(f"the judge template cannot be rendered: {err}; it may use question, answer_1, answer_2 and structured") from None
    return [{"role": "user", "content": content}]


def parse_verdict(text: str | None) -> Verdict:
    """The two scores of a judge reply (see the module docstring for what is read)."""
    if text is None or not text.strip():
        return Verdict(None, None, make(PARSE_FAILED, "empty judge reply"))
    scores = _from_json(text) or _from_first_line(text) or _from_labels(text)
    if scores is None:
        return Verdict(None, None, make(PARSE_FAILED, f"no two scores in the judge reply ({_preview(text)})"))
    lo, hi = SCORE_RANGE
    if not all(lo <= s <= hi for s in scores):
        return Verdict(None, None, make(PARSE_FAILED, f"score outside {lo:g}-{hi:g}: {scores[0]:g} {scores[1]:g}"))
    return Verdict(scores[0], scores[1])


def _from_json(text: str) -> tuple[float, float] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start:end + 1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("scores"), list) and len(data["scores"]) == 2:
        pair = data["scores"]
    else:
        keys = [("score_1", "score_2"), ("answer_1", "answer_2"), ("assistant_1", "assistant_2"), ("score1", "score2")]
        pair = next(([data[a], data[b]] for a, b in keys if a in data and b in data), None)
    try:
        return (float(pair[0]), float(pair[1])) if pair is not None else None
    except (TypeError, ValueError):
        return None


def _from_first_line(text: str) -> tuple[float, float] | None:
    line = next((ln.strip().strip("*`") for ln in text.splitlines() if ln.strip().strip("*`")), "")
    match = _FIRST_LINE.match(line)
    return (float(match.group(1)), float(match.group(2))) if match else None


def _from_labels(text: str) -> tuple[float, float] | None:
    found: dict[str, float] = {}
    for which, value in _LABELLED.findall(text):
        found.setdefault(which, float(value))
    return (found["1"], found["2"]) if {"1", "2"} <= set(found) else None


def _preview(text: str, n: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat[:n] + ("…" if len(flat) > n else ""))


def order_result(verdict: Verdict, a_position: int) -> str | None:
    """A's result in one order (``a_position`` 1: A was shown first); None when the verdict failed."""
    if not verdict.ok or verdict.score_1 is None or verdict.score_2 is None:
        return None
    a, b = (verdict.score_1, verdict.score_2) if a_position == 1 else (verdict.score_2, verdict.score_1)
    return WIN if a > b else LOSS if a < b else TIE


def combine(first: str | None, second: str | None) -> str | None:
    """The outcome for A from its results in both orders (the rule of the module docstring); None if either is missing."""
    if first is None or second is None:
        return None
    sign = {WIN: 1, TIE: 0, LOSS: -1}
    total = sign[first] + sign[second]
    return WIN if total > 0 else LOSS if total < 0 else TIE


def winning_score(counts: dict[str, int]) -> float | None:
    """``(wins - losses) / judged + 1``: 1 means even, 2 means A won every prompt; None when nothing was judged."""
    judged = sum(counts.get(k, 0) for k in OUTCOMES)
    return (counts.get(WIN, 0) - counts.get(LOSS, 0)) / judged + 1 if judged else None
