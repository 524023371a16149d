"""Teacher faults end in one clean stop: `srt-hf recycle` in a subprocess against a loopback fault server.

Each fault (no answer, resets, a 5xx storm, 401/403/404, huge bodies) must leave stderr free of tracebacks and of
asyncio's "unhandled exception during asyncio.run() shutdown"; a fatal one names the limit actually reached. The
student is stubbed in the subprocess (constant scores): what is tested is the teacher's way out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fault_server import SpawnedServer

ROOT = Path(__file__).resolve().parents[1]
#: The CLI with a constant student (the teacher is what is tested; a model would only make the test slow).
DRIVER = """
import sys
import numpy as np
import srt_hf.pipeline as pipeline
from srt_hf.cli import main

def constant_scores(self, batch, rank=None):
    n = len(next(iter(batch.values())))
    return {c: (["ok"] * n if c.endswith("score_status") else np.full(n, 0.5)) for c in self.config.output_columns()}

pipeline.IFDScorer.__call__ = constant_scores
sys.exit(main(sys.argv[1:]))
"""
SHUTDOWN_NOISE = ("Traceback", "unhandled exception during asyncio.run() shutdown", "Task exception was never retrieved",
                  "was never awaited", "Task was destroyed")


def recycle(url: str, out: Path, *options: str, rows: int = 8) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", DRIVER, "recycle", "demo", "--limit", str(rows), "--out", str(out), "--teacher", url + "/v1",
            "--teacher-model", "fake", "--student", "stub", "--chunk-rows", str(rows), "--backoff-base", "0.01",
            "--backoff-max", "0.05", *options]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def assert_clean(done: subprocess.CompletedProcess) -> str:
    for noise in SHUTDOWN_NOISE:
        assert noise not in done.stderr, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
def test_a_teacher_that_never_answers_stops_once_naming_the_failures_limit(tmp_path):
    with SpawnedServer(latency=30) as server:
        done = recycle(server.url, tmp_path / "run", "--timeout", "1", "--max-retries", "5", "--max-concurrency", "8")
    err = assert_clean(done)
    assert done.returncode == 2
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "failed 10 requests in a row (last: timeout after 1s)" in line and "raise --breaker-failures (now 10)" in line
    assert "--breaker-seconds" not in line


@pytest.mark.slow
def test_the_breaker_names_the_seconds_limit_when_that_was_reached(tmp_path):
    with SpawnedServer(latency=30) as server:
        done = recycle(server.url, tmp_path / "run", "--timeout", "1", "--max-retries", "5", "--max-concurrency", "1",
                       "--breaker-seconds", "2", "--breaker-failures", "1000")
    err = assert_clean(done)
    assert done.returncode == 2
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert "answered nothing but failures for" in line and "raise --breaker-seconds (now 2)" in line
    assert "--breaker-failures" not in line


@pytest.mark.slow
@pytest.mark.parametrize("status", ["401", "403", "404"])
def test_a_refusal_stops_at_once(tmp_path, status):
    with SpawnedServer(latency=0.5, failure_rate=1.0, failure_kind=status, fail_after_latency=False) as server:
        done = recycle(server.url, tmp_path / "run", "--max-concurrency", "8")
    err = assert_clean(done)
    assert done.returncode == 2 and f"answered HTTP {status}" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["reset", "drop", "503"])
def test_resets_and_5xx_storms_end_as_statuses_or_one_error(tmp_path, kind):
    with SpawnedServer(failure_rate=1.0, failure_kind=kind) as server:
        done = recycle(server.url, tmp_path / "run", "--max-retries", "2", "--breaker-failures", "1000")
    assert_clean(done)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pq.read_table(tmp_path / "run" / "rows.parquet").column("instruction_reflection_status").to_pylist()
    assert rows and all(s.startswith("request_failed: ") for s in rows)
    with SpawnedServer(failure_rate=1.0, failure_kind=kind) as server:
        done = recycle(server.url, tmp_path / "storm", "--max-retries", "5")
    err = assert_clean(done)
    assert done.returncode == 2 and "raise --breaker-failures (now 10)" in err


@pytest.mark.slow
def test_huge_replies_are_invalid_counted_and_not_stored(tmp_path):
    with SpawnedServer(faults=["huge:5000000", "stream:5000000"] * 2, failure_rate=0.0) as server:
        done = recycle(server.url, tmp_path / "run", "--max-new-tokens", "64", "--max-concurrency", "1", "--structured", "off",
                       rows=4)  # markers: no dialect probe takes one of the faults
    assert_clean(done)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pq.read_table(tmp_path / "run" / "rows.parquet").to_pylist()
    too_large = [r for r in table if r["instruction_reflection_status"].startswith("invalid: reply of ")]
    assert len(too_large) == 4  # the first four requests: the instruction reflections, one per row
    assert all("exceeds 69632 bytes (64 x max_new_tokens 64 + 64 KiB)" in r["instruction_reflection_status"] for r in too_large)
    assert all(r["chosen_instruction"] == r["original_instruction"] for r in too_large)  # the original is kept
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["teacher_requests"]["oversized"] == 4
    assert (tmp_path / "run" / "cache.sqlite").stat().st_size < 1_000_000  # nothing of the 5 MB bodies was stored
    assert "teacher replies too large (invalid)" in done.stdout


def test_a_fatal_error_cancels_and_awaits_every_other_request_before_it_is_raised():
    import asyncio

    from srt_hf.errors import TeacherError
    from srt_hf.teachers.base import gather_or_cancel

    events: list[str] = []

    async def fatal():
        await asyncio.sleep(0.01)
        raise TeacherError("the breaker opened")

    async def slow(i: int):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # a request that takes a moment to wind down (closing its connection)
            events.append(f"wound down {i}")
            if i == 0:
                raise RuntimeError("failed while being cancelled") from None  # retrieved, never reported at shutdown
            raise

    async def run():
        with pytest.raises(TeacherError, match="the breaker opened"):
            await gather_or_cancel([fatal(), *(slow(i) for i in range(3))])
        events.append("raised")
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    left = asyncio.run(run())
    assert left == [] and events[-1] == "raised" and sorted(events[:-1]) == ["wound down 0", "wound down 1", "wound down 2"]
    assert asyncio.run(_in_order(gather_or_cancel)) == [3, 2, 1]


async def _in_order(gather_or_cancel):
    import asyncio

    async def after(n: int):
        await asyncio.sleep(n / 100)
        return n

    return await gather_or_cancel(after(n) for n in (3, 2, 1))
