"""The figures every output of a run shows, computed once and named by their population.

    figures = score_figures(run_dir, meta)   # {"ifd": [Figure("original, all rows", n=20, median=0.655, …), …]}
    written = teacher_written(rows)          # {"training rows": 18, "training completions": 13, …}

A score's figures always say which rows they cover and which text was scored: a **population** is a
label like ``original, all rows`` (every row's score on its original text), ``final, all rows`` (every row's
score on its final text) or ``final, kept rows`` (the kept rows, i.e. the training data); a select run that
scored one text says only ``all rows`` / ``kept rows``. ``n`` counts the rows of the population that have a
finite score. The terminal summary, run.json (``score_figures``, ``teacher_written``), the dataset card and
the report all read these functions, so the same label gives the same figure in each (one format:
:func:`show`).

The populations of a score come from run.json's ``histograms`` spec (``before``: all rows, ``after``: the kept
rows, ``also``: more all-rows columns shown in the tables); its ``cutoffs`` are the selection rule's lines on
the charts (none for a rule without a cutoff on that score).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ALL_ROWS, KEPT_ROWS = "all rows", "kept rows"
SCORE_LABELS = {"ifd": "IFD", "rifd": "r-IFD"}
#: The statistics of a figure, in the order the tables show them.
STATS = ("n", "mean", "median", "min", "max", "share_below_1")
#: Column prefixes of a recycle run and the text they score.
_TEXTS = (("original_", "original"), ("final_", "final"), ("reflected_pair_", "teacher's pair"),
          ("better_response_", "better answer"))


@dataclass(frozen=True)
class Figure:
    """One score's statistics over one population: ``label`` (e.g. ``final, kept rows``), ``source``
    (``file:column``), ``n`` (rows with a finite score) and the rest (None when ``n`` is 0)."""

    label: str
    source: str
    n: int
    mean: float | None
    median: float | None
    min: float | None
    max: float | None
    share_below_1: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Figure:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})

    def title(self) -> str:
        """``final, kept rows (n=18)``: the label with its n, as every output prints it."""
        return f"{self.label} (n={self.n:,})"


def show(value: float | int | None, *, share: bool = False) -> str:
    """The one text of a figure's value: scores with 3 decimals, shares as percentages, counts with commas."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if share:
        text = f"{100 * value:.1f}".removesuffix(".0")
        return text + "%"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.3f}"


def shown(figure: Figure) -> dict[str, str]:
    """Every statistic of ``figure`` as :func:`show` writes it (what the card and the report print)."""
    return {k: show(getattr(figure, k), share=k == "share_below_1") for k in STATS}


def population(source: str, kept: bool) -> str:
    """The label of the rows ``source`` (``file:column``) covers: ``original, all rows``, ``final, kept rows``…"""
    column = source.rsplit(":", 1)[-1]
    text = next((name for prefix, name in _TEXTS if column.startswith(prefix)), None)
    rows = KEPT_ROWS if kept else ALL_ROWS
    return f"{text}, {rows}" if text else rows


