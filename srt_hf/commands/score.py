"""`srt-hf score IN --student … --preset … --out OUT`: IFD / reverse IFD of every row, to Parquet or JSONL."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def add_parser(sub) -> None:
    from ..cli import add_dataclass_arguments
    from ..scoring import ScoringConfig

    p = sub.add_parser("score", help="Score every row with IFD (and reverse IFD) under a student model.", description=__doc__)
    p.add_argument("input", metavar="IN", help="JSON/JSONL/CSV/Parquet file, save_to_disk folder, Hub dataset id, or 'demo'.")
    p.add_argument("--out", type=Path, required=True, help="Output file: .parquet or .jsonl.")
    p.add_argument("--split", default="train", help="Split of a Hub dataset or DatasetDict folder.")
    p.add_argument("--chunk-rows", type=int, default=64, help="Rows per resumable chunk (progress and memory unit).")
    p.add_argument("--limit", type=int, default=None, help="Score only the first N rows.")
    add_dataclass_arguments(p, ScoringConfig, skip=("output_prefix",))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .. import __version__
    from ..chunks import map_in_chunks, process_state, read_parts
    from ..cli import dataclass_from_args
    from ..dataio import check_output_path, load_input, write_tables
    from ..formats import detect_format
    from ..scoring import IFDScorer, ScoringConfig
    from ..summary import score_summary

    check_output_path(args.out)
    config = dataclass_from_args(ScoringConfig, args)
    scorer = IFDScorer(config)
    ds = load_input(args.input, args.split)
    if args.limit is not None:
        ds = ds.select(range(min(args.limit, len(ds))))
    detect_format(ds.column_names, config)  # fail before loading the model
    work = args.out.with_name(args.out.name + ".parts")
    key = f"{__version__}:{config.digest()}:{ds._fingerprint}"
    parts = map_in_chunks(ds, scorer, work, key=key, chunk_rows=args.chunk_rows, desc=f"scoring ({config.preset})")
    state = process_state()
    if state and not state.is_main_process:
        return 0
    from .. import models

    provenance = {
        "source": {"name": str(args.input), "split": args.split},
        "student": {"model": models.display_name(config.student), "hub_id": models.hub_id(config.student)},
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
    print(score_summary(
        result.column("score_status").to_pylist(),
        result.column("ifd").to_pylist(),
        result.column("rifd").to_pylist() if "rifd" in result.column_names else None,
    ))
    return 0
