"""Top-IFD share (Cherry LLM / Superfiltering, docs/ARCHITECTURE.md): the highest-IFD rows below a cap.

    kept = select_top_ifd(scored, rate=0.05)                  # the kept rows, in their original order
    table = select_top_ifd(scored, rate=0.05, keep_all=True)  # every row + `selected`, `selection_reason`
    decisions = top_ifd_decisions(scored["ifd"], scored["score_status"], n=1000)

Eligible rows are those scored ``ok`` with a finite ``ifd < max_ifd`` (IFD ≥ 1: the instruction does
not help predict the response). They are ranked by IFD, highest first (ties: the earlier row first),
and the first ``int(n_eligible * rate)`` — or ``min(n, n_eligible)`` — are kept. A share so small that
it keeps 0 rows is a legal outcome, and every row then says why it was dropped. Deterministic.
:class:`TopIFD` is the ``srt-hf select --top-share / --top-n`` entry of :mod:`srt_hf.selection.methods`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, InputError
from ..status import OK, is_ok
from .decisions import REASON, SELECTED, Decisions, apply_decisions, quantiles


def top_ifd_decisions(
    ifd: Sequence[float | None],
    status: Sequence[str | None] | None = None,
    *,
    rate: float | None = None,
    n: int | None = None,
    max_ifd: float | None = 1.0,
    excluded: Sequence[str | None] | None = None,
) -> Decisions:
    """The top-IFD rule on plain columns (``selected`` is a numpy bool array; ``info`` summarises the rule).

    ``excluded[i]``, when not None, is the reason row ``i`` is out of the running before the rule
    (e.g. an earlier stage dropped it); it becomes that row's ``dropped: …`` reason.
    """
    _check_amount(rate, n)
    cap = math.inf if max_ifd is None else float(max_ifd)
    values = np.array([np.nan if v is None else float(v) for v in ifd], dtype=float)
    reasons: list[str] = [""] * len(values)
    eligible = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        st = status[i] if status is not None else OK
        if excluded is not None and excluded[i] is not None:
            reasons[i] = f"dropped: {excluded[i]}"
        elif not is_ok(st):
            reasons[i] = f"dropped: not scored ({st})"
        elif not math.isfinite(v):
            reasons[i] = "dropped: not scored (ifd is missing or not finite)"
        elif v >= cap:
            reasons[i] = f"dropped: ifd >= {cap:g} ({v:.4f})"
        else:
            eligible[i] = True
    idx = np.flatnonzero(eligible)
    m = len(idx)
    keep = min(int(n), m) if n is not None else int(m * rate)  # type: ignore[operator]
    order = idx[np.lexsort((idx, -values[idx]))]  # IFD descending, the earlier row first on ties
    label = f"top {n}" if n is not None else f"top {_percent(rate)}"  # type: ignore[arg-type]
    selected = np.zeros(len(values), dtype=bool)
    selected[order[:keep]] = True
    for rank, i in enumerate(order, start=1):
        where = f"IFD rank {rank} of {m} rows with ifd < {cap:g}"
        if rank <= keep:
            reasons[i] = f"kept: {label} by IFD ({where})"
        elif keep == 0:
            reasons[i] = f"dropped: the {label} of {m} rows is 0 rows ({where})"
        else:
            reasons[i] = f"dropped: below the {label} by IFD ({where})"
    info = {
        "rule": "top_ifd_share" if n is None else "top_ifd_n",
        "rate": rate, "n": n, "max_ifd": None if max_ifd is None else cap,
        "eligible": m, "kept": keep,
        "lowest_kept_ifd": float(values[order[keep - 1]]) if keep else None,
    }
    return Decisions(selected, reasons, info, methods=["top-ifd"])


def select_top_ifd(
    ds,
    rate: float | None = None,
    n: int | None = None,
    max_ifd: float | None = 1.0,
    *,
    keep_all: bool = False,
    ifd_column: str = "ifd",
    status_column: str | None = "score_status",
):
    """Keep the top ``rate`` share (or top ``n``) of a scored ``datasets.Dataset`` by IFD.

    Returns the kept rows in their original order, or with ``keep_all=True`` every row with the
    ``selected`` and ``selection_reason`` columns. ``status_column`` (``score_status`` from
    :class:`srt_hf.IFDScorer`) is used when present: rows not scored ``ok`` are never kept.
    """
    if ifd_column not in ds.column_names:
        raise InputError(
            f"the dataset has no {ifd_column!r} column (it has {ds.column_names})", column=ifd_column,
            fix="score it first: `srt-hf score IN --out scored.parquet` or `ds.map(IFDScorer(...), batched=True)`, "
            "or name the column that holds IFD with ifd_column (CLI: --ifd-column)",
        )
    status = ds[status_column] if status_column and status_column in ds.column_names else None
    decisions = top_ifd_decisions(ds[ifd_column], status, rate=rate, n=n, max_ifd=max_ifd)
    return apply_decisions(ds, decisions.selected, decisions.reasons, keep_all=keep_all)


def _check_amount(rate: float | None, n: int | None) -> None:
    if (rate is None) == (n is None):
        raise ConfigError("Give exactly one of `rate` (a share, CLI --top-share) or `n` (a row count, CLI --top-n).")
    if rate is not None and not 0 <= rate <= 1:
        raise ConfigError(f"`rate` (--top-share) is a share between 0 and 1, got {rate}; 5% is 0.05.")
    if n is not None and n < 0:
        raise ConfigError(f"`n` (--top-n) is a row count >= 0, got {n}.")


def _percent(rate: float) -> str:
    return f"{rate * 100:.4g}%"


# ------------------------------------------------------------------------------------------------
# srt-hf select --top-share R | --top-n N


class TopIFD:
    """``--top-share`` / ``--top-n``: top-IFD of a scored file, run folder or recycle folder."""

    name = "top-ifd"

    def add_arguments(self, parser, rule) -> None:
        rule.add_argument("--top-share", type=float, metavar="R",
                          help="Keep this share (0..1) of the eligible rows, highest IFD first.")
        rule.add_argument("--top-n", type=int, metavar="N", help="Keep this many eligible rows, highest IFD first.")
        parser.add_argument("--max-ifd", type=float, default=1.0,
                            help="Only rows with ifd below this are eligible (default 1; 'inf' for none).")
        parser.add_argument("--ifd-column", default="ifd", help="Column holding IFD.")
        parser.add_argument("--status-column", default="score_status",
                            help="Column holding the scoring status (used when present).")
        parser.add_argument("--all-rows", action="store_true",
                            help="IN is a run folder: rank all its rows, not only those the earlier run kept (top-IFD rules).")

    def chosen(self, args) -> bool:
        return args.top_share is not None or args.top_n is not None

    def run(self, ds, args, mapping):
        """(table, meta, columns to leave out of the files, column mapping of the SFT texts)."""
        from ..formats import ColumnMapping

        ifd_column, status_column = args.ifd_column, args.status_column
        recycled = ifd_column == "ifd" and ifd_column not in ds.column_names and "final_ifd" in ds.column_names
        if recycled:  # a `srt-hf recycle` run folder: the scores and texts of the final (recycled) rows
            ifd_column, status_column = "final_ifd", "final_score_status"
            if not any(vars(mapping).values()):
                mapping = ColumnMapping(instruction_column="final_instruction", input_column="final_input",
                                        response_column="final_response")
        if ifd_column not in ds.column_names:
            raise InputError(
                f"{args.input} has no {ifd_column!r} column, so it is not scored", column=ifd_column,
                fix=f"score it first: `srt-hf score {args.input} --out scored.parquet`, then `srt-hf select scored.parquet ...` "
                "(or name the IFD column with --ifd-column)",
            )
        excluded = None
        if _is_run_folder(Path(args.input)) and SELECTED in ds.column_names and not args.all_rows:
            excluded = [None if kept else f"not kept by the earlier run ({why})" for kept, why in zip(ds[SELECTED], ds[REASON])]
        status = ds[status_column] if status_column in ds.column_names else None
        ifd = ds[ifd_column]
        max_ifd = None if args.max_ifd == float("inf") else args.max_ifd
        decisions = top_ifd_decisions(ifd, status, rate=args.top_share, n=args.top_n, max_ifd=max_ifd, excluded=excluded)
        decisions.info["ifd_column"] = ifd_column
        decisions.info["within_earlier_selection"] = excluded is not None
        selected = decisions.selected
        meta = decisions.meta(
            stats={"ifd": {"before": quantiles(ifd), "after": quantiles([v for v, s in zip(ifd, selected) if s])}},
            histograms={"ifd": {"before": f"rows.parquet:{ifd_column}", "after": f"selected.parquet:{ifd_column}"}},
        )
        rifd_column = "final_rifd" if recycled else "rifd"
        if rifd_column in ds.column_names:
            rifd = ds[rifd_column]
            meta["stats"]["rifd"] = {"before": quantiles(rifd), "after": quantiles([v for v, s in zip(rifd, selected) if s])}
            meta["histograms"]["rifd"] = {"before": f"rows.parquet:{rifd_column}", "after": f"selected.parquet:{rifd_column}"}
        return decisions.table(ds), meta, [], mapping


def _is_run_folder(path: Path) -> bool:
    from .. import runs

    return path.is_dir() and runs.RunPaths(path).rows.is_file()
