"""How far half-precision scoring is from float32, in losses and in the data it selects.

    python benchmarks/bench_dtype_tolerance.py [--rows 64] [--device cpu|cuda] [--dtypes bfloat16 float16]
    python benchmarks/bench_dtype_tolerance.py --device cuda --shape smollm2-135m   # no model files: a random student

Scores the same rows with the reflection preset in float32 and in each half-precision dtype (same
device, same scoring path) and prints, per dtype: the median and largest relative difference of the four
losses and of IFD / r-IFD, how many rows change side of the IFD < 1 / r-IFD < 1 filter, and the overlap
of the top 10% by IFD (Cherry's selection) with float32's. The README's "Student dtype" section quotes it.

``--shape`` (see ``random_student.py``) scores with a random student of that shape built on the device
with the GPU kit's tokenizer, the half-precision copies cast from the same float32 weights: the loss
differences then measure the device's arithmetic, but a random model's IFDs sit near 1, so its count of
changed filter decisions overstates what a trained student shows.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from srt_hf import IFDScorer, ScoringConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_cherry_5_percent.json"
DEMO_DATA = Path(__file__).resolve().parents[1] / "srt_hf" / "data" / "demo_alpaca.jsonl"
COLUMNS = ("loss_A_cond", "loss_A_direct", "loss_Q_cond", "loss_Q_direct", "ifd", "rifd")


def score(rows: dict, dtype: str, device: str, student: str, given=None) -> tuple[dict[str, np.ndarray], float]:
    """The columns of ``rows`` scored in ``dtype``, and the seconds it took; ``given``: (tokenizer, float32 model) to cast."""
    scorer = IFDScorer(ScoringConfig(student=student, preset="reflection", dtype=dtype, device=device))
    if given is not None:
        import torch

        from srt_hf.models import prepare_device

        tok, model = given
        model = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
        scorer._tokenizer, scorer._model, scorer._device = tok, model, prepare_device(device)
    scorer({k: v[:2] for k, v in rows.items()})  # load and probe outside the timing
    start = time.perf_counter()
    out = scorer(rows)
    return {c: np.asarray(out[c], dtype=np.float64) for c in COLUMNS}, time.perf_counter() - start


def top_share(ifd: np.ndarray, share: float = 0.1) -> set[int]:
    valid = np.flatnonzero(np.isfinite(ifd) & (ifd < 1))
    k = max(1, int(round(share * len(ifd))))
    return set(valid[np.argsort(-ifd[valid], kind="stable")][:k].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA if SHARED_DATA.exists() else DEMO_DATA)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--student", default="default")
    parser.add_argument("--shape", default=None, help="a random student of this real shape (random_student.py) instead of --student")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    args = parser.parse_args()
    given = None
    if args.shape:
        import torch
        from random_student import kit_tokenizer, random_student

        tok = kit_tokenizer()
        given, args.student = (tok, random_student(args.shape, tok, args.device, torch.float32)), f"random:{args.shape}"

    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(args.data), split="train")
    rows = ds.select(range(min(args.rows, len(ds))))[:]
    n = len(next(iter(rows.values())))
    base, t_base = score(rows, "float32", args.device, args.student, given)
    print(f"data: {args.data} ({n} rows), student: {args.student}, device: {args.device}; float32: {t_base:.1f} s")
    print(f"{'dtype':9} {'column':14} {'median rel':>11} {'max rel':>9}")
    for dtype in args.dtypes:
        try:
            ours, secs = score(rows, dtype, args.device, args.student, given)
        except Exception as err:  # noqa: BLE001 - a dtype this device cannot run is reported, not fatal
            print(f"{dtype:9} cannot run on {args.device}: {type(err).__name__}: {err}")
            continue
        for column in COLUMNS:
            a, b = base[column], ours[column]
            both = np.isfinite(a) & np.isfinite(b)
            rel = np.abs(b[both] - a[both]) / np.maximum(np.abs(a[both]), 1e-12)
            print(f"{dtype:9} {column:14} {np.median(rel):>11.2e} {rel.max():>9.2e}")
        flips = int(np.sum((base["ifd"] < 1) != (ours["ifd"] < 1)) + np.sum((base["rifd"] < 1) != (ours["rifd"] < 1)))
        overlap = len(top_share(base["ifd"]) & top_share(ours["ifd"])) / max(len(top_share(base["ifd"])), 1)
        print(f"{dtype:9} {secs:.1f} s ({t_base / secs:.2f}x float32); filter decisions changed: {flips} of {2 * n}; "
              f"top-10% IFD overlap with float32: {overlap:.0%}")
        worst = max(float(np.nanmax(np.abs(ours[c] - base[c]) / np.maximum(np.abs(base[c]), 1e-12))) for c in COLUMNS[:4])
        print(f"RESULT {dtype} on {args.device}: max loss diff {worst:.1e}, {flips}/{2 * n} decisions changed, {t_base / secs:.2f}x float32")


if __name__ == "__main__":
    main()
