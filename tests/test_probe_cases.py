"""The cases of the hostile-user probe not covered elsewhere: a damaged cache while the teacher is still needed, a full
disk during `recycle`, a kill during a batch import, two `recycle` runs into one folder against a loopback teacher."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fault_server import FaultServer, SpawnedServer
from test_batch import CONVERSATIONS, batch_mode, export, write_results
from test_teacher_stops import DRIVER, ROOT, assert_clean, recycle

from srt_hf.status import kind_of
from srt_hf.teachers import ResponseCache

STATUSES = ("instruction_reflection_status", "response_reflection_status")


def statuses(run: Path) -> list[str]:
    table = pq.read_table(run / "rows.parquet")
    return [kind_of(s) for c in STATUSES for s in table.column(c).to_pylist()]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "page"])
def test_a_damaged_cache_while_the_teacher_is_still_needed(tmp_path, damage):
    run = tmp_path / "run"
    # the first run gets 4 replies, then a refusal (fatal): stage 2's first chunk is done, the rest still needs the teacher
    with SpawnedServer(faults=["ok"] * 4, failure_rate=1.0, failure_kind="401") as server:
        first = recycle(server.url, run, "--max-concurrency", "1", "--chunk-rows", "4", "--structured", "off", rows=8)
    assert first.returncode == 2 and "answered HTTP 401" in assert_clean(first)
    cache = run / "cache.sqlite"
    assert cache.stat().st_size > 0
    for side in ("cache.sqlite-wal", "cache.sqlite-shm"):
        (run / side).unlink(missing_ok=True)
    data = bytearray(cache.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not a database at all " * 300)
    else:  # a page in the middle overwritten (a bad sector, a copy cut short and patched)
        start = min(4096, len(data) // 2)
        data[start:start + 4096] = b"\xa5" * len(data[start:start + 4096])
    cache.write_bytes(bytes(data))
    with SpawnedServer() as server:
        second = recycle(server.url, run, "--max-concurrency", "1", "--chunk-rows", "4", "--structured", "off", rows=8)
        asked = server.stats()["requests"]
    err = assert_clean(second)
    assert second.returncode == 0, err[-2000:]
    assert set(statuses(run)) == {"ok"}
    assert list(run.glob("cache.sqlite.corrupt-*")) and "cannot be read" in err and "moved it to cache.sqlite.corrupt-" in err
    assert asked == 4 + 8  # stage 2's second chunk and stage 4; stage 2's first chunk was finished and is kept
    assert len(ResponseCache(cache)) == 12


def stub_student(monkeypatch):
    import numpy as np

    import srt_hf.pipeline as pipeline

    def constant_scores(self, batch, rank=None):
        n = len(next(iter(batch.values())))
        return {c: (["ok"] * n if c.endswith("score_status") else np.full(n, 0.5)) for c in self.config.output_columns()}

    monkeypatch.setattr(pipeline.IFDScorer, "__call__", constant_scores)


def recycle_here(url: str, out: Path) -> int:
    from srt_hf.cli import main

    return main(["recycle", "demo", "--limit", "8", "--out", str(out), "--teacher", url + "/v1", "--teacher-model", "fake",
                 "--student", "stub", "--chunk-rows", "2", "--max-concurrency", "2"])


def test_a_full_disk_during_recycle_keeps_finished_chunks_and_says_where(tmp_path, monkeypatch, capsys):
    import srt_hf.chunks

    stub_student(monkeypatch)
    run = tmp_path / "run"
    real, written = srt_hf.chunks.pq.write_table, []

    def full_in_stage_two(table, where, *args, **kwargs):  # stage 1 (4 chunks) and one chunk of stage 2 fit
        if len(written) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(where)
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(srt_hf.chunks.pq, "write_table", full_in_stage_two)
    with FaultServer() as server:
        assert recycle_here(server.url, run) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and "2-reflect-instruction/part-000001.parquet" in err and "No space left on device" in err
        assert "free disk space" in err and "Traceback" not in err
        stage = run / "work" / "2-reflect-instruction"
        assert sorted(p.name for p in stage.iterdir()) == ["meta.json", "part-000000.parquet"]  # no .tmp left
        asked_before = server.requests
        monkeypatch.setattr(srt_hf.chunks.pq, "write_table", real)
        assert recycle_here(server.url, run) == 0
        repeated = server.repeated_prompts()
    assert set(statuses(run)) == {"ok"} and asked_before >= 4
    assert repeated == {}  # the replies of the chunk that could not be written came from the cache


KILLED_IMPORT = """
import os, signal, sys
sys.path.insert(0, "tests")
from pathlib import Path
from srt_hf.teachers import ResponseCache
from test_batch import batch_mode
real_put, calls = ResponseCache.put, []
def put(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: what `kill -9` or a power cut does
    return real_put(self, *args, **kwargs)
ResponseCache.put = put
batch_mode(Path(sys.argv[1]))
"""


def test_a_kill_during_a_batch_import_imports_again(tmp_path):
    mode = batch_mode(tmp_path)
    mode.teacher.generate(CONVERSATIONS)
    write_results(export(mode))
    killed = subprocess.run([sys.executable, "-c", KILLED_IMPORT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "batches" / "imported.json").exists()  # the ledger is written after the file's last reply
    assert len(ResponseCache(tmp_path / "cache.sqlite")) == 1
    again = batch_mode(tmp_path)
    assert again.report.replies == 3
    assert all(c.ok and c.cached for c in again.teacher.generate(CONVERSATIONS))
    ledger = json.loads((tmp_path / "batches" / "imported.json").read_text())
    assert [entry["replies"] for entry in ledger.values()] == [3]


@pytest.mark.slow
def test_two_recycle_runs_into_one_folder_against_a_loopback_teacher(tmp_path):
    run = tmp_path / "run"
    with SpawnedServer(latency=0.3) as server:
        args = [sys.executable, "-c", DRIVER, "recycle", "demo", "--limit", "8", "--out", str(run), "--teacher", server.url + "/v1",
                "--teacher-model", "fake", "--student", "stub", "--chunk-rows", "2", "--max-concurrency", "1"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 120
        while server.stats()["requests"] == 0 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)  # the first run holds the folder and talks to the teacher
        second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        out, err = first.communicate(timeout=300)
        asked = server.stats()
    assert first.returncode == 0, err[-2000:]
    assert_clean(second)
    assert second.returncode == 2 and f"PID {first.pid}" in second.stderr and "srt-hf recycle" in second.stderr
    assert set(statuses(run)) == {"ok"}
    assert asked["repeated_prompts"] == 0  # the refused run sent nothing
