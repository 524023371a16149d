"""Scoring throughput: srt_hf's IFDScorer vs the reference loop, same rows, same model, one process.

The baseline re-does what the public reference scripts do for the reflection preset: for every row,
four separate forward passes at batch size 1 through ``model(input_ids, labels=labels)`` (full logits
at every position, the loss over the 49k vocabulary everywhere). srt_hf batches by length, runs shared
prompt heads once and computes logits only at labelled positions. Both must agree within 1e-4.

    python benchmarks/bench_scoring.py [--data FILE] [--rows 32] [--student default] [--device cuda] [--dtype bfloat16]

On a GPU the reference loop runs in float32 (as the references do) and srt_hf in ``--dtype``; the
difference bound is then the dtype's tolerance (float32 1e-4; see README "Student dtype").
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from srt_hf import IFDScorer, ScoringConfig
from srt_hf.formats import detect_format, read_batch
from srt_hf.student.reference import reference_losses

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_cherry_5_percent.json"
DEMO_DATA = Path(__file__).resolve().parents[1] / "srt_hf" / "data" / "demo_alpaca.jsonl"


def load_rows(path: Path, n: int) -> dict[str, list]:
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(path), split="train")
    return ds.select(range(min(n, len(ds))))[:]


class Counter:
    """Counts the tokens a computation pushes through the model body, attention and LM head."""

    def __init__(self):
        self.body_tokens = self.head_tokens = self.attn_pairs = 0

    def flops(self, cfg) -> float:
        h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
        kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
        per_token = layers * 2 * (h * h * 2 + h * kv * 2 + 3 * h * inter)
        return per_token * self.body_tokens + layers * 4 * h * self.attn_pairs + 2 * h * cfg.vocab_size * self.head_tokens


def _count(counter: Counter, n: int, head: int) -> None:
    counter.body_tokens += n
    counter.head_tokens += head
    counter.attn_pairs += n * (n + 1) // 2


def srt_hf_counts(scorer: IFDScorer, examples, counter: Counter) -> None:
    """Tokens srt_hf actually computes (deduplicated, shared heads once per group, head at labels only)."""
    from srt_hf.student.plan import Encoder
    from srt_hf.student.spans import shared_prefix_len

    enc = Encoder(scorer.tokenizer)
    spans = {s for ex in examples for s in scorer._plan(ex, enc).spans() if s.n_scored > 0}
    groups: dict[str, list] = {}
    for s in spans:
        groups.setdefault(s.group, []).append(s)
    for members in groups.values():
        p = shared_prefix_len(members) if len(members) > 1 else 0
        counter.body_tokens += p
        counter.attn_pairs += p * (p + 1) // 2
        for s in members:
            n = len(s.ids) - p
            counter.body_tokens += n
            counter.head_tokens += s.n_scored
            counter.attn_pairs += n * p + n * (n + 1) // 2


def matmul_peak(cfg, tokens: int = 1024, trials: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of ``F.linear`` at the model's own shapes, device and dtype (the ceiling for this workload).

    The best of several short trials, so that a moment of load from elsewhere on a shared machine does not
    lower the ceiling; ``main`` also takes it before and after the timed rounds and keeps the higher.
    """
    h, inter = cfg.hidden_size, cfg.intermediate_size
    best = 0.0
    for k, n in ((h, h), (h, inter), (inter, h), (h, cfg.vocab_size)):
        x, w = torch.randn(tokens, k, device=device, dtype=dtype), torch.randn(n, k, device=device, dtype=dtype)
        torch.nn.functional.linear(x, w)
        for _ in range(trials):
            _sync(device)
            t = time.perf_counter()
            torch.nn.functional.linear(x, w)
            _sync(device)
            best = max(best, 2 * tokens * k * n / (time.perf_counter() - t) / 1e9)
    return best


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA if SHARED_DATA.exists() else DEMO_DATA)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds, alternating which side runs first; medians are reported.")
    parser.add_argument("--student", default="default", help="a model id or folder, or random:llama-1b (a randomly initialised 1B Llama with the embedded tokenizer; see random_student.py)")
    parser.add_argument("--template", default="vicuna", choices=["vicuna", "alpaca"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--profile", action="store_true", help="After the rounds, profile one srt_hf pass and print where its time goes.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="srt_hf's student dtype; the baseline stays float32")
    args = parser.parse_args()

    batch = load_rows(args.data, args.rows)
    if args.student.startswith("random:"):
        from random_student import build_random_student

        args.student = str(build_random_student(args.student.removeprefix("random:")))
    scorer = IFDScorer(ScoringConfig(student=args.student, preset="reflection", template=args.template, device=args.device, dtype=args.dtype))
    if args.dtype == "float32":
        model, tok = scorer.model, scorer.tokenizer
    else:  # the reference computes in float32: its own model
        reference = IFDScorer(ScoringConfig(student=args.student, preset="reflection", template=args.template, device=args.device))
        model, tok = reference.model, reference.tokenizer
    bound = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}[args.dtype]
    examples = read_batch(batch, detect_format(list(batch)))
    rows = [{"instruction": e.instruction, "input": e.input, "response": e.response} for e in examples]
    n = len(rows)
    where = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"data: {args.data} ({n} rows), student: {args.student} ({args.dtype}), device: {where}")

    scorer({k: v[:2] for k, v in batch.items()})  # warm-up
    print(f"srt_hf scoring path: {scorer_path(scorer)}")
    peak_dtype = getattr(torch, args.dtype)
    peak_before = matmul_peak(model.config, device=model.device, dtype=peak_dtype)
    times: dict[str, list[float]] = {"baseline": [], "srt_hf": []}
    for r in range(args.rounds):
        for side in (("baseline", "srt_hf") if r % 2 == 0 else ("srt_hf", "baseline")):
            _sync(model.device)
            t = time.perf_counter()
            if side == "srt_hf":
                ours = scorer(batch)
            else:
                base_counter = Counter()
                ref = reference_losses(model, tok, rows, args.template, on_pass=lambda n, c=base_counter: _count(c, n, n))
            _sync(model.device)
            times[side].append(time.perf_counter() - t)
            print(f"round {r + 1}: {side:8} {times[side][-1]:7.1f} s", flush=True)
    t_base, t_ours = float(np.median(times["baseline"])), float(np.median(times["srt_hf"]))

    worst = 0.0
    for i, r in enumerate(ref):
        for key, value in r.items():
            if not (math.isnan(value) and math.isnan(ours[key][i])):
                worst = max(worst, abs(ours[key][i] - value) / max(abs(value), 1e-12))
    our_counter = Counter()
    srt_hf_counts(scorer, examples, our_counter)
    cfg = model.config
    peak = max(peak_before, matmul_peak(cfg, device=model.device, dtype=peak_dtype))
    print(f"max relative difference of the four losses: {worst:.2e} ({'OK' if worst <= bound else 'MISMATCH'}, bound {bound:g} for {args.dtype})")
    print(f"{'':10}{'rows/s':>10}{'tokens/s':>12}{'GFLOP':>10}{'GFLOP/s':>10}{'% of peak':>11}")
    for name, secs, c in (("baseline", t_base, base_counter), ("srt_hf", t_ours, our_counter)):
        gf = c.flops(cfg) / 1e9
        print(f"{name:10}{n / secs:>10.3f}{c.body_tokens / secs:>12.0f}{gf:>10.1f}{gf / secs:>10.1f}{100 * gf / secs / peak:>10.0f}%")
    print(f"matmul peak at the model's shapes ({args.dtype} linear on {where}, best trial): {peak:.1f} GFLOP/s")
    print(f"speed-up srt_hf / baseline: {t_base / t_ours:.2f}x  (medians of {args.rounds} rounds; same rows, same outputs)")
    print(f"srt_hf does {our_counter.flops(cfg) / base_counter.flops(cfg):.2f}x of the baseline's FLOPs")
    if args.profile:
        matmul_share = profile(scorer, batch)
        print(f"bound if every operator but the matrix products took no time: {t_base / (t_ours * matmul_share):.2f}x "
              f"(the matrix products alone are {100 * matmul_share:.0f}% of srt_hf's time)")


