"""End to end with a real OpenAI-compatible server: ``transformers serve`` on 127.0.0.1 with the tiny model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from fault_server import free_port

from srt_hf.reflection import InstructionReflection
from srt_hf.status import kind_of as status_kind
from srt_hf.teachers import EndpointTeacher, GenerationConfig

pytestmark = pytest.mark.slow

STARTUP_S = 75


@pytest.fixture(scope="module")
def served_model(tiny_model_dir, tmp_path_factory):
    """``transformers serve <tiny model dir>`` pinned to that model; yields (base url, model name)."""
    cli = shutil.which("transformers", path=os.path.dirname(sys.executable)) or shutil.which("transformers")
    if cli is None:
        pytest.skip("the `transformers` CLI is not installed (pip install 'transformers[serving]')")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [cli, "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer /health within {STARTUP_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, str(tiny_model_dir)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_instruction_reflection_through_transformers_serve(served_model, demo_path):
    import datasets

    url, model = served_model
    rows = datasets.load_dataset("json", data_files=str(demo_path), split="train").select(range(3))
    teacher = EndpointTeacher(f"{url}/v1", model=model, config=GenerationConfig(max_new_tokens=16, timeout=60, max_retries=1))
    out = rows.map(InstructionReflection(teacher), batched=True)
    statuses = list(out["instruction_reflection_status"])
    assert len(statuses) == 3 and all(statuses)
    # a random 2-layer model rarely writes the markers: parse failures are fine, unreachable is not
    assert all(status_kind(s) in {"ok", "parse_failed", "placeholder", "truncated"} for s in statuses), statuses
    assert teacher.stats.completed >= 3 and teacher.stats.failed == 0
    assert all(isinstance(v, str) for v in list(out["instruction_reflected"]) + list(out["response_reflected"]))


def test_recycle_pipeline_through_transformers_serve(served_model, demo_path, tiny_model_dir, tmp_path):
    """The whole selective pipeline with a real OpenAI-compatible server as the teacher."""
    import datasets

    from srt_hf.pipeline import recycle

    url, model = served_model
    rows = datasets.load_dataset("json", data_files=str(demo_path), split="train").select(range(3))
    teacher = EndpointTeacher(f"{url}/v1", model=model, config=GenerationConfig(max_new_tokens=16, timeout=60, max_retries=1))
    result = recycle(rows, teacher=teacher, student=str(tiny_model_dir), out=tmp_path / "run")
    out = result.rows.to_list()
    assert len(out) == 3 and all(r["selection_reason"] and r["instruction_choice_reason"] for r in out)
    assert all(status_kind(r["instruction_reflection_status"]) in {"ok", "parse_failed", "placeholder", "truncated"} for r in out)
    assert result.meta["teacher_requests"]["completed"] >= 6 and result.meta["teacher_requests"]["failed"] == 0
    assert (result.run_dir / "README.md").is_file() and (result.run_dir / "sft" / "train.parquet").is_file()
