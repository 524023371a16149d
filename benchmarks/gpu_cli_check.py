"""The CLI on a device, with local model folders as a GPU user passes them (issue 20, item 2).

    python benchmarks/gpu_cli_check.py --device cuda --dtype bfloat16 --data FILE       # on the GPU machine
    python benchmarks/gpu_cli_check.py --device cpu --shape tiny --rows 4 --recycle-rows 2   # a CPU dry run

Builds a random student of a real shape (default: SmolLM2-135M's, with the kit's tokenizer; random weights, so
the texts are noise but every code path and shape is real), saves it as a local folder and runs, as subprocesses:
``srt-hf score IN --student DIR --device D --dtype T`` and ``srt-hf recycle IN --teacher DIR --student DIR
--teacher-device D --teacher-dtype T --device D --dtype T``. Checks that every row comes out and the run folder
holds its usual files, and prints one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_student import build_random_student  # noqa: E402

RUN_FILES = ("run.json", "rows.parquet", "selected.parquet", "sft/train.parquet", "README.md", "report.html")


def cli(*argv: str) -> float:
    """Run ``python -m srt_hf ARGV`` (output to this process's), fail on a non-zero exit; seconds taken."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "srt_hf", *argv])
    if done.returncode:
        raise SystemExit(f"srt-hf {argv[0]} exited with {done.returncode}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    import pyarrow.parquet as pq

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--recycle-rows", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--work", default=os.environ.get("SRT_HF_BENCH_CACHE", "/tmp/srt_hf_bench"))
    args = ap.parse_args(argv)

    model = str(build_random_student(args.shape, args.work))
    work = Path(args.work)
    scores = work / f"cli-score-{args.device.replace(':', '')}.parquet"
    run = work / f"cli-recycle-{args.device.replace(':', '')}"
    for old in (scores,):
        old.unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(run)], check=True)
    on = ("--device", args.device, "--dtype", args.dtype)
    score_s = cli("score", args.data, "--student", model, "--limit", str(args.rows), "--out", str(scores), *on)
    recycle_s = cli("recycle", args.data, "--limit", str(args.recycle_rows), "--teacher", model, "--student", model,
                    "--teacher-device", args.device, "--teacher-dtype", args.dtype, *on,
                    "--max-new-tokens", str(args.max_new_tokens), "--batch-size", "32", "--out", str(run))

    scored = pq.read_table(scores)
    statuses = scored.column("score_status").to_pylist()
    rows = pq.read_table(run / "rows.parquet").num_rows
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    meta = json.loads((run / "run.json").read_text())
    problems = []
    if scored.num_rows != args.rows:
        problems.append(f"score wrote {scored.num_rows} of {args.rows} rows")
    if rows != args.recycle_rows:
        problems.append(f"recycle wrote {rows} of {args.recycle_rows} rows")
    if missing:
        problems.append(f"run folder lacks {', '.join(missing)}")
    ok = sum(s == "ok" for s in statuses)
    print(f"score: {scored.num_rows} rows ({ok} ok) in {score_s:.1f} s; recycle: {rows} rows in {recycle_s:.1f} s; "
          f"counts {meta.get('counts')}")
    verdict = "; ".join(problems) or "every row out, run folder complete"
    print(f"RESULT {verdict}: score {scored.num_rows} rows {score_s:.0f}s, recycle {rows} rows {recycle_s:.0f}s "
          f"({args.shape}, {args.dtype} {args.device})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
