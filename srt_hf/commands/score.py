"""`srt-hf score IN --student … --preset … --out OUT`: IFD / reverse IFD of every row, to Parquet or JSONL."""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path


def add_parser(sub) -> None:
    from ..cli import add_dataclass_arguments
    from ..scoring import ScoringConfig

    p = sub.add_parser("score", help="Score every row with IFD (and reverse IFD) under a student model.", description=__doc__)
    p.add_argument("input", metavar="IN", help="JSON/JSONL/CSV/Parquet file, save_to_disk folder, Hub dataset id, or 'demo'.")
    p.add_argument("--out", type=Path, required=True, help="Output file: .parquet or .jsonl.")
    p.add_argument("--split", default="train", help="Split of a Hub dataset or DatasetDict folder.")
    p.add_argument("--chunk-rows", type=int, default=64, help="Rows per resumable chunk (the unit of resumption; the bar moves per batch inside it). A GPU student scores up to 1024 rows, whole chunks, in one call.")
    p.add_argument("--limit", type=int, default=None, help="Score only the first N rows.")
    add_dataclass_arguments(p, ScoringConfig, skip=("output_prefix",))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .. import __version__
    from ..chunks import map_in_chunks, process_state, read_parts, row_digests
    from ..cli import dataclass_from_args
    from ..dataio import apply_limit, check_output_path, load_input, write_tables
    from ..errors import ConfigError, InputError
    from ..formats import describe, detect_format, mapped_text_columns, read_report
    from ..locks import is_main_process, output_lock
    from ..scoring import IFDScorer, ScoringConfig
    from ..status import tally
    from ..summary import score_summary

    check_output_path(args.out)
    if args.chunk_rows < 1:
        raise ConfigError(f"--chunk-rows {args.chunk_rows}: a chunk holds at least one row. Fix: pass --chunk-rows 1 or more (default 64)")
    config = dataclass_from_args(ScoringConfig, args)
    scorer = IFDScorer(config)
    ds = apply_limit(load_input(args.input, args.split, text_columns=mapped_text_columns(config)), args.limit)
    fmt = detect_format(ds.column_names, config)  # fail before loading the model
    main = is_main_process()
    if main:
        print(f"srt-hf score: {args.input}: {describe(fmt)}; rows read: {read_report(ds, fmt)}")
    work = args.out.with_name(args.out.name + ".parts")
    key = f"{__version__}:{config.digest()}"  # the input is each chunk's own rows: an edit redoes the chunks it changed
    with output_lock(args.out, folder=False, command="srt-hf score"):  # covers OUT and OUT.parts
        parts = map_in_chunks(ds, scorer, work, key=key, chunk_rows=args.chunk_rows, desc=f"scoring ({config.preset})",
                              inputs=row_digests(ds, args.chunk_rows), rows_per_call=scorer.rows_per_call())
        state = process_state()
        if not main:
            return 0
        from .. import models

        provenance = {
            "source": {"name": str(args.input), "split": args.split},
            "student": {"model": models.display_name(config.student), "hub_id": models.hub_id(config.student),
                        "dtype": config.dtype, **(scorer.engine_used or {})},  # which engine scored (nothing when every chunk was resumed)
            "scoring": {"preset": config.preset, "template": scorer.preset.template},
        }
        rows = write_tables(read_parts(parts), args.out, provenance=provenance)
        summary_columns = [c for c in ("ifd", "rifd", "score_status") if c in config.output_columns()]
        result = pa.concat_tables(pq.read_table(p, columns=summary_columns) for p in parts)
        shutil.rmtree(work, ignore_errors=True)
    processes = f", {state.num_processes} processes" if state else ""
    print(
        f"\nsrt-hf score: {rows} rows -> {args.out} "
        f"(student {config.student}, preset {config.preset}, template {scorer.preset.template}{processes})\n"
    )
    statuses = result.column("score_status").to_pylist()
    print(score_summary(
        statuses,
        result.column("ifd").to_pylist(),
        result.column("rifd").to_pylist() if "rifd" in result.column_names else None,
    ))
    if not any(v is not None and math.isfinite(v) for v in result.column("ifd").to_pylist()):
        counts = ", ".join(f"{kind} {n}" for kind, n in tally(statuses).items())
        raise InputError(f"no row of {args.input} could be scored ({counts}); each row's reason is in the score_status column of {args.out}",
                         fix="check that the columns hold the texts (--instruction-column, --input-column, --response-column, "
                         "--messages-column) and the statuses above")
    return 0
