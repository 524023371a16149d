"""Peak memory of `srt-hf score` does not grow with the number of rows (it streams in chunks).

Runs the CLI in fresh processes on N and 4N rows of the same data and prints each run's peak RSS
and the ratio of the two (the baseline is the smaller run; a materialising implementation would grow
with the rows, srt_hf stays near 1.0x).

    python benchmarks/bench_score_memory.py [--data FILE] [--rows 64] [--preset superfiltering]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_cherry_5_percent.json"
RUNNER = (
    "import resource, sys\n"
    "from srt_hf.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


def peak_rss(data: Path, rows: int, preset: str, chunk_rows: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `srt-hf score` run on the first ``rows`` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", RUNNER, "score", str(data), "--limit", str(rows), "--preset", preset,
               "--chunk-rows", str(chunk_rows), "--out", str(Path(tmp) / "out.parquet")]
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
    kib = next(int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("PEAK_RSS_KIB"))
    return kib / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA if SHARED_DATA.exists() else Path("demo"))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--preset", default="superfiltering")
    parser.add_argument("--chunk-rows", type=int, default=32)
    args = parser.parse_args()
    print(f"data: {args.data}, preset {args.preset}, chunks of {args.chunk_rows} rows")
    results = {n: peak_rss(args.data, n, args.preset, args.chunk_rows) for n in (args.rows, 4 * args.rows)}
    for n, (mib, secs) in results.items():
        print(f"{n:6d} rows: peak RSS {mib:8.1f} MiB, {secs:6.1f} s")
    small, large = results[args.rows][0], results[4 * args.rows][0]
    print(f"peak RSS ratio, 4x the rows / 1x: {large / small:.2f}x (flat is ~1.0x)")


if __name__ == "__main__":
    main()
