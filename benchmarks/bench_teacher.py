"""Local teacher throughput: LocalTeacher (JSON grammar + decoding guards) against plain ``model.generate``.

Both sides run the same instruction-reflection prompts (alpaca rows, the JSON layout's prompt), batched the same
way, greedy, with the same ``max_new_tokens``, on the same model in one process; the rounds alternate and the
medians count. LocalTeacher adds the JSON grammar (llguidance) and the decoding guards (no repeated n-gram, the
soft string length); plain ``generate`` adds nothing. Goal (issue 20): LocalTeacher >= 80% of plain generate.

    python benchmarks/bench_teacher.py --model llama-1b --device cuda --dtype bfloat16 --batch 32   # the GPU figure
    python benchmarks/bench_teacher.py --model tiny --rows 8 --batch 4 --max-new-tokens 32         # a CPU dry run
    python benchmarks/bench_teacher.py ... --profile     # where LocalTeacher's time goes (one batch, cProfile)

``--model``: a shape of ``random_student.py`` (random weights, the kit's tokenizer; speed depends on shapes) or a
model folder. Two throughputs are printed: *generated tokens/s* counts each row's tokens up to its end of sequence
(what a user gets); *slot tokens/s* counts every (row, step) the batch computed, so its ratio is the per-step cost
of the grammar and guards alone, whatever the two sides' reply lengths. The last line starts with ``RESULT``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_student import SHAPES, build_random_student  # noqa: E402

from srt_hf.formats import Example  # noqa: E402
from srt_hf.parsing import json_schema  # noqa: E402
from srt_hf.reflection import InstructionReflection  # noqa: E402
from srt_hf.teachers import GenerationConfig  # noqa: E402
from srt_hf.teachers.local import LocalTeacher, _stop_ids  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_cherry_5_percent.json"
DEMO_DATA = Path(__file__).resolve().parents[1] / "srt_hf" / "data" / "demo_alpaca.jsonl"


def conversations(path: Path, n: int, teacher) -> list[list[dict]]:
    """The instruction-reflection request (JSON layout) of the first ``n`` rows of an alpaca file."""
    from datasets import load_dataset

    rows = load_dataset("json", data_files=str(path), split="train")
    rows = rows.select(range(min(n, len(rows))))
    reflect = InstructionReflection(teacher)
    out = [reflect.render(Example(r["instruction"], r.get("input") or "", r["output"], []), json=True) for r in rows]
    return (out * (n // max(len(out), 1) + 1))[:n]  # a small file repeats to fill the batches


class Tally:
    """Counts what each ``generate`` call produced: tokens up to each row's end, and (row, step) slots."""

    def __init__(self, stops: set[int]):
        self.stops, self.tokens, self.slots = stops, 0, 0

    def add(self, new: torch.Tensor) -> None:  # new: (B, T_new)
        rows, steps = new.shape
        self.slots += rows * steps
        hit = torch.isin(new, torch.tensor(sorted(self.stops), device=new.device)) if self.stops else torch.zeros_like(new, dtype=torch.bool)
        first = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.full((rows,), steps, device=new.device))
        self.tokens += int(first.sum())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_teacher(teacher: LocalTeacher, convs, batch: int, settings: dict, schema: dict | None, tally: Tally) -> float:
    """Seconds for LocalTeacher.generate_batch over ``convs``; ``tally`` sees every generate output."""
    _, model = teacher.load()
    original = model.generate

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        tally.add(out[:, kwargs["input_ids"].shape[1]:])
        return out

    model.generate = counting
    try:
        sync(teacher.device)
        start = time.perf_counter()
        for lo in range(0, len(convs), batch):
            teacher.generate_batch(convs[lo:lo + batch], settings, schema)
        sync(teacher.device)
        return time.perf_counter() - start
    finally:
        del model.generate  # back to the class's method