def histogram_specs(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """run.json's ``histograms`` with the default (``ifd`` / ``rifd`` of rows.parquet → selected.parquet)."""
    specs = {k: dict(v) for k, v in (meta.get("histograms") or {}).items()}
    for score in ("ifd", "rifd"):
        specs.setdefault(score, {"before": f"rows.parquet:{score}", "after": f"selected.parquet:{score}"})
    return specs


def cutoffs(meta: Mapping[str, Any], score: str) -> list[dict[str, Any]]:
    """The selection rule's cutoffs on ``score`` (``{"value", "label"}``): the spec's ``cutoffs`` when it names
    them, else what the recorded rule implies: a recycle run's final filter (IFD < 1, r-IFD < 1), top-IFD's cap
    and the lowest IFD it kept (every row above it was kept). Other rules (k-center, DS weight) have none."""
    spec = histogram_specs(meta).get(score, {})
    if "cutoffs" in spec:
        return list(spec["cutoffs"] or [])
    rule = meta.get("selection") if isinstance(meta.get("selection"), Mapping) else {}
    name = str(rule.get("rule") or "")
    out: list[dict[str, Any]] = []
    if meta.get("kind") == "recycle" and name.startswith("ifd < 1 and rifd < 1") and score in ("ifd", "rifd"):
        out.append({"value": 1.0, "label": f"rule: {SCORE_LABELS[score]} < 1"})
    elif name.startswith("top_ifd") and score == "ifd":
        if rule.get("max_ifd") is not None and np.isfinite(rule["max_ifd"]):
            out.append({"value": float(rule["max_ifd"]), "label": f"rule: IFD < {rule['max_ifd']:g}"})
        if rule.get("lowest_kept_ifd") is not None:
            value = float(rule["lowest_kept_ifd"])
            out.append({"value": value, "label": f"top by IFD: lowest kept {value:.3f}"})
    return out


def read_values(run_dir: Path, source: str | None) -> np.ndarray | None:
    """The finite values of ``file:column`` in the run folder; None when the file or column is missing."""
    if not source or ":" not in source:
        return None
    import pyarrow.parquet as pq

    rel, column = source.rsplit(":", 1)
    path = Path(run_dir) / rel
    if not path.is_file() or column not in pq.read_schema(path).names:
        return None
    values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    arr = np.array([np.nan if v is None or isinstance(v, bool) else float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def figure(label: str, source: str, values: np.ndarray) -> Figure:
    """The statistics of ``values`` (finite already) under ``label``."""
    if not len(values):
        return Figure(label, source, 0, None, None, None, None, None)
    return Figure(label, source, int(len(values)), float(values.mean()), float(np.median(values)),
                  float(values.min()), float(values.max()), float((values < 1).mean()))


def score_figures(run_dir: Path, meta: Mapping[str, Any]) -> dict[str, list[Figure]]:
    """Per score whose columns the run has: its figures over all rows (``before``, then ``also``) and over the
    kept rows (``after``). A score none of whose rows was scored is left out."""
    out: dict[str, list[Figure]] = {}
    for score, spec in histogram_specs(meta).items():
        sources = [(spec.get("before"), False), *((s, False) for s in spec.get("also") or ()), (spec.get("after"), True)]
        found = [(s, kept, read_values(run_dir, s)) for s, kept in sources]
        if any(v is None for s, _, v in found if s in (spec.get("before"), spec.get("after"))):
            continue
        figures = [figure(population(s, kept), s, v) for s, kept, v in found if v is not None]
        if figures and figures[0].n:
            out[score] = figures
    return out


def figures_from_meta(meta: Mapping[str, Any]) -> dict[str, list[Figure]]:
    """run.json's ``score_figures`` read back."""
    return {score: [Figure.from_dict(f) for f in figs] for score, figs in (meta.get("score_figures") or {}).items()}


def teacher_written(rows: Mapping[str, Sequence[Any]], selected: Sequence[bool]) -> dict[str, int] | None:
    """Of the training rows (the kept rows: sft/train.parquet holds exactly them), how many prompts and
    completions the teacher wrote, counted from a recycle table's choices; None without them.

    A final response is the teacher's when stage 4 kept its better answer, or stage 2 kept its new pair (whose
    answer came with it) and stage 4 kept that; a final instruction is the teacher's when stage 2 kept its pair.
    """
    if not {"instruction_choice", "response_choice"} <= set(rows):
        return None
    pairs = list(zip(rows["instruction_choice"], rows["response_choice"], selected))
    kept = [(a, b) for a, b, s in pairs if s]
    return {
        "training rows": len(kept),
        "training prompts": sum(a == "reflected" for a, _ in kept),
        "training completions": sum(a == "reflected" or b == "reflected" for a, b in kept),
    }