# operator name prefix -> the kind of work it is, for the profile's summary
OP_KINDS = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")),
    ("attention kernels", ("aten::_scaled_dot_product", "aten::scaled_dot_product")),
    ("softmax / log-sum-exp (output head)", ("aten::logsumexp", "aten::log_softmax", "aten::_log_softmax", "aten::softmax", "aten::_softmax")),
    ("copies, gathers and indexing", ("aten::copy_", "aten::index", "aten::cat", "aten::gather", "aten::to", "aten::contiguous", "aten::clone")),
)


def profile(scorer: IFDScorer, batch: dict) -> float:
    """One srt_hf pass under torch.profiler: self time by kind of work, the ten largest operators; returns the matmul share."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if scorer.model.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        scorer(batch)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1
    kinds: dict[str, float] = {}
    for e in events:
        kind = next((name for name, prefixes in OP_KINDS if e.key.startswith(prefixes)), "elementwise and other operators")
        kinds[kind] = kinds.get(kind, 0.0) + e.self_cpu_time_total
    print(f"profile of one srt_hf pass ({total / 1e6:.1f} s of operator self time on the CPU side):")
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * us / total:5.1f}%  {kind}")
    print("  largest operators:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        print(f"  {100 * e.self_cpu_time_total / total:5.1f}%  {e.key} ({e.count} calls)")
    return kinds.get(OP_KINDS[0][0], 0.0) / total


def scorer_path(scorer: IFDScorer) -> str:
    from srt_hf.student.engines import choose_engine

    return choose_engine(scorer.model, scorer.config.engine, share_prefix=scorer.config.share_prefix).describe()


if __name__ == "__main__":
    main()
