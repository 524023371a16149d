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
    p.add_argument("--teacher-model", default=None, help="Model name sent to the teacher server. Default: the one the server says it serves (/v1/models).")
    p.add_argument("--teacher-api-key-env", default=None, metavar="NAME", help="Environment variable holding the teacher server's API key, sent to its host only. Default: OPENAI_API_KEY for api.openai.com, the HF token for Hugging Face hosts, nothing elsewhere.")
    p.add_argument("--teacher-header", action="append", default=None, metavar="'NAME: VALUE'", help="A header for the teacher's host (repeatable), e.g. 'api-key: …' for Azure.")
    p.add_argument("--teacher-extra-body", default=None, metavar="JSON", help="JSON object merged into every teacher request (server-specific sampling settings), e.g. '{\"top_k\": 20}'.")
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
    from ..teachers.factory import endpoint_options

    config = dataclass_from_args(RecycleConfig, args)
    generation = dataclass_from_args(GenerationConfig, args)
    options = endpoint_options(args.teacher_api_key_env, args.teacher_header, args.teacher_extra_body)
    teacher = load_teacher(args.teacher or ["default"], model=args.teacher_model, config=generation, **options)
    ds = load_input(args.input, args.split)
    if args.limit is not None:
        ds = ds.select(range(min(args.limit, len(ds))))
    detect_format(ds.column_names, config)  # fail before loading any model
    result = recycle(ds, teacher=teacher, out=args.out, config=config, source=args.input)
    print(f"\nsrt-hf recycle: {len(result.rows)} rows -> {result.run_dir}\n")
    print(recycle_summary(result.meta))
    return 0
