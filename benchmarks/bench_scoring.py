"""Scoring throughput: srt_hf's IFDScorer vs the reference loop, same rows, same model, one process.

The baseline re-does what the public reference scripts do for the reflection preset: for every row,
four separate forward passes at batch size 1 through ``model(input_ids, labels=labels)`` (full logits
at every position, the loss over the 49k vocabulary everywhere). srt_hf batches by length, runs shared
prompt heads once and computes logits only at labelled positions. Both must agree within 1e-4.

    python benchmarks/bench_scoring.py [--data FILE] [--rows 32] [--student default] [--device cuda] [--dtype bfloat16]
    python benchmarks/bench_scoring.py --shape llama-3.2-1b --device cuda --dtype bfloat16 float32 --rows 256 --ref-rows 32
    python benchmarks/bench_scoring.py --shape tiny --rows 8 --rounds 1            # a dry run on a CPU (seconds)
    python benchmarks/bench_scoring.py --shape llama-3.1-8b --rows 512 --count-only   # FLOPs per row only, no model

On a GPU the reference loop runs in float32 (as the references do) and srt_hf in each ``--dtype`` given
(several in one process share the model, the reference loop and the rows: ``--dtype bfloat16 float32``
prints the bf16/fp32 ratio); the difference bound is then the dtype's tolerance (float32 1e-4; see README
"Student dtype").

``--shape`` (smollm2-135m, qwen2.5-0.5b, llama-3.2-1b, llama-3.1-8b, tiny) scores with a random student
of that real shape built on the device with the GPU kit's tokenizer (``random_student.py``), so no model
files are needed, and adds a second baseline: **what a competent user writes** — the same four texts per
row, sorted by length, right-padded batches of 16 with an attention mask, the first ``--dtype``, full logits and a
per-token cross-entropy. The reference loop may run on fewer rows (``--ref-rows``; rates are per row).
Printed: each side's rows/s and FLOPs, each ratio, the chip's matrix-product peak in each dtype measured
in the same run, srt_hf's share of it, peak GPU memory per side (its model's weights plus its working memory;
the other side's model, also resident, is not counted), and one ``RESULT`` line per dtype.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch

from srt_hf import IFDScorer
from srt_hf.formats import detect_format, read_batch
from srt_hf.models import prepare_device
from srt_hf.student.engines import pick_engine
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


def srt_hf_counts(scorer: IFDScorer, examples, counter: Counter, tokenizer=None) -> float:
    """Tokens srt_hf actually computes (deduplicated, shared heads once per group, head at labels only); returns
    the seconds its planning (tokenization) of ``examples`` takes, a part of srt_hf's time on the CPU.
    ``tokenizer``: where the scorer has no model loaded (``--count-only``)."""
    from srt_hf.student.plan import Encoder, plan_rows
    from srt_hf.student.spans import shared_prefix_len

    start = time.perf_counter()
    enc = Encoder(tokenizer or scorer.tokenizer)
    # without a model (--count-only) the preset's length: every real shape holds more positions than a preset asks
    L = scorer.max_length() if tokenizer is None else scorer.config.max_length or scorer.preset.max_length
    rifd = scorer.config.rifd_enabled()
    plans = plan_rows(examples, enc, scorer.preset, L, rifd)
    planning = time.perf_counter() - start
    spans = {s for p in plans if not isinstance(p, str) for s in p.spans() if s.n_scored > 0}
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
    return planning


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


def chip_peak(device, dtype: torch.dtype, n: int = 8192, trials: int = 10) -> float:
    """Best GFLOP/s of one large square matrix product on ``device`` in ``dtype`` (the chip's practical peak)."""
    n = n if str(device).startswith("cuda") else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(trials):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def reference_passes(tokenizer, rows: list[dict], template: str, max_length: int = 2048) -> list[tuple[int, str, list[int], int]]:
    """(row, loss name, ids, first labelled position) of the reference's four passes per row (its tokenization)."""
    from srt_hf.templates import format_prompt, format_reverse_prompt

    def enc(text: str, budget: int) -> list[int]:
        return tokenizer.encode(text, truncation=True, max_length=budget)

    out = []
    for i, r in enumerate(rows):
        prompt, reverse = format_prompt(template, r["instruction"], r["input"]), format_reverse_prompt(template, r["response"])
        p_len, r_len = len(enc(prompt, max_length)), len(enc(reverse, max_length))
        question = r["instruction"] + r["input"]
        out.append((i, "loss_Q_direct", enc(question, max_length - r_len + 1), 0))
        out.append((i, "loss_A_direct", enc(r["response"], max_length - p_len + 1), 0))
        for key, text, target in (("loss_Q_cond", reverse + question, r["instruction"]), ("loss_A_cond", prompt + r["response"], r["response"])):
            out.append((i, key, enc(text, max_length), len(tokenizer.encode(text[: text.rfind(target)]))))
    return out


def user_batches(tokenizer, rows: list[dict], template: str, batch_size: int = 16) -> list[list[tuple]]:
    """The batched user's batches: the reference's four passes per row, sorted by length, ``batch_size`` at a time."""
    passes = sorted(reference_passes(tokenizer, rows, template), key=lambda p: len(p[2]))
    return [passes[k : k + batch_size] for k in range(0, len(passes), batch_size)]


def count_user_batch(counter: Counter, batch: list[tuple]) -> int:
    """Counts one right-padded batch of the user (every position through the body and the full head); its width."""
    width = max(len(p[2]) for p in batch)
    _count(counter, len(batch) * width, len(batch) * width)
    counter.attn_pairs += (len(batch) - 1) * width * (width + 1) // 2
    return width


def user_baseline(model, tokenizer, rows: list[dict], template: str, counter: Counter) -> list[dict]:
    """What a competent user writes: length-sorted, right-padded batches of 16, full logits, per-token cross-entropy."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[dict] = [{} for _ in rows]
    with torch.inference_mode():
        for batch in user_batches(tokenizer, rows, template):
            width = count_user_batch(counter, batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for b, (_, _, seq, start) in enumerate(batch):
                ids[b, : len(seq)], mask[b, : len(seq)] = torch.tensor(seq), 1
                labels[b, start : len(seq)] = torch.tensor(seq[start:])
            ids, mask, labels = ids.to(model.device), mask.to(model.device), labels.to(model.device)
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, W, V): every position
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], reduction="none")
            valid = labels[:, 1:] != -100
            means = (ce * valid).sum(1) / valid.sum(1).clamp(min=1)
            for (row, key, _, _), value in zip(batch, means.tolist()):
                out[row][key] = value
    return out


DTYPE_BOUND = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}  # largest relative loss difference to the reference


def build_scorers(args) -> tuple[dict[str, IFDScorer], torch.nn.Module, object]:
    """One scorer per ``--dtype`` (a float32 scorer shares the reference's model), the float32 reference model, the tokenizer."""
    scorers: dict[str, IFDScorer] = {}
    if args.shape:
        from random_student import kit_tokenizer, random_student

        tok = kit_tokenizer()
        model = random_student(args.shape, tok, args.device, torch.float32)
        for dtype in args.dtype:
            scorer = IFDScorer(student=f"random:{args.shape}", preset="reflection", template=args.template,
                               device=args.device, dtype=dtype, engine=args.engine)
            weights = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
            scorer._tokenizer, scorer._model, scorer._device = tok, weights, prepare_device(args.device)
            scorers[dtype] = scorer
        return scorers, model, tok
    if args.student.startswith("random:"):
        from random_student import build_random_student

        args.student = str(build_random_student(args.student.removeprefix("random:")))
    for dtype in dict.fromkeys(["float32", *args.dtype]):  # the reference computes in float32: that scorer's model
        scorers[dtype] = IFDScorer(student=args.student, preset="reflection", template=args.template, device=args.device,
                                   dtype=dtype, engine=args.engine)
    reference = scorers["float32"] if "float32" in args.dtype else scorers.pop("float32")
    return scorers, reference.model, reference.tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA if SHARED_DATA.exists() else DEMO_DATA)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--ref-rows", type=int, default=None, help="Rows the reference loop runs (default: all); rates are per row.")
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds, alternating which side runs first; medians are reported.")
    parser.add_argument("--student", default="default", help="a model id or folder, or random:llama-1b (a random 1B Llama saved with the embedded tokenizer)")
    parser.add_argument("--shape", default=None, help="a random student of a real shape built in memory with the GPU kit's tokenizer: "
                        "smollm2-135m, qwen2.5-0.5b, llama-3.2-1b, llama-3.1-8b, tiny (adds the batched-user baseline)")
    parser.add_argument("--engine", default=None, help="force srt_hf's engine (gpu, cpu, plain); default: its own choice")
    parser.add_argument("--template", default="vicuna", choices=["vicuna", "alpaca"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--profile", action="store_true", help="After the rounds, profile one srt_hf pass (the first dtype) and print where its time goes.")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=list(DTYPE_BOUND),
                        help="srt_hf's student dtype(s), each measured in this one process (the reference loop runs once, in "
                        "float32; the batched user in the first dtype)")
    parser.add_argument("--count-only", action="store_true", help="with --shape: only count the FLOPs per row of each side "
                        "(no model is built, no GPU needed): the speed-up each side's work allows at equal FLOP rates")
    args = parser.parse_args()
    args.dtype = list(dict.fromkeys(args.dtype))
    if args.count_only:
        count_work(args)
        return

    batch = load_rows(args.data, args.rows)
    scorers, model, tok = build_scorers(args)
    first = scorers[args.dtype[0]]
    examples = read_batch(batch, detect_format(list(batch)))
    rows = [{"instruction": e.instruction, "input": e.input, "response": e.response} for e in examples]
    n = len(rows)
    n_ref = min(args.ref_rows or n, n)
    cuda = model.device.type == "cuda"
    where = torch.cuda.get_device_name(model.device) if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(f"data: {args.data} ({n} rows; reference loop on {n_ref}), student: {args.shape or args.student} "
          f"({', '.join(args.dtype)}), device: {where}")

    for dtype, scorer in scorers.items():
        scorer({k: v[:2] for k, v in batch.items()})  # warm-up (and the engine's probe)
        print(f"srt_hf scoring path ({dtype}): {scorer_path(scorer)}")
    measured = list(dict.fromkeys([*args.dtype, "float32"]))  # the reference loop's dtype too
    peak_before = {d: matmul_peak(model.config, device=model.device, dtype=getattr(torch, d)) for d in measured}
    sides = ["baseline", *(f"srt_hf {d}" for d in args.dtype)] + (["user"] if args.shape else [])
    times: dict[str, list[float]] = {side: [] for side in sides}
    memory: dict[str, int] = {}
    ours: dict[str, dict] = {}
    user_counter = Counter()
    for r in range(args.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            _sync(model.device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(model.device)
                resident = torch.cuda.memory_allocated(model.device)
            t = time.perf_counter()
            if side.startswith("srt_hf"):
                ours[side] = scorers[side.split()[1]](batch)
            elif side == "user":
                user_counter = Counter()
                user = user_baseline(first.model, tok, rows, args.template, user_counter)
            else:
                base_counter = Counter()
                ref = reference_losses(model, tok, rows[:n_ref], args.template, on_pass=lambda k, c=base_counter: _count(c, k, k))
            _sync(model.device)
            times[side].append(time.perf_counter() - t)
            if cuda:  # the side's own footprint: its model's weights + what it allocated beyond what was resident
                side_model = {"baseline": model, "user": first.model}.get(side) or scorers[side.split()[1]].model
                weights = sum(p.numel() * p.element_size() for p in side_model.parameters())
                memory[side] = max(memory.get(side, 0), weights + torch.cuda.max_memory_allocated(model.device) - resident)
            print(f"round {r + 1}: {side:16} {times[side][-1]:7.2f} s", flush=True)
    rate = {side: (n_ref if side == "baseline" else n) / float(np.median(times[side])) for side in sides}

    our_counter = Counter()
    planning = srt_hf_counts(first, examples, our_counter)
    cfg = model.config
    peak = {d: max(peak_before[d], matmul_peak(cfg, device=model.device, dtype=getattr(torch, d))) for d in measured}
    worst = {}
    for d in args.dtype:
        worst[d] = _worst_difference(ref, ours[f"srt_hf {d}"])
        print(f"max relative difference of the four losses, srt_hf {d}: {worst[d]:.2e} "
              f"({'OK' if worst[d] <= DTYPE_BOUND[d] else 'MISMATCH'}, bound {DTYPE_BOUND[d]:g})")
    if args.shape:
        print(f"batched-user baseline vs the reference loop: {_worst_difference(ref, user):.2e} (relative, {args.dtype[0]})")
    print(f"{'':16}{'rows/s':>10}{'tokens/s':>12}{'GFLOP':>10}{'GFLOP/s':>10}{'% of peak':>11}{'peak mem':>10}")
    counters = {"baseline": base_counter, "user": user_counter, **{f"srt_hf {d}": our_counter for d in args.dtype}}
    for name in sides:
        c, rows_done = counters[name], (n_ref if name == "baseline" else n)
        secs = rows_done / rate[name]
        gf = c.flops(cfg) / 1e9
        own_peak = peak[{"baseline": "float32", "user": args.dtype[0]}.get(name) or name.split()[1]]
        mem = f"{memory[name] / 2**30:.1f} GiB" if name in memory else "-"
        print(f"{name:16}{rate[name]:>10.3f}{c.body_tokens / secs:>12.0f}{gf:>10.1f}{gf / secs:>10.1f}{100 * gf / secs / own_peak:>10.0f}%{mem:>10}")
    share_of_time = 100 * planning * rate[f"srt_hf {args.dtype[0]}"] / n
    engine = pick_engine(first.model, first.config.engine, first.config.share_prefix, first.config.packing)
    if getattr(engine, "shapes", None):  # the GPU engine's batches of the last pass
        tokens = sorted(rows_ * width for rows_, width in engine.shapes)
        print(f"GPU engine: {len(tokens)} forward batches for {n} rows, median {tokens[len(tokens) // 2]} tokens "
              f"(smallest {tokens[0]}, largest {tokens[-1]})")
    print(f"planning (tokenizing the {n} rows' texts, on the CPU): {planning:.2f} s, {share_of_time:.0f}% of srt_hf's time "
          f"({args.dtype[0]})")
    for d in args.dtype:
        print(f"matmul peak at the model's shapes ({d} linear on {where}, best trial): {peak[d]:.1f} GFLOP/s")
        print(f"speed-up srt_hf {d} / baseline: {rate[f'srt_hf {d}'] / rate['baseline']:.2f}x  (medians of {args.rounds} rounds; "
              "same rows, same outputs)")
    if "float32" in args.dtype:
        for d in args.dtype:
            if d != "float32":
                print(f"srt_hf {d} / srt_hf float32: {rate[f'srt_hf {d}'] / rate['srt_hf float32']:.2f}x (the goal: never below 1)")
    print(f"srt_hf does {our_counter.flops(cfg) / n / (base_counter.flops(cfg) / n_ref):.2f}x of the baseline's FLOPs per row")
    if args.shape:
        per_row = {name: counters[name].flops(cfg) / (n_ref if name == "baseline" else n) for name in sides}
        print(f"FLOPs per row: srt_hf {per_row[sides[1]] / 1e9:.2f} GFLOP, batched user {per_row['user'] / 1e9:.2f} GFLOP "
              f"({per_row['user'] / per_row[sides[1]]:.2f}x srt_hf's)")
        for d in args.dtype:
            ours_rate = rate[f"srt_hf {d}"]
            chip = max(chip_peak(model.device, getattr(torch, d)), peak[d])  # the best product seen: on a CPU the model's shapes can beat it
            share = 100 * our_counter.flops(cfg) / (n / ours_rate) / 1e9 / chip
            print(f"chip peak ({d} matrix products, best of a square 8192 matmul and the model's shapes): {chip / 1e3:.2f} TFLOP/s; "
                  f"srt_hf {d} at {share:.1f}% of it")
            versus_fp32 = (f"{ours_rate / rate['srt_hf float32']:.2f}x fp32, "
                           if d != "float32" and "float32" in args.dtype else "")
            mem = f"{memory[f'srt_hf {d}'] / 2**30:.1f}GiB" if f"srt_hf {d}" in memory else "-"
            print(f"RESULT {args.shape} {d}: {ours_rate:.1f} rows/s, {ours_rate / rate['baseline']:.1f}x ref, "
                  + (f"{ours_rate / rate['user']:.2f}x user, " if d == args.dtype[0] else "")  # the user runs in the first dtype
                  + f"{versus_fp32}{share:.1f}% of peak, mem {mem}, diff {worst[d]:.1e}"
                  + (f", planning {share_of_time:.0f}% of the time" if d == args.dtype[0] else ""))
    if args.profile:
        matmul_share = profile(first, batch)
        ratio = rate[f"srt_hf {args.dtype[0]}"] / rate["baseline"]
        print(f"bound if every operator but the matrix products took no time: {ratio / matmul_share:.2f}x "
              f"(the matrix products alone are {100 * matmul_share:.0f}% of srt_hf's time)")


def count_work(args) -> None:
    """``--count-only``: the FLOPs per row of srt_hf, the batched user and the reference loop on ``--rows`` rows."""
    from random_student import kit_tokenizer, shape_config

    if not args.shape:
        raise SystemExit("--count-only needs --shape (the model's shapes set the FLOPs)")
    tok = kit_tokenizer()
    cfg = shape_config(args.shape, tok)
    batch = load_rows(args.data, args.rows)
    examples = read_batch(batch, detect_format(list(batch)))
    rows = [{"instruction": e.instruction, "input": e.input, "response": e.response} for e in examples]
    ours, user, ref = Counter(), Counter(), Counter()
    srt_hf_counts(IFDScorer(student=f"random:{args.shape}", preset="reflection", template=args.template), examples, ours, tok)
    for b in user_batches(tok, rows, args.template):
        count_user_batch(user, b)
    for _, _, ids, _ in reference_passes(tok, rows, args.template):
        _count(ref, len(ids), len(ids))
    per_row = {name: c.flops(cfg) / len(rows) / 1e9 for name, c in (("srt_hf", ours), ("user", user), ("reference", ref))}
    print(f"{args.shape}, {len(rows)} rows of {args.data.name}: GFLOP per row: srt_hf {per_row['srt_hf']:.1f}, "
          f"batched user {per_row['user']:.1f}, reference loop {per_row['reference']:.1f}")
    print(f"RESULT {args.shape} work: the batched user does {per_row['user'] / per_row['srt_hf']:.2f}x srt_hf's FLOPs per row, "
          f"the reference loop {per_row['reference'] / per_row['srt_hf']:.2f}x")


def _worst_difference(reference: list[dict], other) -> float:
    """Largest relative difference between the reference loop's losses and ``other``'s (a column dict or row dicts)."""
    worst = 0.0
    for i, r in enumerate(reference):
        for key, value in r.items():
            theirs = other[key][i] if isinstance(other, dict) else other[i][key]
            if not (math.isnan(value) and math.isnan(theirs)):
                worst = max(worst, abs(theirs - value) / max(abs(value), 1e-12))
    return worst


# operator name prefix -> the kind of work it is, for the profile's summary
OP_KINDS = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")),
    ("attention kernels", ("aten::_scaled_dot_product", "aten::scaled_dot_product")),
    ("softmax / log-sum-exp (output head)", ("aten::logsumexp", "aten::log_softmax", "aten::_log_softmax", "aten::softmax", "aten::_softmax")),
    ("copies, gathers and indexing", ("aten::copy_", "aten::index", "aten::cat", "aten::gather", "aten::to", "aten::contiguous", "aten::clone")),
)


# CUDA kernel name fragment -> the kind of work it is (on a GPU the time is the kernels', not the operators')
KERNEL_KINDS = (
    ("matrix products", ("gemm", "cutlass", "xmma", "cublas", "nvjet", "matmul")),
    ("attention kernels", ("flash", "fmha", "attention", "cudnn")),
    ("softmax / log-sum-exp (output head)", ("softmax", "logsumexp", "nll_loss", "cross_entropy")),
    ("copies, gathers and indexing", ("copy", "index", "gather", "cat", "fill", "memcpy", "memset")),
)


def profile(scorer: IFDScorer, batch: dict) -> float:
    """One srt_hf pass under torch.profiler: time by kind of work, the ten largest entries; returns the matmul share.

    On a GPU the shares are of the kernels' device time, and the GPU's busy share of the wall time is printed
    (well below 100%: the host, not the chip, sets the pace).
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = scorer.model.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    _sync(scorer.model.device)
    start = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        scorer(batch)
        _sync(scorer.model.device)
    wall = time.perf_counter() - start
    if cuda:
        events = [e for e in prof.key_averages() if e.self_device_time_total > 0 and not e.key.startswith("aten::")]
        cost, table = (lambda e: e.self_device_time_total), KERNEL_KINDS
    else:
        events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        cost, table = (lambda e: e.self_cpu_time_total), OP_KINDS
    total = sum(cost(e) for e in events) or 1
    kinds: dict[str, float] = {}
    for e in events:
        name = e.key if not cuda else e.key.lower()
        kind = next((k for k, parts in table if (name.startswith(parts) if not cuda else any(p in name for p in parts))),
                    "elementwise and other operators")
        kinds[kind] = kinds.get(kind, 0.0) + cost(e)
    side = "GPU kernel" if cuda else "operator self"
    print(f"profile of one srt_hf pass ({total / 1e6:.2f} s of {side} time, {wall:.2f} s wall"
          + (f"; the GPU busy {100 * total / 1e6 / wall:.0f}% of it):" if cuda else "):"))
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * us / total:5.1f}%  {kind}")
    print("  largest entries:")
    for e in sorted(events, key=lambda e: -cost(e))[:10]:
        print(f"  {100 * cost(e) / total:5.1f}%  {e.key[:100]} ({e.count} calls)")
    return kinds.get(table[0][0], 0.0) / total


def scorer_path(scorer: IFDScorer) -> str:
    return pick_engine(scorer.model, scorer.config.engine, scorer.config.share_prefix, scorer.config.packing).describe()


if __name__ == "__main__":
    main()
