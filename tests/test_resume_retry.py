"""A rerun asks the teacher again for the rows whose request failed; answered rows come from the cache."""

from __future__ import annotations

import collections
import json

import pytest
from fault_server import FaultServer, free_port

from srt_hf.dataio import load_input
from srt_hf.pipeline import RecycleConfig, recycle
from srt_hf.status import kind_of
from srt_hf.teachers import EndpointTeacher, GenerationConfig

# One attempt per request, so a failure is final for the run; the breaker never stops these runs.
ONCE = GenerationConfig(timeout=2.0, max_retries=0, backoff_base=0.01, backoff_max=0.05, breaker_failures=10_000,
                        breaker_seconds=10_000)
STATUSES = ("instruction_reflection_status", "response_reflection_status")


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
