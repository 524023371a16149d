"""Planning throughput: the student's texts tokenized one call per text (``plan_row`` in a loop) against
``plan_rows`` (every text of a batch in one tokenizer call), same rows, same tokenizer, one process.

Planning runs on the CPU before every batch the student scores; on a GPU that scores hundreds of rows a second
it can set the pace. Both sides must give equal plans. The tokenizer's Rust threads follow
``TOKENIZERS_PARALLELISM`` (unset: on).

    python benchmarks/bench_planning.py [--rows 1024] [--rounds 3] [--preset reflection] [--data FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scoring import DEMO_DATA, SHARED_DATA, load_rows  # noqa: E402

from srt_hf.formats import detect_format, read_batch  # noqa: E402
from srt_hf.student.plan import Encoder, plan_row, plan_rows  # noqa: E402
from srt_hf.templates import get_preset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA if SHARED_DATA.exists() else DEMO_DATA)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--preset", default="reflection")
    ap.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: the embedded model's)")
    args = ap.parse_args()

    from srt_hf.models import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    batch = load_rows(args.data, args.rows)
    examples = read_batch(batch, detect_format(list(batch)))
    preset = get_preset(args.preset)
    L, rifd = preset.max_length or 2048, args.preset == "reflection"

    def text_by_text():  # what the scorer did before plan_rows: one Encoder (cache) per batch, one call per text
        enc = Encoder(tok)
        return [plan_row(ex, enc, preset, L, rifd) for ex in examples]

    sides = {"one call per text": text_by_text, "plan_rows": lambda: plan_rows(examples, Encoder(tok), preset, L, rifd)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    plans = {}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            t = time.perf_counter()
            plans[name] = sides[name]()
            times[name].append(time.perf_counter() - t)
    if plans["one call per text"] != plans["plan_rows"]:
        raise SystemExit("MISMATCH: plan_rows planned differently")
    n = len(examples)
    print(f"data: {args.data.name} ({n} rows), preset {args.preset}, {os.cpu_count()} cores, "
          f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}")
    rate = {name: n / statistics.median(t) for name, t in times.items()}
    for name in sides:
        print(f"  {name:18} {rate[name]:8.0f} rows/s  (median of {args.rounds})")
    print(f"RESULT plan_rows {rate['plan_rows']:.0f} rows/s, {rate['plan_rows'] / rate['one call per text']:.2f}x "
          "one call per text; plans equal")


if __name__ == "__main__":
    main()
