"""`recycle` / `srt-hf recycle`: stages 1-5 through real HTTP, faults, bad teachers, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from fault_server import FaultServer, SpawnedServer, garbage_answer

from srt_hf.dataio import load_input
from srt_hf.errors import TeacherError
from srt_hf.pipeline import RecycleConfig, final_filter, recycle
from srt_hf.teachers import EndpointTeacher, GenerationConfig

FAST = dict(timeout=2.0, max_retries=6, backoff_base=0.01, backoff_max=0.05)
PROVENANCE = ("instruction_choice_reason", "response_choice_reason", "selection_reason")


@pytest.fixture(scope="module")
def demo(demo_path):
    return load_input(str(demo_path)).select(range(8))


def check_every_row_explained(result, n):
    rows = result.rows.to_list()
    assert len(rows) == n and [r["row_id"] for r in rows] == list(range(n))
    for r in rows:
        assert all(r[c] for c in PROVENANCE), r
        assert r["instruction_choice"] in ("original", "reflected") and r["response_choice"] in ("original", "reflected")
        assert r["selection_reason"].startswith(("kept: ", "dropped: "))
    return rows


def test_pipeline_through_a_faulty_server(tmp_path, tiny_model_dir, demo):
    faults = ["500", "429:1", "slow:5", "malformed", "drop", "503"]
    with FaultServer(latency=0.02, failure_rate=0.1, failure_kind="500", faults=faults) as server:
        teacher = EndpointTeacher(server.url, model="fake", config=GenerationConfig(**FAST))
        result = recycle(demo, teacher=teacher, student=str(tiny_model_dir), out=tmp_path / "run")
        stats = server.stats()
    rows = check_every_row_explained(result, 8)
    assert stats["faults"].get("500", 0) >= 1 and "drop" in stats["faults"]
    assert result.meta["teacher_requests"]["retried"] >= len(faults)
    assert all(r["instruction_reflection_status"] == "ok" for r in rows)  # every fault was retried away
    assert any(r["instruction_choice"] == "reflected" for r in rows)
    for r in rows:  # the final text is the version each choice names
        source = "instruction_reflected" if r["instruction_choice"] == "reflected" else "original_instruction"
        assert r["final_instruction"] == r[source]
        assert r["final_response"] == (r["better_response"] if r["response_choice"] == "reflected" else r["chosen_response"])
    run = result.run_dir
    assert {p.name for p in run.iterdir()} >= {"rows.parquet", "selected.parquet", "sft", "run.json", "README.md", "cache.sqlite",
                                              "report.html"}
    sft = pq.read_table(run / "sft" / "train.parquet").to_pylist()
    assert len(sft) == len(result.selected) and all(s["completion"][0]["role"] == "assistant" for s in sft)
    meta = json.loads((run / "run.json").read_text())
    assert meta["kind"] == "recycle" and meta["counts"]["input"] == 8
    assert meta["methods"] == ["selective-reflection-tuning", "reflection-tuning", "ifd"]  # the card cites these
    assert not {"dtype", "device"} & set(meta["teacher"])  # an HTTP teacher has no local placement to record
    assert meta["student"]["engine"] == "cpu" and meta["student"]["engine_variant"].startswith("the cpu engine")


def test_a_failing_teacher_keeps_every_row_with_the_reason(tmp_path, tiny_model_dir, demo):
    with FaultServer(failure_rate=1.0, failure_kind="500") as server:
        config = GenerationConfig(**{**FAST, "max_retries": 1, "breaker_failures": 10_000})
        teacher = EndpointTeacher(server.url, model="fake", config=config)
        result = recycle(demo, teacher=teacher, student=str(tiny_model_dir), out=tmp_path / "run")
    rows = check_every_row_explained(result, 8)
    for r in rows:
        assert r["instruction_reflection_status"].startswith("request_failed")
        assert r["instruction_choice_reason"].startswith("instruction reflection request_failed")
        assert (r["final_instruction"], r["final_response"]) == (r["original_instruction"], r["original_response"])


def test_a_dead_teacher_stops_the_run_and_keeps_finished_work(tmp_path, tiny_model_dir, demo):
    with FaultServer(failure_rate=1.0, failure_kind="503") as server:
        teacher = EndpointTeacher(server.url, model="fake", config=GenerationConfig(**{**FAST, "breaker_failures": 5}))
        with pytest.raises(TeacherError, match="failed 5 requests in a row .last: HTTP 503"):
            recycle(demo, teacher=teacher, student=str(tiny_model_dir), out=tmp_path / "run")
    assert list((tmp_path / "run" / "work" / "1-score-original").glob("*.parquet"))  # the student's work is kept


def test_a_teacher_that_ignores_the_format(tmp_path, tiny_model_dir, demo):
    with FaultServer(answer=garbage_answer) as server:
        teacher = EndpointTeacher(server.url, model="fake", config=GenerationConfig(**FAST))
        result = recycle(demo, teacher=teacher, student=str(tiny_model_dir), out=tmp_path / "run")
    rows = check_every_row_explained(result, 8)
    assert all(r["instruction_reflection_status"].startswith("parse_failed") for r in rows)
    assert result.meta["counts"]["teacher's new pair kept (stage 2)"] == 0


def test_bad_rows_flow_through_with_their_reason(tmp_path, tiny_model_dir):
    ds = Dataset.from_list([
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "", "input": "", "output": "Orphan answer."},
        {"instruction": "Say hi.", "input": "", "output": ""},
        {"instruction": "🙂 " * 400, "input": "", "output": "Too long " * 300},
    ])
    with FaultServer() as server:
        teacher = EndpointTeacher(server.url, model="fake", config=GenerationConfig(**FAST))
        result = recycle(ds, teacher=teacher, student=str(tiny_model_dir), out=tmp_path / "run")
    rows = check_every_row_explained(result, 4)
    assert rows[1]["original_score_status"] == "invalid: empty instruction"
    assert rows[1]["instruction_reflection_status"] == "empty_input: empty instruction"
    assert rows[2]["original_score_status"] == "skipped: empty response"
    assert not rows[1]["selected"] and not rows[2]["selected"]


def test_an_in_process_run_leaves_only_cache_sqlite(tmp_path, tiny_model_dir):
    import sqlite3

    from srt_hf.cli import main

    run = tmp_path / "run"
    with FaultServer() as server:
        argv = ["recycle", "demo", "--limit", "4", "--teacher", server.url, "--teacher-model", "fake", "--student",
                str(tiny_model_dir), "--out", str(run), "--chunk-rows", "2", "--max-concurrency", "2"]
        assert main(argv) == 0
        asked = server.stats()["requests"]
    assert not list(run.glob("cache.sqlite-*"))  # no -wal / -shm beside the cache
    with sqlite3.connect(run / "cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == asked == 8  # 4 rows x 2 reflections


def test_run_json_records_the_local_teachers_placement_and_the_student_engine(tmp_path, tiny_model_dir):
    from srt_hf.cli import main

    run = tmp_path / "run"
    argv = ["recycle", "demo", "--limit", "2", "--teacher", str(tiny_model_dir), "--teacher-dtype", "bfloat16",
            "--teacher-device", "cpu", "--max-new-tokens", "8", "--structured", "off", "--student", str(tiny_model_dir),
            "--out", str(run)]
    assert main(argv) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["teacher"]["dtype"] == "bfloat16" and meta["teacher"]["device"] == "cpu"
    assert meta["student"]["engine"] == "cpu" and meta["student"]["dtype"] == "float32"  # the engine for a CPU student
    card = (run / "README.md").read_text()
    assert "Teacher:" in card and "| student `dtype` | float32 |" in card and (run / "report.html").stat().st_size > 0
    first = meta["student"]
    assert main(argv) == 0  # every chunk resumed: nothing is scored again, the engine stays recorded
    assert json.loads((run / "run.json").read_text())["student"] == first


def test_recycle_can_force_the_student_engine(tmp_path, tiny_model_dir):
    from srt_hf.cli import main

    run = tmp_path / "run"
    with FaultServer() as server:
        argv = ["recycle", "demo", "--limit", "2", "--teacher", server.url, "--teacher-model", "fake", "--student",
                str(tiny_model_dir), "--out", str(run), "--engine", "plain"]
        assert main(argv) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["config"]["engine"] == "plain"
    assert meta["student"]["engine"] == "plain"  # not cpu, which a CPU student gets by itself


def test_final_filter_rules():
    ifd, rifd = [0.5, 1.2, 0.4, float("nan"), 0.9], [0.5, 0.5, 1.1, 0.2, 0.3]
    status = ["ok", "ok", "ok", "skipped: empty response", "ok"]
    selected, reasons, rule = final_filter(ifd, rifd, status, None)
    assert selected == [True, False, False, False, True]
    assert reasons[1].startswith("dropped: final ifd >= 1") and reasons[2].startswith("dropped: final rifd >= 1")
    assert reasons[3] == "dropped: not scored (skipped: empty response)"
    selected, reasons, rule = final_filter(ifd, rifd, status, 0.5)
    assert selected == [False, False, False, False, True] and rule["kept"] == 1  # the higher IFD of the two
    selected, _, rule = final_filter(ifd, rifd, status, 0.0)
    assert not any(selected) and rule["kept"] == 0


def test_config_rejects_a_bad_share():
    with pytest.raises(Exception, match="top-share"):
        RecycleConfig(top_share=1.5)


def recycle_command(url, tiny_model_dir, out):
    return [
        sys.executable, "-m", "srt_hf", "recycle", "demo", "--teacher", url, "--teacher-model", "fake",
        "--student", str(tiny_model_dir), "--out", str(out), "--chunk-rows", "4", "--max-concurrency", "4",
        "--backoff-base", "0.01",
    ]


def test_kill_and_resume(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with SpawnedServer(latency=0.25, jitter=0.05) as server:
        first = subprocess.Popen(recycle_command(server.url, tiny_model_dir, run), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while server.stats()["requests"] < 14 and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, "the run ended before it could be killed"
        first.send_signal(signal.SIGKILL)
        first.wait()
        before = server.stats()
        resumed = subprocess.run(recycle_command(server.url, tiny_model_dir, run), env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        after = server.stats()
        # Only requests in flight at the kill (at most --max-concurrency) may be asked again.
        assert after["repeated_prompts"] <= 4
        assert after["requests"] - before["requests"] <= after["distinct_prompts"] - before["distinct_prompts"] + 4
        clean = subprocess.run(recycle_command(server.url, tiny_model_dir, tmp_path / "clean"), env=env,
                               capture_output=True, text=True, timeout=600)
        assert clean.returncode == 0, clean.stderr[-3000:]
    resumed_rows = pq.read_table(run / "rows.parquet").to_pylist()
    clean_rows = pq.read_table(tmp_path / "clean" / "rows.parquet").to_pylist()
    assert len(resumed_rows) == 20
    assert resumed_rows == clean_rows
