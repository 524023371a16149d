"""Plain-text summary tables printed at the end of CLI commands."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from .status import INVALID, OK, PARSE_FAILED, PLACEHOLDER, REJECTED, SKIPPED, TRUNCATED, is_ok, kind_of

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A fixed-width table; the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "-" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def quantile_rows(columns: dict[str, Sequence[float | None]]) -> list[list[object]]:
    """One row per column: n, the quantiles of its finite values."""
    rows = []
    for name, values in columns.items():
        arr = np.array([np.nan if v is None else v for v in values], dtype=float)
        arr = arr[np.isfinite(arr)]
        qs = np.quantile(arr, QUANTILES).tolist() if len(arr) else [float("nan")] * len(QUANTILES)
        rows.append([name, len(arr), *qs])
    return rows


def status_counts(statuses: Iterable[str]) -> Counter:
    """Counts by status kind: ok / skipped / invalid (the part before ':')."""
    return Counter(kind_of(s) for s in statuses)


def score_summary(statuses: Sequence[str], ifd: Sequence[float | None], rifd: Sequence[float | None] | None) -> str:
    counts = status_counts(statuses)
    parts = [
        table(["rows", "count"], [["total", len(statuses)], *[[k, counts.get(k, 0)] for k in (OK, SKIPPED, INVALID)]]),
        "",
        table(["score", "n", "min", "p25", "median", "p75", "max"], quantile_rows({"ifd": ifd, **({"rifd": rifd} if rifd is not None else {})})),
    ]
    finite = [v for v in ifd if v is not None and np.isfinite(v)]
    share = sum(v >= 1 for v in finite) / len(finite) if finite else float("nan")
    parts.append(f"\nshare with IFD >= 1 (instruction does not help): {share:.1%} of {len(finite)} scored rows")
    reasons = Counter(s for s in statuses if not is_ok(s))
    if reasons:
        parts.append("\n" + table(["not ok", "rows"], reasons.most_common()))
    return "\n".join(parts)


def recycle_summary(meta: dict) -> str:
    """The end-of-run table of `srt-hf recycle`: what each stage changed and what was kept."""
    from .pipeline import BETTER_ANSWERS_KEPT, NEW_PAIRS_KEPT

    counts, requests = meta["counts"], meta.get("teacher_requests", {})
    kinds = meta.get("status_kinds", {})
    failures = {
        stage: sum(n for kind, n in tally.items() if kind != OK) for stage, tally in kinds.items()
    }
    rows = [
        ["rows in", counts["input"]],
        [NEW_PAIRS_KEPT, counts.get(NEW_PAIRS_KEPT, "-")],
        [BETTER_ANSWERS_KEPT, counts.get(BETTER_ANSWERS_KEPT, "-")],
        ["instruction reflections failed", failures.get("instruction_reflection", 0)],
        ["response reflections failed", failures.get("response_reflection", 0)],
        ["reflections without a usable reply", _unusable_share(kinds)],
        ["reflections rejected as meta replies", counts.get("meta replies rejected", 0)],
        ["teacher reply layout", _layout(meta.get("reflection_layout", {}))],
        ["teacher requests sent", requests.get("requests_sent", 0)],
        ["teacher requests retried", requests.get("retried", 0)],
        ["teacher replies from cache", requests.get("cache_hits", 0)],
        *([["teacher replies too large (invalid)", requests["oversized"]]] if requests.get("oversized") else []),
        ["rows kept", counts["selected"]],
        *teacher_written_rows(meta),
    ]
    reasons = meta.get("reasons", {})
    parts = [table(["stage", "rows"], rows)]
    scores = figures_table(meta)
    if scores:
        parts += ["", scores]
    usage = teacher_usage_rows(meta.get("teacher_usage", {}))
    if usage:
        parts += ["", table(["teacher stage", "replies", "batch", "online", "prompt tokens", "completion tokens"], usage)]
    if reasons:
        parts += ["", table(["selection", "rows"], list(reasons.items()))]
    bad = {f"{stage}: {kind}": n for stage, tally in kinds.items() for kind, n in tally.items() if kind != OK}
    if bad:
        parts += ["", table(["reflection status", "rows"], list(bad.items()))]
    return "\n".join(parts)


def teacher_written_rows(meta: dict) -> list[list[object]]:
    """The training prompts and completions the teacher wrote (run.json ``teacher_written``), "k of n"."""
    written = meta.get("teacher_written")
    if not written:
        return []
    n = written["training rows"]
    return [[f"training {what} written by the teacher", f"{written[f'training {what}']} of {n}"]
            for what in ("prompts", "completions")]


def figures_table(meta: dict) -> str:
    """One line per score and population (run.json ``score_figures``): n, mean, median, min, max, share < 1,
    written as :func:`srt_hf.figures.show` writes them (the card and the report print the same)."""
    from .figures import SCORE_LABELS, STATS, figures_from_meta, shown

    rows = [[SCORE_LABELS.get(score, score), f.label, *shown(f).values()]
            for score, figs in figures_from_meta(meta).items() for f in figs]
    if not rows:
        return ""
    return table(["score", "population", *[s.replace("share_below_1", "share < 1") for s in STATS]], rows)


def teacher_usage_rows(usage: dict[str, dict[str, dict[str, int]]]) -> list[list[object]]:
    """One row per teacher stage: replies, how many came through a batch and online, and the token counts."""
    rows = []
    for stage, sources in usage.items():
        batch, online = sources.get("batch", {}), sources.get("online", {})
        total = lambda k: batch.get(k, 0) + online.get(k, 0)  # noqa: E731
        rows.append([stage, total("replies"), batch.get("replies", 0), online.get("replies", 0), total("prompt_tokens"),
                     total("completion_tokens")])
    return rows


def _unusable_share(kinds: dict[str, dict[str, int]]) -> str:
    """Reflections the teacher answered but that gave nothing to use (parse_failed, placeholder, truncated, rejected)."""
    unusable = (PARSE_FAILED, PLACEHOLDER, TRUNCATED, REJECTED)
    asked = sum(n for tally in kinds.values() for kind, n in tally.items() if kind in (OK, *unusable))
    bad = sum(n for tally in kinds.values() for kind, n in tally.items() if kind in unusable)
    return f"{bad} of {asked} ({100 * bad / asked:.0f}%)" if asked else "0"


def _layout(layout: dict) -> str:
    rows: dict[str, int] = {}
    for tally in (layout.get("rows") or {}).values():
        for name, n in tally.items():
            rows[name] = rows.get(name, 0) + n
    if not rows:
        return str(layout.get("mode", "-"))
    mechanism = layout.get("structured_output")
    parts = [f"{name} {n}" + (f" ({mechanism})" if name == "json" and mechanism else "") for name, n in sorted(rows.items())]
    if "markers" in rows and mechanism == "unsupported":
        parts.append("the teacher has no structured output")
    return ", ".join(parts)
