"""The run folder of a selection: every row with its decision, the kept rows, their SFT data, run.json, the card.

    table = decisions.table(ds)                       # see srt_hf.selection.Decisions
    meta = write_selection_run(Path("runs/top5"), table, decisions.meta(), mapping=ColumnMapping())

The layout is :class:`srt_hf.runs.RunPaths`; the dataset card is written from run.json.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..errors import InputError
from .decisions import REASON, SELECTED, reason_counts


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
    (``meta`` + counts + versions + the figures of :mod:`srt_hf.figures`; ``methods`` gains the scoring preset's)
    and README.md (the dataset card).
    ``drop_columns`` are left out of the Parquet files (e.g. large embedding vectors). Returns the metadata written.
    """
    from .. import figures, invocation, runs
    from ..cards import write_dataset_card
    from ..dataio import write_tables
    from ..formats import ColumnMapping
    from ..templates import preset_methods

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
        **({"command": command} if (command := invocation.current()) else {}),
        **meta,
        "counts": {"input": len(table), **meta.get("counts", {}), "selected": int(selected_mask.sum()), "sft": sft_rows},
        "reasons": reason_counts(reasons),
    }
    full["score_figures"] = {score: [f.as_dict() for f in figs] for score, figs in figures.score_figures(run_dir, full).items()}
    choices = [c for c in ("instruction_choice", "response_choice") if c in table.column_names]
    written = figures.teacher_written(table.select_columns(choices).to_dict() if choices else {}, selected_mask.tolist())
    if written is not None:
        full["teacher_written"] = written
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
    from ..formats import RowProblem, detect_format, read_batch

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
