"""k-center greedy: srt_hf's O(N)-memory exact implementation vs the N×N reference style, same data.

The reference style is how k-center greedy is commonly written for active learning and DiverseEvol-like
selection: compute the full N×N Euclidean distance matrix (float32, ``‖x‖² + ‖y‖² − 2 X·Xᵀ``), keep the
(unpicked rows × pool) block, and per pick take the row with the largest min over the pool, delete its
row from the block and append the new centre's column. srt_hf keeps one O(N) vector of distances to the
nearest centre and streams one float64 matrix-vector product per pick, with exact tie handling.

    python benchmarks/bench_kcenter.py                       # N = 20k vs reference, then srt_hf at N = 200k
    python benchmarks/bench_kcenter.py --n 20000 --k 1000 --big-n 200000 --dim 576
    python benchmarks/bench_kcenter.py --n 2000 --big-n 0 --huge-n 1000000 --huge-dim 768   # the N = 1e6 memory check

Peak memory is measured with tracemalloc (numpy allocations) over the selection call only; the
embeddings themselves (N × d float32) are created before and reported separately.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from srt_hf.diversity import kcenter_greedy


def embeddings(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Embedding-like data: 64 clusters of different spread around a shared offset, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, d)).astype(np.float32) * 2.0 + 3.0
    which = rng.integers(0, 64, n)
    spread = rng.uniform(0.3, 1.5, 64).astype(np.float32)[which, None]
    return centres[which] + rng.standard_normal((n, d), dtype=np.float32) * spread


def reference_kcenter(X: np.ndarray, k: int, initial: list[int]) -> list[int]:
    """The N×N reference style (float32 distance matrix; ties: the first row of the remaining block)."""
    n = len(X)
    gram = X @ X.T
    sq = np.diag(gram).copy()
    gram *= -2
    gram += sq[:, None]
    gram += sq[None, :]
    np.maximum(gram, 0, out=gram)
    np.sqrt(gram, out=gram)
    dist = gram
    labelled = np.zeros(n, dtype=bool)
    labelled[initial] = True
    block = dist[~labelled][:, labelled]
    picks = []
    for _ in range(k):
        q_local = int(block.min(axis=1).argmax())
        q = int(np.flatnonzero(~labelled)[q_local])
        labelled[q] = True
        picks.append(q)
        block = np.delete(block, q_local, 0)
        block = np.append(block, dist[~labelled, q][:, None], axis=1)
    return picks


def measure(fn, *args):
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="Rows for the comparison with the reference.")
    parser.add_argument("--big-n", type=int, default=200_000, help="Rows for srt_hf alone (0 to skip).")
    parser.add_argument("--dim", type=int, default=576, help="Embedding size (576: SmolLM2-135M hidden size).")
    parser.add_argument("--k", type=int, default=1000, help="Rows to pick.")
    parser.add_argument("--pool", type=int, default=100, help="Initial pool (random rows, seeded).")
    parser.add_argument("--huge-n", type=int, default=0, help="Also run srt_hf alone at this N (e.g. 1000000; 0 to skip).")
    parser.add_argument("--huge-dim", type=int, default=768, help="Embedding size of the --huge-n run.")
    parser.add_argument("--huge-k", type=int, default=20, help="Picks of the --huge-n run.")
    args = parser.parse_args()

    X = embeddings(args.n, args.dim)
    initial = [int(i) for i in np.random.default_rng(1).choice(args.n, args.pool, replace=False)]
    print(f"N = {args.n:,}, d = {args.dim}, k = {args.k}, initial pool = {args.pool}; embeddings {mib(X.nbytes)} (float32)\n")
    ours, t_ours, m_ours = measure(kcenter_greedy, X, args.k, initial)
    ref, t_ref, m_ref = measure(reference_kcenter, X, args.k, initial)
    same = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), len(ours))
    overlap = len(set(ours) & set(ref)) / len(ours)
    print(f"{'':28s}{'time':>10s}{'peak memory':>16s}")
    print(f"{'reference (N×N, float32)':28s}{t_ref:9.2f}s{mib(m_ref):>16s}")
    print(f"{'srt_hf kcenter_greedy':28s}{t_ours:9.2f}s{mib(m_ours):>16s}")
    centres = (args.k + args.pool) * args.dim * 8
    print(f"\nspeed-up {t_ref / t_ours:.1f}x, memory {m_ref / max(m_ours, 1):.0f}x less "
          f"(srt_hf: O(N) vectors plus float64 copies of the k + pool centres, {mib(centres)} here)")
    print(f"picks: the first {same} of {len(ours)} identical, {overlap:.1%} of the picked rows shared "
          "(the reference's float32 distances round near-ties differently; srt_hf's picks are exact)")

    for n, k in ((args.big_n, args.k), (args.huge_n, args.huge_k)):
        if not n:
            continue
        del X
        X = embeddings(n, args.dim if n != args.huge_n else args.huge_dim, seed=2)
        initial = [int(i) for i in np.random.default_rng(3).choice(n, args.pool, replace=False)]
        _, t_big, m_big = measure(kcenter_greedy, X, k, initial)
        nxn = n**2 * 4
        print(f"\nN = {n:,}, d = {X.shape[1]}, k = {k}: srt_hf {t_big:.2f}s ({t_big / k * 1000:.1f} ms per pick), "
              f"peak {mib(m_big)} on top of the embeddings ({mib(X.nbytes)}); an N×N float32 matrix would need {nxn / 2**30:,.0f} GiB")


if __name__ == "__main__":
    main()
