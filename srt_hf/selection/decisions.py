"""One selection decision per row, the shape every selection method returns.

    decisions = top_ifd_decisions(scored["ifd"], scored["score_status"], rate=0.05)
    table = decisions.table(scored)        # every row + `selected`, `selection_reason` (+ decisions.columns)
    kept = apply_decisions(scored, decisions.selected, decisions.reasons)   # the kept rows, original order

A method only decides (keep / drop, with a reason per row); recording is done here once: the decision
columns of a table (:func:`with_decisions`) and the counts of a run folder (:func:`reason_counts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

SELECTED, REASON = "selected", "selection_reason"


@dataclass
class Decisions:
    """What a selection method decided: a keep flag and a ``kept: …`` / ``dropped: …`` reason per row.

    ``info`` is the run.json ``selection`` entry (the card reads it), ``columns`` extra output columns
    (e.g. the k-center pick order), ``methods`` the citation keys of :mod:`srt_hf.cards.citations`.
    """

    selected: Sequence[bool]
    reasons: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, list] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)

    def table(self, ds):
        """``ds`` with the decision columns and the extra columns."""
        return with_decisions(ds, self.selected, self.reasons, self.columns)

    def meta(self, **extra: Any) -> dict[str, Any]:
        """The run.json entries of this decision (``selection``, ``methods``) plus ``extra``."""
        return {"selection": self.info, "methods": list(self.methods), **extra}


def apply_decisions(ds, selected: Sequence[bool], reasons: Sequence[str], *, keep_all: bool = False,
                    extra: dict[str, list] | None = None):
    """The kept rows in original order, or (``keep_all``) every row with ``selected`` + ``selection_reason``."""
    table = with_decisions(ds, selected, reasons, extra)
    if keep_all:
        return table
    return kept_rows(table)


def kept_rows(table):
    """The rows of a decision table that were kept, without the decision columns."""
    return table.select(np.flatnonzero(np.asarray(table[SELECTED], dtype=bool))).remove_columns([SELECTED, REASON])


def with_decisions(ds, selected: Sequence[bool], reasons: Sequence[str], extra: dict[str, list] | None = None):
    """``ds`` with the ``selected`` / ``selection_reason`` columns (replaced if present) and any extra columns."""
    from ..dataio import with_columns

    columns = {SELECTED: [bool(s) for s in selected], REASON: list(reasons), **(extra or {})}
    return with_columns(ds, columns, {SELECTED: "bool", REASON: "string"})


def reason_counts(reasons: Sequence[str]) -> dict[str, int]:
    """Rows per reason kind, the reason text up to its first parenthesis (``dropped: ifd >= 1``)."""
    counts: dict[str, int] = {}
    for r in reasons:
        key = r.split(" (", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def quantiles(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """n and min/p25/median/p75/max of the finite values (for run.json)."""
    from ..summary import QUANTILES

    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    names = ("min", "p25", "median", "p75", "max")
    if not len(arr):
        return {"n": 0, **dict.fromkeys(names)}
    return {"n": int(len(arr)), **{k: float(q) for k, q in zip(names, np.quantile(arr, QUANTILES))}}
