"""Scoring throughput: srt_hf's IFDScorer vs the reference loop, same rows, same model, one process.

The baseline re-does what the public reference scripts do for the reflection preset: for every row,
four separate forward passes at batch size 1 through ``model(input_ids, labels=labels)`` (full logits
at every position, the loss over the 49k vocabulary everywhere). srt_hf batches by length, runs shared
prompt heads once and computes logits only at labelled positions. Both must agree within 1e-4.

    python benchmarks/bench_scoring.py [--data FILE] [--rows 48] [--preset reflection]
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
from srt_hf.templates import format_prompt, format_reverse_prompt

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


def reference_loop(model, tok, rows: list[dict], template: str, max_length: int, counter: Counter) -> list[dict]:
    """The reference per-row computation (batch size 1, four passes, full logits)."""

    def whole_text(text: str, budget: int) -> float:
        ids = tok.encode(text, return_tensors="pt", truncation=True, max_length=budget)
        _count(counter, ids.shape[1], ids.shape[1])
        return model(ids, labels=ids.contiguous(), output_hidden_states=True).loss.item()

    def part_text(text: str, target: str, budget: int) -> float:
        ids = tok.encode(text, return_tensors="pt", truncation=True, max_length=budget)
        start = len(tok.encode(text[: text.rfind(target)]))
        labels = ids.clone()
        labels[0, :start] = -100
        _count(counter, ids.shape[1], ids.shape[1])
        return model(ids, labels=labels, output_hidden_states=True).loss.item()

    out = []
    with torch.no_grad():
        for r in rows:
            prompt = format_prompt(template, r["instruction"], r["input"])
            reverse = format_reverse_prompt(template, r["response"])
            prompt_len = tok.encode(prompt, return_tensors="pt", truncation=True, max_length=max_length).shape[1]
            reverse_len = tok.encode(reverse, return_tensors="pt", truncation=True, max_length=max_length).shape[1]
            out.append({
                "loss_Q_direct": whole_text(r["instruction"] + r["input"], max_length - reverse_len + 1),
                "loss_A_direct": whole_text(r["response"], max_length - prompt_len + 1),
                "loss_Q_cond": part_text(reverse + r["instruction"] + r["input"], r["instruction"], max_length),
                "loss_A_cond": part_text(prompt + r["response"], r["response"], max_length),
            })
    return out


def _count(counter: Counter, n: int, head: int) -> None:
    counter.body_tokens += n
    counter.head_tokens += head
    counter.attn_pairs += n * (n + 1) // 2


def srt_hf_counts(scorer: IFDScorer, examples, counter: Counter) -> None:
    """Tokens srt_hf actually computes (deduplicated, shared heads once per group, head at labels only)."""
    from srt_hf.scoring import _Encoder
    from srt_hf.span_loss import _shared_prefix_len

    enc = _Encoder(scorer.tokenizer)
    spans = {s for ex in examples for s in scorer._plan(ex, enc).spans() if s.n_scored > 0}
    groups: dict[str, list] = {}
    for s in spans:
        groups.setdefault(s.group, []).append(s)
    for members in groups.values():
        p = _shared_prefix_len(members) if len(members) > 1 else 0
        counter.body_tokens += p
        counter.attn_pairs += p * (p + 1) // 2
        for s in members:
            n = len(s.ids) - p
            counter.body_tokens += n
            counter.head_tokens += s.n_scored
            counter.attn_pairs += n * p + n * (n + 1) // 2


def matmul_peak(cfg, tokens: int = 1024, trials: int = 5) -> float:
    """Best GFLOP/s of float32 ``F.linear`` at the model's own shapes (the ceiling for this workload).

    The best of several short trials, so that a moment of load from elsewhere on a shared machine does not
    lower the ceiling; ``main`` also takes it before and after the timed rounds and keeps the higher.
    """
    h, inter = cfg.hidden_size, cfg.intermediate_size
    best = 0.0
    for k, n in ((h, h), (h, inter), (inter, h), (h, cfg.vocab_size)):
        x, w = torch.randn(tokens, k), torch.randn(n, k)
        torch.nn.functional.linear(x, w)
        for _ in range(trials):
            t = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = max(best, 2 * tokens * k * n / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA if SHARED_DATA.exists() else DEMO_DATA)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds, alternating which side runs first; medians are reported.")
    parser.add_argument("--student", default="default")
    parser.add_argument("--template", default="vicuna", choices=["vicuna", "alpaca"])
    args = parser.parse_args()

    batch = load_rows(args.data, args.rows)
    scorer = IFDScorer(ScoringConfig(student=args.student, preset="reflection", template=args.template))
    model, tok = scorer.model, scorer.tokenizer
    examples = read_batch(batch, detect_format(list(batch)))
    rows = [{"instruction": e.instruction, "input": e.input, "response": e.response} for e in examples]
    n = len(rows)
    print(f"data: {args.data} ({n} rows), student: {args.student}, torch threads: {torch.get_num_threads()}")

    scorer({k: v[:2] for k, v in batch.items()})  # warm-up
    peak_before = matmul_peak(model.config)
    times: dict[str, list[float]] = {"baseline": [], "srt_hf": []}
    for r in range(args.rounds):
        for side in (("baseline", "srt_hf") if r % 2 == 0 else ("srt_hf", "baseline")):
            t = time.perf_counter()
            if side == "srt_hf":
                ours = scorer(batch)
            else:
                base_counter = Counter()
                ref = reference_loop(model, tok, rows, args.template, 2048, base_counter)
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
    peak = max(peak_before, matmul_peak(cfg))
    print(f"max relative difference of the four losses: {worst:.2e} ({'OK' if worst <= 1e-4 else 'MISMATCH'})")
    print(f"{'':10}{'rows/s':>10}{'tokens/s':>12}{'GFLOP':>10}{'GFLOP/s':>10}{'% of peak':>11}")
    for name, secs, c in (("baseline", t_base, base_counter), ("srt_hf", t_ours, our_counter)):
        gf = c.flops(cfg) / 1e9
        print(f"{name:10}{n / secs:>10.3f}{c.body_tokens / secs:>12.0f}{gf:>10.1f}{gf / secs:>10.1f}{100 * gf / secs / peak:>10.0f}%")
    print(f"matmul peak at the model's shapes (float32 linear, {torch.get_num_threads()} threads, best trial): {peak:.1f} GFLOP/s")
    print(f"speed-up srt_hf / baseline: {t_base / t_ours:.2f}x  (medians of {args.rounds} rounds; same rows, same outputs)")
    print(f"srt_hf does {our_counter.flops(cfg) / base_counter.flops(cfg):.2f}x of the baseline's FLOPs")


if __name__ == "__main__":
    main()
