"""`srt-hf recycle IN --teacher URL|default --student default --out RUN_DIR`: Selective Reflection-Tuning.

The teacher reflects on each instruction and then on each response; the student keeps a reflected
version only when its own IFD / reverse IFD says it is better; rows with IFD < 1 and r-IFD < 1 are
selected. Rerun the same command to resume an interrupted run.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    from ..cli import add_dataclass_arguments
    from ..pipeline import RecycleConfig
    from ..teachers import GenerationConfig

    p = sub.add_parser("recycle", help="Reflect with a teacher, select with the student, write a run folder.", description=__doc__)
    p.add_argument("input", metavar="IN", help="JSON/JSONL/CSV/Parquet file, save_to_disk folder, Hub dataset id, or 'demo'.")
    p.add_argument("--out", type=Path, required=True, help="Run folder (created; an existing one is resumed).")
    p.add_argument("--teacher", action="append", default=None, help="Teacher: a server base URL (repeat for several), 'default' (embedded SmolLM2), a Hub id or a local model directory.")
    p.add_argument("--teacher-model", default=None, help="Model name sent to the teacher server (vLLM and transformers serve need it).")
    p.add_argument("--split", default="train", help="Split of a Hub dataset or DatasetDict folder.")
    p.add_argument("--limit", type=int, default=None, help="Recycle only the first N rows.")
    add_dataclass_arguments(p, RecycleConfig)
    add_dataclass_arguments(p, GenerationConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import dataclass_from_args
    from ..dataio import load_input
    from ..formats import detect_format
    from ..pipeline import RecycleConfig, recycle
    from ..summary import recycle_summary
    from ..teachers import GenerationConfig, load_teacher

    config = dataclass_from_args(RecycleConfig, args)
    generation = dataclass_from_args(GenerationConfig, args)
    teachers = args.teacher or ["default"]
    urls = [t for t in teachers if t.startswith(("http://", "https://"))]
    if urls and len(urls) != len(teachers) or not urls and len(teachers) > 1:
        from ..errors import ConfigError

        raise ConfigError("Repeat --teacher only with server URLs; a local teacher is one model.")
    teacher = load_teacher(",".join(teachers), model=args.teacher_model, config=generation)
    ds = load_input(args.input, args.split)
    if args.limit is not None:
        ds = ds.select(range(min(args.limit, len(ds))))
    detect_format(ds.column_names, config)  # fail before loading any model
    result = recycle(ds, teacher=teacher, out=args.out, config=config, source=args.input)
    print(f"\nsrt-hf recycle: {len(result.rows)} rows -> {result.run_dir}\n")
    print(recycle_summary(result.meta))
    return 0
