"""The status vocabulary: its helpers, and that no module outside srt_hf/status.py spells a status itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from srt_hf import status
from srt_hf.pipeline import BETTER_ANSWERS_KEPT, NEW_PAIRS_KEPT
from srt_hf.summary import recycle_summary, score_summary

ROOT = Path(__file__).resolve().parents[1]


def test_make_and_read():
    made = status.make(status.REQUEST_FAILED, "HTTP 503: busy")
    assert made == "request_failed: HTTP 503: busy"
    assert status.kind_of(made) == "request_failed" and status.reason_of(made) == "HTTP 503: busy"
    assert status.make(status.OK) == "ok" and status.reason_of("ok") == "" and status.kind_of(None) == ""
    assert status.is_retryable(made) and not status.is_retryable(status.make(status.PARSE_FAILED, "empty reply"))
    assert status.tally(["ok", made, "ok", "skipped: too long"]) == {"ok": 2, "request_failed": 1, "skipped": 1}
    with pytest.raises(ValueError, match="unknown status kind"):
        status.make("failed", "no such kind")


def _code_strings(path: Path):
    """(line, text) of every string literal in ``path`` that is not a docstring (f-strings: their literal parts)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def _kind_comparisons(path: Path):
    """Lines that compare something with a status kind spelled as a literal (``x == "ok"``, ``"ok" in x``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in status.KINDS for o in operands):
                yield node.lineno


def test_statuses_are_made_only_in_the_status_module():
    # A literal "kind: …" (or an f-string starting so) outside srt_hf/status.py would be a second place that
    # decides how a status is written; comparing with "ok" by hand a second place that reads one.
    starts_like_a_status = re.compile(rf"^({'|'.join(status.KINDS)}):")
    sources = [p for p in [*(ROOT / "srt_hf").rglob("*.py"), *(ROOT / "recipes").rglob("*.py")] if p.name != "status.py"]
    assert len(sources) > 40
    made = [f"{p.relative_to(ROOT)}:{line} {text[:40]!r}" for p in sources for line, text in _code_strings(p)
            if starts_like_a_status.match(text)]
    read = [f"{p.relative_to(ROOT)}:{line}" for p in sources for line in _kind_comparisons(p)
            if p.relative_to(ROOT).as_posix() != "srt_hf/teachers/cache.py"]  # SQLite's own "ok" (quick_check)
    assert made == [] and read == []


def test_summaries_count_by_kind():
    text = score_summary(["ok", "ok", "skipped: too long", "invalid: not a string"], [0.5, 0.7, None, None], None)
    assert re.search(r"ok\s+2", text) and re.search(r"skipped\s+1", text) and re.search(r"invalid\s+1", text)
    meta = {
        "counts": {"input": 4, NEW_PAIRS_KEPT: 1, BETTER_ANSWERS_KEPT: 0, "selected": 2},
        "status_kinds": {"instruction_reflection": {"ok": 2, "parse_failed": 1, "truncated": 1},
                         "response_reflection": {"ok": 1, "request_failed": 3}},
        "stats": {s: {"before": {"median": 0.5, "n": 4}, "after": {"median": 0.4, "n": 2}} for s in ("ifd", "rifd")},
    }
    text = recycle_summary(meta)
    assert re.search(r"instruction reflections failed\s+2", text) and re.search(r"response reflections failed\s+3", text)
    # the teacher answered 5 times (3 ok, 1 parse_failed, 1 truncated); 2 of those gave nothing usable
    assert "2 of 5 (40%)" in text
