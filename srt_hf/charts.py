"""The PNG charts of the cards: score histograms of two populations (all rows → kept rows), the training loss
curve, and the win / tie / loss bars of a pairwise comparison.

Drawn with matplotlib's object API (a ``Figure`` saved through the Agg renderer): no pyplot state and
no display, so it works in scripts, workers and on machines without a screen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BEFORE, AFTER, THRESHOLD = (120, 144, 176), (230, 126, 34), (200, 40, 40)  # RGB
LINES = (BEFORE, AFTER, (46, 139, 87))  # train, eval, any further series
OUTCOME_COLORS = ((46, 139, 87), (170, 170, 170), (200, 40, 40))  # win, tie, loss
SIZE = (6.4, 3.2)  # inches at DPI: 640 × 320 pixels
DPI = 100


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255 for c in color)  # type: ignore[return-value]


def _figure():
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    return figure, figure.add_subplot()


def _save(figure, path: Path) -> None:
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})  # no version stamp: same data, same bytes


@dataclass(frozen=True)
class Bins:
    """The bins of a score histogram: ``count`` equal bins from ``lo`` to ``hi``; values outside are clipped
    into the edge bins."""

    lo: float
    hi: float
    count: int = 30

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.count + 1)

    def as_dict(self) -> dict[str, float | int]:
        return {"lo": self.lo, "hi": self.hi, "count": self.count}


def histogram_bins(*populations: np.ndarray, count: int = 30) -> Bins:
    """The one clipping rule of the PNG charts and the report's: the range of all values, narrowed to Tukey's far
    fences (Q1 − 3·IQR, Q3 + 3·IQR) so one outlier does not squash the rest. Values outside fall into the edge
    bins, which are then hatched and named in :func:`clip_notes`."""
    both = np.concatenate([np.asarray(p, dtype=float) for p in populations]) if populations else np.array([])
    both = both[np.isfinite(both)]
    if not len(both):
        return Bins(0.0, 1.0, count)
    lo, hi = float(both.min()), float(both.max())
    q1, q3 = (float(v) for v in np.quantile(both, [0.25, 0.75]))
    fence = 3 * (q3 - q1)
    if fence > 0:
        lo, hi = max(lo, q1 - fence), min(hi, q3 + fence)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return Bins(lo, hi, count)


def clipped(bins: Bins, before: np.ndarray, after: np.ndarray) -> dict[str, list[int]]:
    """How many values of each population lie below / above the range: ``{"before": [low, high], "after": …}``."""
    return {name: [int((values < bins.lo).sum()), int((values > bins.hi).sum())]
            for name, values in (("before", before), ("after", after))}


def clip_notes(bins: Bins, before: np.ndarray, after: np.ndarray) -> list[str]:
    """What the hatched edge bins hold beyond the range, e.g. ``values > 3.214 in the last bin: 2 before, 1 after``
    (the same words under the PNG and in the report)."""
    counts = clipped(bins, before, after)
    notes = []
    for k, (side, edge, where) in enumerate((("<", bins.lo, "first"), (">", bins.hi, "last"))):
        n_before, n_after = counts["before"][k], counts["after"][k]
        if n_before or n_after:
            notes.append(f"values {side} {edge:.3f} in the {where} bin (hatched): {n_before} before, {n_after} after")
    return notes


def histogram_png(path: Path, title: str, before: np.ndarray, after: np.ndarray, *, bins: Bins | None = None,
                  labels: tuple[str, str] = ("before", "after"),
                  cutoffs: Sequence[Mapping[str, object]] = ()) -> None:
    """Side-by-side histogram of a score over two populations (``labels``: their names with n). ``bins`` default
    to :func:`histogram_bins`; an edge bin holding clipped values is hatched and the note under the axis says how
    many. ``cutoffs`` (``{"value", "label"}``: the selection rule's lines on this score; the label names the value)
    are drawn dashed and labelled; a rule without a cutoff on this score draws none."""
    bins = bins or histogram_bins(before, after)
    figure, ax = _figure()
    _, _, patches = ax.hist([np.clip(before, bins.lo, bins.hi), np.clip(after, bins.lo, bins.hi)], bins=bins.edges(),
                            color=[_rgb(BEFORE), _rgb(AFTER)], label=list(labels))
    counts = clipped(bins, before, after)
    for name, bars in zip(("before", "after"), patches):
        for n, bar in zip(counts[name], (bars[0], bars[-1])):
            if n:
                bar.set_hatch("///")
                bar.set_edgecolor("white")
    for k, cutoff in enumerate(cutoffs):
        value = float(cutoff["value"])  # type: ignore[arg-type]
        if not (math.isfinite(value) and bins.lo <= value <= bins.hi):
            continue
        ax.axvline(value, color=_rgb(THRESHOLD), linestyle="--", linewidth=1.5)
        left = value > bins.lo + 0.6 * (bins.hi - bins.lo)  # near the right edge: the label goes left of the line
        ax.annotate(str(cutoff["label"]), (value, 1), xycoords=("data", "axes fraction"), ha="right" if left else "left",
                    xytext=(-4 if left else 4, -12 - 11 * k), textcoords="offset points", color=_rgb(THRESHOLD), fontsize=8)
    notes = clip_notes(bins, before, after)
    ax.set(title=f"{title}: {labels[0]} vs {labels[1]}", xlabel=title + ("\n" + "; ".join(notes) if notes else ""),
           ylabel="rows")
    ax.title.set_fontsize(10)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=True, framealpha=0.85, edgecolor="none", fontsize=8, loc="best")
    _save(figure, path)


def loss_curve_png(path: Path, series: Mapping[str, Sequence[tuple[float, float]]]) -> None:
    """Loss against optimizer step, one line per series (train, eval)."""
    figure, ax = _figure()
    for (name, points), color in zip(series.items(), LINES):
        points = [p for p in points if math.isfinite(p[1])]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name, color=_rgb(color),
                linewidth=2, marker="o" if len(points) <= 60 else None, markersize=3)
    ax.set(title="Training loss", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    _save(figure, path)


def outcome_bars_png(path: Path, title: str, rows: Mapping[str, tuple[int, int, int]]) -> None:
    """One horizontal bar per row (category, then "all"): the shares of win / tie / loss, with the counts."""
    from matplotlib.figure import Figure

    names = list(rows)
    figure = Figure(figsize=(SIZE[0], max(SIZE[1], 0.9 + 0.42 * len(names))), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    left = np.zeros(len(names))
    for k, (label, color) in enumerate(zip(("win", "tie", "loss"), OUTCOME_COLORS)):
        counts = np.array([rows[n][k] for n in names], dtype=float)
        totals = np.array([max(1, sum(rows[n])) for n in names], dtype=float)
        shares = counts / totals
        bars = ax.barh(names, shares, left=left, color=_rgb(color), label=label, height=0.6)
        ax.bar_label(bars, labels=[str(int(c)) if c else "" for c in counts], label_type="center", fontsize=8, color="white")
        left += shares
    ax.invert_yaxis()  # first row on top, "all" at the bottom
    ax.set(title=title, xlabel="share of judged prompts (win / tie / loss for the first model)", xlim=(0, 1))
    ax.legend(frameon=False, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    _save(figure, path)
