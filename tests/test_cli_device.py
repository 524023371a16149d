"""`srt-hf score` and `srt-hf recycle` with local model folders and the device / dtype options a GPU user passes.

On a CPU this runs bfloat16 on the CPU; `benchmarks/gpu_check.sh` runs the same file with SRT_HF_TEST_DEVICE=cuda
(issue 20). Either way: every row comes out, with the same files as the plain float32 run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from srt_hf.cli import main
from srt_hf.errors import ConfigError
from srt_hf.teachers import load_teacher

DEVICE = os.environ.get("SRT_HF_TEST_DEVICE", "cpu")
ON_DEVICE = ("--device", DEVICE, "--dtype", "bfloat16")
ROWS = 4


def files(folder: Path) -> set[str]:
    """The run folder's files, the resumable work chunks, the lock and SQLite's journal files aside."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "work" not in p.parts
            and p.name != ".srt-hf.lock" and not p.name.endswith(("-wal", "-shm"))}


def test_score_on_the_device_in_bfloat16_writes_every_row(tmp_path, tiny_model_dir):
    plain, fast = tmp_path / "plain.parquet", tmp_path / "fast.parquet"
    common = ["score", "demo", "--student", str(tiny_model_dir), "--limit", str(ROWS)]
    assert main([*common, "--out", str(plain), "--device", "cpu"]) == 0
    assert main([*common, "--out", str(fast), *ON_DEVICE]) == 0
    a, b = pq.read_table(plain), pq.read_table(fast)
    assert b.num_rows == ROWS and a.column_names == b.column_names
    assert b.column("id").to_pylist() == a.column("id").to_pylist()
    assert all(s == "ok" for s in b.column("score_status").to_pylist())
    assert all(v is not None and v > 0 for v in b.column("ifd").to_pylist())


def test_recycle_with_local_teacher_and_student_folders_on_the_device(tmp_path, tiny_model_dir):
    common = ["recycle", "demo", "--limit", str(ROWS), "--teacher", str(tiny_model_dir), "--student", str(tiny_model_dir),
              "--max-new-tokens", "16"]
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    assert main([*common, "--out", str(plain), "--device", "cpu", "--teacher-device", "cpu"]) == 0
    assert main([*common, "--out", str(fast), *ON_DEVICE, "--teacher-device", DEVICE, "--teacher-dtype", "bfloat16"]) == 0
    assert files(fast) == files(plain)
    a, b = pq.read_table(plain / "rows.parquet"), pq.read_table(fast / "rows.parquet")
    assert b.num_rows == ROWS and b.column_names == a.column_names
    assert b.column("id").to_pylist() == a.column("id").to_pylist()
    assert json.loads((fast / "run.json").read_text())["counts"]["input"] == ROWS
    assert (fast / "README.md").read_text().count("\n") > 10


def test_teacher_device_options_are_for_local_teachers_only():
    with pytest.raises(ConfigError, match="only apply to a local teacher"):
        load_teacher("http://127.0.0.1:9/v1", dtype="bfloat16")
    with pytest.raises(ConfigError, match="--teacher-dtype"):
        load_teacher("default", dtype="bf16")
