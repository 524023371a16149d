"""Teacher request throughput: srt_hf's EndpointTeacher vs the reference batching pattern.

The fault server answers after 200 ms ± 50 ms and fails 10% of requests with HTTP 500. Both clients
get the same concurrency:

* reference — requests in batches of ``concurrency`` through ``asyncio.gather``; any error retries the
  whole batch (after a short pause), as the public Reflection-Tuning scripts do;
* srt_hf — ``EndpointTeacher``: every request independent under a semaphore, only failed requests
  retried (backoff with full jitter).

Prints requests/s of each, the ratio (target >= 1.5x) and srt_hf's throughput as a share of the bound
``concurrency / latency`` (target >= 90%). It also measures the ceiling of this machine: a bare
semaphore over the same server without failures (server and client overheads included), as a yardstick
for the share.

``--layouts`` also reflects on the demo set with the embedded teacher, once in the structured JSON layout
(decoding constrained by llguidance) and once in the marker layout, and prints requests per row and the share
of reflections without a usable result (parse_failed, placeholder, truncated, rejected meta reply) for each, with their ratio.
No assertions: the figures are for reading.

    python benchmarks/bench_reflection.py [--requests 300] [--concurrency 10] [--layouts --max-new-tokens 200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from huggingface_hub import AsyncInferenceClient  # noqa: E402

from srt_hf.teachers import EndpointTeacher, GenerationConfig  # noqa: E402
from tests.fault_server import SpawnedServer  # noqa: E402


def conversations(n: int, tag: str) -> list[list[dict]]:
    return [[{"role": "user", "content": f"{tag} request {i}: improve this instruction."}] for i in range(n)]


async def ceiling(url: str, convs: list[list[dict]], concurrency: int) -> float:
    """A bare semaphore over a fault-free server: what this machine can do at all; returns the mean latency."""
    client = AsyncInferenceClient(base_url=url, timeout=None)
    slots, latencies = asyncio.Semaphore(concurrency), []

    async def one(messages: list[dict]) -> None:
        async with slots:
            t0 = time.perf_counter()
            await client.chat_completion(messages, model="bench", max_tokens=64)
            latencies.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*(one(m) for m in convs))
    finally:
        await client.close()
    return sum(latencies) / len(latencies)


async def reference(url: str, convs: list[list[dict]], batch: int, pause: float) -> int:
    """Batches of ``batch`` through asyncio.gather; the whole batch again on any error."""
    client = AsyncInferenceClient(base_url=url, timeout=None)
    batches_retried = 0
    try:
        for lo in range(0, len(convs), batch):
            while True:
                try:
                    await asyncio.gather(*(client.chat_completion(m, model="bench", max_tokens=64) for m in convs[lo:lo + batch]))
                    break
                except Exception:  # noqa: BLE001 - the reference pattern retries on anything
                    batches_retried += 1
                    await asyncio.sleep(pause)
    finally:
        await client.close()
    return batches_retried


def run(requests: int, concurrency: int, latency: float, jitter: float, failure_rate: float, backoff: float) -> dict:
    # The server runs in its own process, so it shares no GIL with the client being measured.
    options = {"latency": latency, "jitter": jitter, "failure_rate": failure_rate}
    with SpawnedServer(**options, seed=1) as server:
        t0 = time.perf_counter()
        retried_batches = asyncio.run(reference(server.url, conversations(requests, "ref"), concurrency, backoff))
        ref_s = time.perf_counter() - t0
        ref_sent = server.stats()["requests"]
    with SpawnedServer(**{**options, "failure_rate": 0.0}, seed=3) as server:
        t0 = time.perf_counter()
        mean_latency = asyncio.run(ceiling(server.url, conversations(requests, "ceiling"), concurrency))
        ceiling_s = time.perf_counter() - t0
    with SpawnedServer(**options, seed=2) as server:
        config = GenerationConfig(max_concurrency=concurrency, backoff_base=backoff, max_new_tokens=64, max_retries=8)
        teacher = EndpointTeacher(server.url, model="bench", config=config)
        t0 = time.perf_counter()
        completions = teacher.generate(conversations(requests, "srt"))
        srt_s = time.perf_counter() - t0
        max_in_flight = server.stats()["max_in_flight"]
    ok = sum(c.ok for c in completions)
    bound = concurrency / latency
    return {
        "ref_rps": requests / ref_s, "ref_sent": ref_sent, "ref_batches_retried": retried_batches,
        "srt_rps": ok / srt_s, "srt_ok": ok, "srt_stats": teacher.stats.as_dict(), "bound_rps": bound,
        "max_in_flight": max_in_flight, "ceiling_rps": requests / ceiling_s, "mean_latency": mean_latency,
    }


def layouts(max_new_tokens: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Both reflection transforms on the demo set with the embedded teacher, per layout."""
    from datasets import load_dataset

    from srt_hf.dataio import demo_path
    from srt_hf.reflection import InstructionReflection, ResponseReflection
    from srt_hf.status import PARSE_FAILED, PLACEHOLDER, REJECTED, TRUNCATED, kind_of
    from srt_hf.teachers import LocalTeacher

    ds = load_dataset("json", data_files=str(demo_path()), split="train")
    out = {}
    for layout in ("json", "off"):
        teacher = LocalTeacher("default", config=GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size))
        statuses = []
        t0 = time.perf_counter()
        for cls in (InstructionReflection, ResponseReflection):
            transform = cls(teacher, structured=layout)
            statuses += transform(ds[:])[transform.status_column]
        seconds = time.perf_counter() - t0
        unusable = sum(kind_of(s) in (PARSE_FAILED, PLACEHOLDER, TRUNCATED, REJECTED) for s in statuses)
        out[layout] = {"reflections": len(statuses), "requests_per_row": teacher.stats.requests_sent / len(ds),
                       "unusable": unusable / len(statuses), "seconds": seconds}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--jitter", type=float, default=0.05)
    p.add_argument("--failure-rate", type=float, default=0.1)
    p.add_argument("--backoff", type=float, default=0.1, help="Backoff base of srt_hf and the pause of the reference.")
    p.add_argument("--layouts", action="store_true", help="Also compare the JSON and marker layouts on the demo set (embedded teacher).")
    p.add_argument("--max-new-tokens", type=int, default=200, help="Teacher token limit of --layouts.")
    p.add_argument("--batch-size", type=int, default=20, help="Local teacher batch size of --layouts.")
    args = p.parse_args(argv)
    r = run(args.requests, args.concurrency, args.latency, args.jitter, args.failure_rate, args.backoff)
    print(f"{args.requests} requests, concurrency {args.concurrency}, latency {args.latency * 1000:.0f} ± {args.jitter * 1000:.0f} ms, "
          f"{args.failure_rate:.0%} HTTP 500 (answered at once)")
    print(f"  reference (gather batches of {args.concurrency}, whole batch retried): {r['ref_rps']:6.1f} req/s  "
          f"({r['ref_sent']} requests sent, {r['ref_batches_retried']} batch retries)")
    print(f"  srt_hf EndpointTeacher:                                 {r['srt_rps']:6.1f} req/s  "
          f"({r['srt_stats']['requests_sent']} sent, {r['srt_stats']['retried']} retried, {r['srt_ok']} ok, "
          f"max in flight {r['max_in_flight']})")
    print(f"  ratio srt_hf / reference: {r['srt_rps'] / r['ref_rps']:.2f}x (target >= 1.5x)")
    print(f"  srt_hf share of the bound {r['bound_rps']:.0f} req/s (concurrency / latency): "
          f"{r['srt_rps'] / r['bound_rps']:.0%} (target >= 90%)")
    print(f"  measured ceiling (bare semaphore, no failures, mean latency seen {r['mean_latency'] * 1000:.0f} ms): "
          f"{r['ceiling_rps']:.1f} req/s; srt_hf reaches {r['srt_rps'] / r['ceiling_rps']:.0%} of it")
    if args.layouts:
        res = layouts(args.max_new_tokens, args.batch_size)
        print(f"demo set, embedded teacher, max_new_tokens {args.max_new_tokens}, both reflections, one retry of an unusable reply:")
        for name, label in (("json", "structured JSON (llguidance)"), ("off", "marker layout")):
            r = res[name]
            print(f"  {label:30s} requests/row {r['requests_per_row']:.2f}  without a usable result "
                  f"{r['unusable']:.0%} of {r['reflections']}  ({r['seconds']:.0f} s)")
        marker, structured = res["off"]["unusable"], res["json"]["unusable"]
        print(f"  unusable share, markers / JSON: {marker / structured:.1f}x" if structured else
              f"  unusable share: JSON 0%, markers {marker:.0%}")


if __name__ == "__main__":
    main()
