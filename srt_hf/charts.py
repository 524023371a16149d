"""The PNG charts of the cards: score histograms before → after selection, the training loss curve, and the
win / tie / loss bars of a pairwise comparison.

Drawn with matplotlib's object API (a ``Figure`` saved through the Agg renderer): no pyplot state and
no display, so it works in scripts, workers and on machines without a screen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

BEFORE, AFTER, THRESHOLD, LOWEST = (120, 144, 176), (230, 126, 34), (200, 40, 40), (46, 139, 87)  # RGB
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


def histogram_png(path: Path, title: str, before: np.ndarray, after: np.ndarray, *, bins: int = 30,
                  threshold: float | None = None, lowest_kept: float | None = None) -> None:
    """Side-by-side histogram of a score before and after selection. Values outside the 0.5–99.5
    percentile range fall into the edge bins, so one outlier does not squash the rest. ``threshold`` is
    drawn dashed, ``lowest_kept`` (the smallest value among the kept rows) solid and labelled."""
    both = np.concatenate([before, after])
    lo, hi = (float(v) for v in np.percentile(both, [0.5, 99.5])) if len(both) else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    figure, ax = _figure()
    ax.hist([np.clip(before, lo, hi), np.clip(after, lo, hi)], bins=np.linspace(lo, hi, bins + 1),
            color=[_rgb(BEFORE), _rgb(AFTER)], label=[f"before (n={len(before)})", f"after (n={len(after)})"])
    if threshold is not None and lo < threshold < hi:
        ax.axvline(threshold, color=_rgb(THRESHOLD), linestyle="--", linewidth=1)
    if lowest_kept is not None and math.isfinite(lowest_kept):
        x = min(max(lowest_kept, lo), hi)
        ax.axvline(x, color=_rgb(LOWEST), linewidth=1.5)
        ax.annotate(f"lowest kept {lowest_kept:.3f}", (x, 1), xycoords=("data", "axes fraction"), xytext=(4, -12),
                    textcoords="offset points", color=_rgb(LOWEST), fontsize=8)
    ax.set(title=f"{title} before → after selection", xlabel=title, ylabel="rows")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False)
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
