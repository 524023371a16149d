"""Training throughput: srt_hf's train_sft (TRL SFTTrainer) in tokens/s, LoRA and full, with model FLOPs utilisation.

    python benchmarks/bench_sft.py --model llama-1b --device cuda          # the GPU figure (bf16, LoRA and full)
    python benchmarks/bench_sft.py --model tiny --steps 4 --batch 2        # a CPU dry run (float32)

The student is a random model of a real shape (``random_student.py``; speed depends on shapes, not weights) trained
on alpaca rows as prompt/completion. Tokens/s counts the tokens TRL reports (``num_tokens``: attention-mask tokens)
between the end of the warm-up steps and the last step. Model FLOPs per token: ``6 N`` for full fine-tuning and
``4 N`` for LoRA (frozen weights need no weight gradient; the adapters' own FLOPs are left out), plus the attention
scores ``(6 or 4) x 2 x layers x hidden x mean sequence length``, N = the parameters of the matrix products (the
transformer's and the LM head, not the embedding lookup). MFU divides the achieved FLOP/s by the peak of a large
matrix product measured in the same process (bf16 on a GPU, float32 on a CPU). The last line starts with ``RESULT``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_student import SHAPES, build_random_student  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_cherry_5_percent.json"
DEMO_DATA = Path(__file__).resolve().parents[1] / "srt_hf" / "data" / "demo_alpaca.jsonl"


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of the best of a few large square matrix products on ``device`` (the same run's yardstick)."""
    n = 8192 if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * n**3 / best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def training_rows(path: Path, n: int):
    """``n`` alpaca rows as conversational prompt/completion (repeated if the file is smaller)."""
    from datasets import Dataset, load_dataset

    rows = load_dataset("json", data_files=str(path), split="train")
    records = []
    for i in range(n):
        r = rows[i % len(rows)]
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        records.append({"prompt": [{"role": "user", "content": prompt}],
                        "completion": [{"role": "assistant", "content": r["output"]}]})
    return Dataset.from_list(records)


def matmul_params(model) -> int:
    """Parameters taking part in matrix products: every 2-D weight but the input embedding (the LM head counts)."""
    embed = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters() if p.dim() == 2 and p is not embed)
    if model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embed:
        total += embed.numel()  # tied: the LM head is still a matrix product
    return total


def run(mode: str, path: Path, data, args, peak: float) -> dict:
    from transformers import AutoConfig, TrainerCallback

    from srt_hf.train import sft_config, train_sft

    clock: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            sync(args.device)
            clock.append(time.perf_counter())

    gpu = args.device.startswith("cuda")
    overrides = dict(max_steps=args.steps, per_device_train_batch_size=args.batch, max_length=args.max_length,
                     logging_steps=1, bf16=gpu, use_cpu=not gpu, activation_checkpointing=False,
                     learning_rate=2e-4 if mode == "lora" else 2e-5, report_to="none", save_strategy="no")
    peft = None
    if mode == "lora":
        from peft import LoraConfig

        peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    out = Path(args.work) / f"sft-{mode}"
    config = sft_config(out, **overrides)
    from trl import SFTTrainer

    original_init = SFTTrainer.__init__

    def with_clock(self, *a, **k):  # the clock rides along without a change to train_sft
        k.setdefault("callbacks", [])
        k["callbacks"] = [*(k["callbacks"] or []), Clock()]
        original_init(self, *a, **k)

    SFTTrainer.__init__ = with_clock
    try:
        trainer = train_sft(str(path), data, args=config, peft_config=peft,
                            model_init_kwargs={"dtype": torch.bfloat16 if gpu else torch.float32})
    finally:
        SFTTrainer.__init__ = original_init
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h and "loss" in h]
    warm = min(args.warmup, len(clock) - 2)
    counted = tokens[-1] - tokens[warm - 1] if warm > 0 else tokens[-1]
    seconds = clock[-1] - clock[warm - 1] if warm > 0 else clock[-1] - clock[0]
    steps = len(clock) - warm
    cfg = AutoConfig.from_pretrained(path)
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    n = matmul_params(model)
    seq = counted / max(steps * args.batch, 1)  # mean tokens per sequence
    factor = 4 if mode == "lora" else 6
    flops_token = factor * n + factor * 2 * cfg.num_hidden_layers * cfg.hidden_size * seq
    rate = counted / seconds
    return {"mode": mode, "tokens_s": rate, "tflops": rate * flops_token / 1e12, "mfu": rate * flops_token / peak,
            "steps": steps, "tokens": counted, "n": n, "seq": seq, "memory": torch.cuda.max_memory_allocated() / 2**30 if gpu else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b", help=f"a random shape ({', '.join(SHAPES)}) or a model folder")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the rate (allocation, compile)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--work", default=os.environ.get("SRT_HF_BENCH_CACHE", "/tmp/srt_hf_bench"))
    args = ap.parse_args(argv)

    path = build_random_student(args.model) if args.model in SHAPES else Path(args.model)
    data_path = args.data or (SHARED_DATA if SHARED_DATA.is_file() else Path(os.environ.get("SRT_HF_GPU_DATA", "-"), SHARED_DATA.name))
    data_path = data_path if data_path.is_file() else DEMO_DATA
    data = training_rows(data_path, args.steps * args.batch)
    gpu = args.device.startswith("cuda")
    peak = matmul_peak(args.device, torch.bfloat16 if gpu else torch.float32)
    print(f"model: {args.model}; {'bf16' if gpu else 'float32'} on {args.device}; batch {args.batch}, max length "
          f"{args.max_length}, {args.steps} steps ({args.warmup} warm-up); data {data_path.name}; "
          f"matmul peak {peak / 1e12:.2f} TFLOP/s")
    results = [run(mode, path, data, args, peak) for mode in args.modes]
    print(f"{'mode':6} {'tokens/s':>10} {'TFLOP/s':>9} {'MFU':>6} {'tok/seq':>8} {'GiB':>6}")
    for r in results:
        memory = f"{r['memory']:6.1f}" if r["memory"] is not None else f"{'-':>6}"
        print(f"{r['mode']:6} {r['tokens_s']:10.0f} {r['tflops']:9.3f} {r['mfu']:6.1%} {r['seq']:8.0f} {memory}")
    print("RESULT " + "; ".join(f"{r['mode']} {r['tokens_s']:.0f} tok/s MFU {r['mfu']:.1%}" for r in results)
          + f" ({args.model}, {'bf16' if gpu else 'fp32'} {args.device}, peak {peak / 1e12:.2f} TFLOP/s measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
