"""Selection rules that explain themselves, and the run folder they write.

Top-IFD share (Cherry LLM / Superfiltering, docs/ARCHITECTURE.md)::

    kept = select_top_ifd(scored, rate=0.05)                  # the kept rows, in their original order
    table = select_top_ifd(scored, rate=0.05, keep_all=True)  # every row + `selected`, `selection_reason`

Eligible rows are those scored ``ok`` with a finite ``ifd < max_ifd`` (IFD ≥ 1: the instruction does
not help predict the response). They are ranked by IFD, highest first (ties: the earlier row first),
and the first ``int(n_eligible * rate)`` — or ``min(n, n_eligible)`` — are kept. A share so small that
it keeps 0 rows is a legal outcome, and every row then says why it was dropped. Every rule here is
deterministic: the same input gives the same rows.

Every rule produces a boolean ``selected`` and a ``selection_reason`` per row (``kept: …`` /
``dropped: …``); :func:`write_selection_run` turns that into a run folder (see :mod:`srt_hf.runs`).
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import ConfigError, InputError
from .status import OK, is_ok

SELECTED, REASON = "selected", "selection_reason"


# ------------------------------------------------------------------------------------------------
# Top-IFD share


def top_ifd_decisions(
    ifd: Sequence[float | None],
    status: Sequence[str | None] | None = None,
    *,
    rate: float | None = None,
    n: int | None = None,
    max_ifd: float | None = 1.0,
    excluded: Sequence[str | None] | None = None,
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """The top-IFD rule on plain columns: ``(selected mask, reason per row, summary of the rule)``.

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
    return selected, reasons, info


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
    selected, reasons, _ = top_ifd_decisions(ds[ifd_column], status, rate=rate, n=n, max_ifd=max_ifd)
    return apply_decisions(ds, selected, reasons, keep_all=keep_all)


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
# Decisions → datasets


def apply_decisions(ds, selected: Sequence[bool], reasons: Sequence[str], *, keep_all: bool = False, extra: dict[str, list] | None = None):
    """The kept rows in original order, or (``keep_all``) every row with ``selected`` + ``selection_reason``."""
    table = with_decisions(ds, selected, reasons, extra)
    if keep_all:
        return table
    return table.select(np.flatnonzero(np.asarray(selected, dtype=bool))).remove_columns([SELECTED, REASON])


def with_decisions(ds, selected: Sequence[bool], reasons: Sequence[str], extra: dict[str, list] | None = None):
    """``ds`` with the ``selected`` / ``selection_reason`` columns (replaced if present) and any extra columns."""
    from datasets import Value

    columns = {SELECTED: [bool(s) for s in selected], REASON: list(reasons), **(extra or {})}
    present = [c for c in columns if c in ds.column_names]
    if present:
        ds = ds.remove_columns(present)
    for name, values in columns.items():
        if name == SELECTED:
            ds = ds.add_column(name, values, feature=Value("bool"))
        elif name == REASON:
            ds = ds.add_column(name, values, feature=Value("string"))
        else:
            ds = ds.add_column(name, values)
    return ds


def reason_counts(reasons: Sequence[str]) -> dict[str, int]:
    """Rows per reason kind, the reason text up to its first parenthesis (``dropped: ifd >= 1``)."""
    counts: dict[str, int] = {}
    for r in reasons:
        key = r.split(" (", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def quantiles(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """n and min/p25/median/p75/max of the finite values (for run.json)."""
    from .summary import QUANTILES

    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    names = ("min", "p25", "median", "p75", "max")
    if not len(arr):
        return {"n": 0, **dict.fromkeys(names)}
    return {"n": int(len(arr)), **{k: float(q) for k, q in zip(names, np.quantile(arr, QUANTILES))}}


# ------------------------------------------------------------------------------------------------
# The run folder


def write_selection_run(
    run_dir: Path,
    table,
    meta: dict[str, Any],
    *,
    mapping=None,
    drop_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """Write a run folder from a table with ``selected`` / ``selection_reason`` (every input row).

    Writes rows.parquet (every row), selected.parquet (the kept rows, original order),
    sft/train.parquet (the kept rows as conversational prompt/completion records), run.json
    (``meta`` + counts + versions; ``methods`` gains the scoring preset's) and README.md (the dataset card).
    ``drop_columns`` are left out of the Parquet files (e.g. large embedding vectors). Returns the metadata written.
    """
    from . import runs
    from .cards import write_dataset_card
    from .dataio import write_tables
    from .formats import ColumnMapping
    from .templates import preset_methods

    if SELECTED not in table.column_names or REASON not in table.column_names:
        raise InputError("the table has no selection columns", fix="build it with with_decisions(...) or keep_all=True")
    run_dir = Path(run_dir)
    paths = runs.RunPaths(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keep_cols = [c for c in table.column_names if c not in set(drop_columns)]
    table = table.select_columns(keep_cols)
    selected_mask = np.asarray(table[SELECTED], dtype=bool)
    chosen = table.select(np.flatnonzero(selected_mask))
    _write(table, paths.rows, write_tables)
    if len(chosen):
        _write(chosen, paths.selected, write_tables)
    else:
        _write_empty(table, paths.selected)
    if len(chosen):
        canon = _canonical(chosen, mapping or ColumnMapping())
        sft_rows = runs.write_sft(
            canon, paths.sft, instruction="_srt_instruction", input="_srt_input", response="_srt_response",
            id_column="id" if "id" in canon.column_names else None,
        )
    else:
        sft_rows = _write_empty_sft(paths.sft, with_id="id" in chosen.column_names)
    reasons = table[REASON]
    full = {
        "kind": "select",
        "srt_hf_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "counts": {"input": len(table), **meta.get("counts", {}), "selected": int(selected_mask.sum()), "sft": sft_rows},
        "reasons": reason_counts(reasons),
    }
    if "methods" in meta:  # what the caller did, plus what its scores came from (older callers: the card infers)
        full["methods"] = list(dict.fromkeys([*meta["methods"], *preset_methods(meta.get("scoring"))]))
    full.setdefault("columns", {}).update({
        SELECTED: "whether the selection rule kept the row",
        REASON: "why the row was kept or dropped (kept: … / dropped: …)",
    })
    runs.write_meta(run_dir, full)
    write_dataset_card(run_dir)
    return full


def _write(ds, path: Path, write_tables) -> None:
    write_tables(ds.with_format("arrow").iter(batch_size=10_000), path)


def _write_empty(ds, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(ds.with_format("arrow")[0:0], path)


def _canonical(ds, mapping):
    """``ds`` plus the canonical instruction / input / response columns the SFT writer reads."""
    from .formats import RowProblem, detect_format, read_batch

    fmt = detect_format(ds.column_names, mapping)

    def convert(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"_srt_instruction": [], "_srt_input": [], "_srt_response": []}
        for ex in read_batch(batch, fmt):
            if isinstance(ex, RowProblem):
                raise InputError(f"a kept row cannot be read as SFT data: {ex}", fix="fix the row or drop it before selecting")
            out["_srt_instruction"].append(ex.instruction)
            out["_srt_input"].append(ex.input)
            out["_srt_response"].append(ex.response)
        return out

    return ds.map(convert, batched=True, desc="canonical view")


def _write_empty_sft(path: Path, *, with_id: bool) -> int:
    """An SFT file with no rows but the prompt/completion schema, so readers still see the format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    fields = [("prompt", messages), ("completion", messages)] + ([("id", pa.string())] if with_id else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.schema(fields).empty_table(), path)
    return 0
