"""benchmarks/gpu_check.sh's own logic on a CPU, no step run: ONLY selects steps, BUDGET skips what would not fit
and names it for the next call, and summary.txt is written whatever ran."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "out"
    full = {**os.environ, "DEVICE": "cpu", "SMALL": "1", "OUT": str(out), "SRT_HF_BENCH_CACHE": str(tmp_path / "cache"), **env}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=full, capture_output=True, text=True,
                          timeout=120)
    return done, (out / "summary.txt").read_text()


def test_only_a_pattern_that_names_no_step_runs_nothing(tmp_path):
    done, summary = run_script(tmp_path, ONLY="no_such_step*")
    assert done.returncode == 0, done.stderr
    assert summary.split("\n")[0].split() == ["step", "verdict", "time", "result"]
    assert summary.strip().count("\n") == 0  # the header alone
    assert not (tmp_path / "out" / "prep.log").exists()


def test_steps_that_would_not_fit_the_budget_are_named_for_the_next_call(tmp_path):
    done, summary = run_script(tmp_path, ONLY="prep exactness scoring_dtype_tolerance sft_*", BUDGET="10")
    assert done.returncode == 0, done.stderr
    assert summary.strip().endswith(
        "skipped for time: ONLY='prep exactness scoring_dtype_tolerance sft_lora_demo sft_full_liger'")
    assert not list((tmp_path / "out").glob("*.log"))  # nothing ran, nothing was built


def test_a_step_that_would_get_under_half_its_limit_waits_for_the_next_call(tmp_path):
    # SMALL=1 gives `exactness` a limit of 750 s: with 100 s left it would most likely be cut, so it is not started
    done, summary = run_script(tmp_path, ONLY="exactness", BUDGET="100")
    assert done.returncode == 0, done.stderr
    assert summary.strip().endswith("skipped for time: ONLY='prep exactness'")
    assert not (tmp_path / "out" / "exactness.log").exists()