def run_plain(teacher: LocalTeacher, convs, batch: int, settings: dict, tally: Tally) -> float:
    """Seconds for plain ``model.generate`` on the same rendered prompts, padding and generation settings."""
    tokenizer, model = teacher.load()
    gen = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    gen.max_new_tokens, gen.max_length, gen.pad_token_id = settings["max_new_tokens"], None, tokenizer.pad_token_id
    gen.do_sample, gen.temperature, gen.top_p, gen.top_k = False, None, None, None
    prompts = [teacher._render(tokenizer, c) for c in convs]
    sync(teacher.device)
    start = time.perf_counter()
    for lo in range(0, len(prompts), batch):
        enc = tokenizer(prompts[lo:lo + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=gen)
        tally.add(out[:, enc["input_ids"].shape[1]:])
    sync(teacher.device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b", help=f"a random shape ({', '.join(SHAPES)}) or a model folder")
    ap.add_argument("--data", type=Path, default=None, help="alpaca JSON/JSONL (default: ../shared/data or the demo set)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-grammar", action="store_true", help="guards only (where llguidance is missing)")
    ap.add_argument("--serial-grammar", action="store_true", help="fill the rows' grammar masks one after another, "
                    "not on llguidance's thread pool (which LocalTeacher uses with >= 8 cores)")
    ap.add_argument("--profile", action="store_true", help="cProfile one LocalTeacher batch and print the top entries")
    args = ap.parse_args(argv)

    if args.serial_grammar:
        from srt_hf.teachers import structured

        structured.POOL_MIN_CORES = 1 << 30
    path = build_random_student(args.model) if args.model in SHAPES else Path(args.model)
    data = args.data or (SHARED_DATA if SHARED_DATA.is_file() else Path(os.environ.get("SRT_HF_GPU_DATA", "-"), SHARED_DATA.name))
    data = data if data.is_file() else DEMO_DATA
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0.0, batch_size=args.batch)
    teacher = LocalTeacher(str(path), config, device=args.device, dtype=args.dtype, no_repeat_ngram_size=5,
                           soft_string_chars=400)
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    from srt_hf.teachers.structured import available_locally

    grammar = available_locally() and not args.no_grammar
    schema = json_schema("instruction", review_max_length=teacher.review_max_length) if grammar else None
    convs = conversations(data, args.rows, teacher)
    tokenizer, model = teacher.load()
    stops = _stop_ids(model.generation_config, tokenizer)
    print(f"model: {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters), {args.dtype} on "
          f"{args.device}; {len(convs)} prompts from {data.name}, batch {args.batch}, max_new_tokens {args.max_new_tokens}; "
          f"LocalTeacher: {'JSON grammar + ' if grammar else 'NO grammar (llguidance missing) + '}guards; grammar masks "
          f"{'serial' if args.serial_grammar or (os.cpu_count() or 1) < 8 or args.batch < 8 else 'on a thread pool'}")

    run_teacher(teacher, convs[:args.batch], args.batch, settings, schema, Tally(stops))  # warm-up both sides
    run_plain(teacher, convs[:args.batch], args.batch, settings, Tally(stops))
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run_teacher(teacher, convs[:args.batch], args.batch, settings, schema, Tally(stops))
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        print(text.getvalue())

    results: dict[str, list[tuple[float, float]]] = {"plain generate": [], "LocalTeacher": []}
    for _ in range(args.rounds):
        for name in results:
            tally = Tally(stops)
            seconds = (run_plain(teacher, convs, args.batch, settings, tally) if name == "plain generate"
                       else run_teacher(teacher, convs, args.batch, settings, schema, tally))
            results[name].append((tally.tokens / seconds, tally.slots / seconds))
    print(f"{'':16} {'generated tok/s':>16} {'slot tok/s':>12}   (medians of {args.rounds} rounds)")
    med = {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)) for name, runs in results.items()}
    for name, (tokens, slots) in med.items():
        print(f"{name:16} {tokens:16.1f} {slots:12.1f}")
    ratio = med["LocalTeacher"][0] / med["plain generate"][0]
    per_step = med["LocalTeacher"][1] / med["plain generate"][1]
    verdict = "meets" if ratio >= 0.8 else "BELOW"
    print(f"RESULT LocalTeacher/generate {ratio:.2f}x generated tok/s ({verdict} the 0.80 goal), {per_step:.2f}x per step; "
          f"{med['LocalTeacher'][0]:.0f} vs {med['plain generate'][0]:.0f} tok/s, {args.model} {args.dtype} {args.device} "
          f"batch {args.batch}{'' if grammar else ', no grammar'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
