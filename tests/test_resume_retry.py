"""A rerun asks the teacher again for the rows whose request failed; answered rows come from the cache."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fault_server import FaultServer, free_port

from srt_hf.cli import main
from srt_hf.dataio import load_input
from srt_hf.pipeline import RecycleConfig, recycle
from srt_hf.status import kind_of
from srt_hf.teachers import EndpointTeacher, GenerationConfig

# One attempt per request, so a failure is final for the run; the breaker never stops these runs.
ONCE = GenerationConfig(timeout=2.0, max_retries=0, backoff_base=0.01, backoff_max=0.05, breaker_failures=10_000,
                        breaker_seconds=10_000)
STATUSES = ("instruction_reflection_status", "response_reflection_status")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(demo_path):
    return load_input(str(demo_path)).select(range(4))


def run(ds, port, tiny_model_dir, out, **config):
    teacher = EndpointTeacher(f"http://127.0.0.1:{port}", model="fake", config=ONCE)
    return recycle(ds, teacher=teacher, config=RecycleConfig(student=str(tiny_model_dir), chunk_rows=2, **config), out=out)


def prompts(server: FaultServer, fault: str | None = None) -> collections.Counter:
    """How often each prompt was asked (only the requests that met ``fault``, when given)."""
    return collections.Counter(json.dumps(e["body"]["messages"], sort_keys=True) for e in server.log
                               if fault is None or e["fault"] == fault)


def failed(result) -> int:
    return sum(kind_of(s) == "request_failed" for column in STATUSES for s in result.rows[column])


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_model_dir, demo):
    """A run against a healthy teacher: its rows and every prompt it asked."""
    port = free_port()
    with FaultServer(port=port) as server:
        result = run(demo, port, tiny_model_dir, tmp_path_factory.mktemp("clean") / "run")
        asked = prompts(server)
    assert failed(result) == 0 and set(asked.values()) == {1}
    return result.rows.to_list(), asked


@pytest.mark.slow
def test_a_dead_teacher_then_a_healthy_one_on_the_same_port(tmp_path, tiny_model_dir, demo, clean):
    clean_rows, clean_prompts = clean
    port, out = free_port(), tmp_path / "run"
    with FaultServer(port=port, failure_rate=1.0, failure_kind="503") as dead:
        first = run(demo, port, tiny_model_dir, out)
    assert failed(first) == 2 * len(demo) and len(dead.log) == 2 * len(demo)

    with FaultServer(port=port) as healthy:
        kept = run(demo, port, tiny_model_dir, out, retry_failed=False)  # --no-retry-failed: nothing is asked
        assert healthy.requests == 0 and kept.rows.to_list() == first.rows.to_list()
        resumed = run(demo, port, tiny_model_dir, out)
        asked = prompts(healthy)
    assert asked == clean_prompts  # exactly the failed rows' requests, each once
    assert resumed.rows.to_list() == clean_rows


@pytest.mark.slow
def test_only_the_failed_requests_are_asked_again(tmp_path, tiny_model_dir, demo, clean):
    clean_rows, clean_prompts = clean
    port, out = free_port(), tmp_path / "run"
    with FaultServer(port=port, faults=["500"] * 3) as flaky:  # the first three requests fail, the others are answered
        first = run(demo, port, tiny_model_dir, out)
        answered = prompts(flaky, "ok")
    assert failed(first) == 3

    with FaultServer(port=port) as healthy:
        resumed = run(demo, port, tiny_model_dir, out)
        asked = prompts(healthy)
    # Everything the clean run asked, less what the first run already has in its cache: nothing twice.
    assert asked == collections.Counter({p: 1 for p in clean_prompts if p not in answered})
    assert 3 <= sum(asked.values()) < len(clean_prompts)
    assert resumed.rows.to_list() == clean_rows
    # The redone chunks of stage 2 also hold rows answered the first time: those replies came from the cache.
    assert resumed.meta["teacher_requests"]["cache_hits"] >= 1


def cli_argv(port: int, tiny_model_dir, out) -> list[str]:
    return ["recycle", "demo", "--limit", "4", "--teacher", f"http://127.0.0.1:{port}", "--teacher-model", "fake",
            "--student", str(tiny_model_dir), "--out", str(out), "--chunk-rows", "2", "--max-concurrency", "1",
            "--backoff-base", "0.01", "--structured", "off"]


@pytest.mark.slow
def test_a_refused_key_stops_the_cli_in_one_line_and_a_rerun_resumes(tmp_path, tiny_model_dir):
    """A retry is one short line at the default log level; HTTP 401 stops the run with the server's words and the
    setting to change; what was answered is kept, and the rerun against a fixed server equals a clean run."""
    port, out = free_port(), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with FaultServer(port=port, faults=["503", "ok", "ok", "ok", "401"]) as refusing:
        first = subprocess.run([sys.executable, "-m", "srt_hf", *cli_argv(port, tiny_model_dir, out)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
        answered = prompts(refusing, "ok")
    err = first.stderr.replace("\r", "\n")
    errors = [line for line in err.splitlines() if "srt-hf recycle: error:" in line]
    assert first.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "answered HTTP 401 (injected 401)" in errors[0] and "--teacher-api-key-env" in errors[0] and "rerun to resume" in errors[0]
    # the retry line (a progress bar may precede it on the same line)
    assert re.search(r"teacher http://127\.0\.0\.1:\d+: HTTP 503; retrying \(attempt 2 of 6\)\n", err), err[-3000:]
    assert sum(answered.values()) == 3

    with FaultServer(port=port) as healthy:
        assert main(cli_argv(port, tiny_model_dir, out)) == 0
        resumed = prompts(healthy)
    with FaultServer(port=port) as clean:
        assert main(cli_argv(port, tiny_model_dir, tmp_path / "lone")) == 0
        lone = prompts(clean)
    assert resumed == collections.Counter({p: 1 for p in lone if p not in answered})  # the three answers were kept
    assert pq.read_table(out / "rows.parquet").to_pylist() == pq.read_table(tmp_path / "lone" / "rows.parquet").to_pylist()
