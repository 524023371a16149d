"""`srt-hf recycle IN --teacher URL|default --student default --out RUN_DIR`: Selective Reflection-Tuning.

The teacher reflects on each instruction and then on each response; the student keeps a reflected
version only when its own IFD / reverse IFD says it is better; rows with IFD < 1 and r-IFD < 1 are
selected. Rerun the same command to resume an interrupted run: finished work is kept and the rows whose
teacher request failed are asked again (``--no-retry-failed`` keeps them). One run at a time per --out: a
second run into the same folder stops at once, naming the first one's PID.

``--teacher-batch DIR`` writes the teacher requests missing from the cache to batch files in DIR (for
``vllm run-batch`` or ``--submit openai``) and stops with exit code 3; rerunning the same command with the results
in DIR imports them and goes on.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

# The options of `srt-hf recycle --help`, under a heading each: heading -> the config fields it holds. A field of
# RecycleConfig, GenerationConfig or BatchConfig missing here is listed under "other options".
GROUPS = {
    "data": ["instruction_column", "input_column", "response_column", "messages_column"],
    "teacher prompts and replies": [
        "instruction_template", "instruction_template_with_input", "response_template", "response_template_with_input",
        "structured", "instruction_json_template", "instruction_json_template_with_input", "response_json_template",
        "response_json_template_with_input", "retry_parse_failures"],
    "teacher generation": ["temperature", "max_new_tokens", "top_p", "seed", "batch_size"],
    "teacher transport (servers)": ["timeout", "max_retries", "max_concurrency", "backoff_base", "backoff_max",
                                    "max_retry_after", "breaker_failures", "breaker_seconds"],
    "teacher batch files": ["teacher_batch", "submit", "completion_window"],
    "student (scoring)": ["student", "preset", "template", "max_length", "dtype", "device", "engine"],
    "selection": ["top_share"],
    "output and resume": ["chunk_rows", "retry_failed"],
}


def add_parser(sub) -> None:
    from ..cli import add_dataclass_arguments
    from ..pipeline import RecycleConfig
    from ..teachers import GenerationConfig
    from ..teachers.batch_teacher import BatchConfig

    p = sub.add_parser("recycle", help="Reflect with a teacher, select with the student, write a run folder.", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="JSON/JSONL/CSV/Parquet file, save_to_disk folder, Hub dataset id, or 'demo'.")
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    data, teacher = groups["data"], groups["teacher prompts and replies"]
    transport, output = groups["teacher transport (servers)"], groups["output and resume"]
    output.add_argument("--out", type=Path, required=True, help="Run folder (created; an existing one is resumed).")
    teacher.add_argument("--teacher", action="append", default=None, help="Teacher: a server base URL (repeat for several), 'default' (embedded SmolLM2), a Hub id or a local model directory.")
    teacher.add_argument("--teacher-model", default=None, help="Model name sent to the teacher server. Default: the one the server says it serves (/v1/models).")
    transport.add_argument("--teacher-api-key-env", default=None, metavar="NAME", help="Environment variable holding the teacher server's API key, sent to its host only. Default: OPENAI_API_KEY for api.openai.com, the HF token for Hugging Face hosts, nothing elsewhere.")
    transport.add_argument("--teacher-header", action="append", default=None, metavar="'NAME: VALUE'", help="A header for the teacher's host (repeatable), e.g. 'api-key: …' for Azure.")
    transport.add_argument("--teacher-extra-body", default=None, metavar="JSON", help="JSON object merged into every teacher request (server-specific sampling settings), e.g. '{\"top_k\": 20}'.")
    local_teacher = groups["teacher generation"]
    local_teacher.add_argument("--teacher-dtype", default=None, help="Local teacher dtype: float32 (default), bfloat16 or float16 (GPUs).")
    local_teacher.add_argument("--teacher-device", default=None, help="Local teacher device, e.g. cuda or cuda:1. Default: cuda when available, else cpu.")
    data.add_argument("--split", default="train", help="Split of a Hub dataset or DatasetDict folder.")
    data.add_argument("--limit", type=int, default=None, help="Recycle only the first N rows.")
    listed = {name for names in GROUPS.values() for name in names}
    other = p.add_argument_group("other options")
    for cls in (RecycleConfig, GenerationConfig, BatchConfig):
        for title, names in GROUPS.items():
            add_dataclass_arguments(groups[title], cls, only=names)
        add_dataclass_arguments(other, cls, skip=listed)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import dataclass_from_args
    from ..dataio import apply_limit, load_input
    from ..errors import InputError
    from ..formats import describe, detect_format, mapped_text_columns, read_report
    from ..pipeline import RecycleConfig, recycle
    from ..status import tally
    from ..summary import recycle_summary
    from ..teachers import GenerationConfig, load_teacher
    from ..teachers.batch_teacher import BatchConfig
    from ..teachers.factory import endpoint_options

    config = dataclass_from_args(RecycleConfig, args)
    generation = dataclass_from_args(GenerationConfig, args)
    batch = dataclass_from_args(BatchConfig, args)
    options = endpoint_options(args.teacher_api_key_env, args.teacher_header, args.teacher_extra_body)
    local = {k: v for k, v in (("dtype", args.teacher_dtype), ("device", args.teacher_device)) if v}
    teacher = load_teacher(args.teacher or ["default"], model=args.teacher_model, config=generation, **options, **local)
    ds = apply_limit(load_input(args.input, args.split, text_columns=mapped_text_columns(config)), args.limit)
    fmt = detect_format(ds.column_names, config)  # fail before loading any model
    print(f"srt-hf recycle: {args.input}: {describe(fmt)}; rows read: {read_report(ds, fmt)}")
    result = recycle(ds, teacher=teacher, out=args.out, config=config, source=args.input, batch=batch)
    print(f"\nsrt-hf recycle: {len(result.rows)} rows -> {result.run_dir}\n")
    print(recycle_summary(result.meta))
    if not any(v is not None and math.isfinite(v) for v in result.rows["original_ifd"]):
        counts = ", ".join(f"{kind} {n}" for kind, n in tally(result.rows["original_score_status"]).items())
        raise InputError(f"the student could score no row of {args.input} ({counts}); each row's reason is in {result.run_dir}/rows.parquet "
                         "(original_score_status)", fix="check that the columns hold the texts (--instruction-column, "
                         "--input-column, --response-column, --messages-column) and the statuses above")
    return 0
