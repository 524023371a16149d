"""`map_in_chunks(rows_per_call=N)`: several chunks per call to the function, still one part per chunk, and a
rerun resumes chunk by chunk; `IFDScorer.rows_per_call` asks for it only where the student runs on a GPU."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from srt_hf.chunks import map_in_chunks, read_parts


def square(calls):
    def fn(batch):
        calls.append(list(batch["x"]))
        return {"y": np.array(batch["x"], dtype=float) ** 2, "tag": [f"r{x}" for x in batch["x"]]}
    return fn


@pytest.fixture
def ds():
    return Dataset.from_dict({"x": list(range(23))})


def rows(parts):
    return [r for t in read_parts(parts) for r in t.to_pylist()]


def test_several_chunks_per_call_write_the_same_parts(ds, tmp_path):
    one, many = [], []
    plain = map_in_chunks(ds, square(one), tmp_path / "a", key="k", chunk_rows=4)
    grouped = map_in_chunks(ds, square(many), tmp_path / "b", key="k", chunk_rows=4, rows_per_call=10)
    assert [len(c) for c in one] == [4, 4, 4, 4, 4, 3]
    assert [len(c) for c in many] == [8, 8, 7]  # whole chunks, at most 10 rows
    assert len(grouped) == 6 and [pq.read_metadata(p).num_rows for p in grouped] == [4, 4, 4, 4, 4, 3]
    assert rows(grouped) == rows(plain) == [{"x": x, "y": float(x * x), "tag": f"r{x}"} for x in range(23)]


def test_a_rerun_computes_only_the_missing_chunks_together(ds, tmp_path):
    parts = map_in_chunks(ds, square([]), tmp_path / "w", key="k", chunk_rows=4, rows_per_call=10)
    expected = rows(parts)
    parts[1].unlink()
    parts[4].unlink()
    calls = []
    again = map_in_chunks(ds, square(calls), tmp_path / "w", key="k", chunk_rows=4, rows_per_call=10)
    assert calls == [[4, 5, 6, 7, 16, 17, 18, 19]]  # the two missing chunks, in one call
    assert rows(again) == expected


def test_rows_per_call_smaller_than_a_chunk_is_one_chunk_per_call(ds, tmp_path):
    calls = []
    map_in_chunks(ds, square(calls), tmp_path / "w", key="k", chunk_rows=8, rows_per_call=3)
    assert [len(c) for c in calls] == [8, 8, 7]


def test_the_scorer_asks_for_large_calls_only_on_a_gpu():
    from srt_hf.student.scorer import GPU_ROWS_PER_CALL, IFDScorer

    assert IFDScorer(device="cpu").rows_per_call() is None
    assert IFDScorer(device="cuda").rows_per_call() == GPU_ROWS_PER_CALL == 1024
    assert IFDScorer(device="cuda:1").rows_per_call() == GPU_ROWS_PER_CALL


def test_recycle_with_several_chunks_per_student_call_gives_the_same_rows(tmp_path, tiny_model_dir, demo_path,
                                                                           monkeypatch):
    """The student's stages of `recycle` take the scorer's rows_per_call (a GPU's, forced here on the CPU);
    the teacher's go chunk by chunk; the rows come out as with one chunk per call."""
    from fault_server import FaultServer

    from srt_hf.dataio import load_input
    from srt_hf.pipeline import RecycleConfig, recycle
    from srt_hf.student.scorer import IFDScorer
    from srt_hf.teachers import EndpointTeacher, GenerationConfig

    data = load_input(str(demo_path)).select(range(7))
    sizes = []
    original_call = IFDScorer.__call__

    def counting(self, batch, rank=None):
        sizes.append(len(next(iter(batch.values()))))
        return original_call(self, batch, rank)

    monkeypatch.setattr(IFDScorer, "__call__", counting)
    results = {}
    for name, per_call in (("chunked", None), ("grouped", 6)):
        monkeypatch.setattr(IFDScorer, "rows_per_call", lambda self, n=per_call: n)
        sizes.clear()
        with FaultServer(latency=0.0) as server:
            teacher = EndpointTeacher(server.url, model="fake", config=GenerationConfig(timeout=5.0))
            result = recycle(data, teacher=teacher, student=str(tiny_model_dir), out=tmp_path / name,
                             config=RecycleConfig(chunk_rows=2))
        results[name] = (result.rows.to_list(), list(sizes))
    (chunked, chunked_sizes), (grouped, grouped_sizes) = results["chunked"], results["grouped"]
    assert max(chunked_sizes) == 2 and max(grouped_sizes) == 6  # three chunks of 2 rows per student call
    assert len(grouped_sizes) < len(chunked_sizes)
    assert len(grouped) == len(chunked) == 7
    for a, b in zip(grouped, chunked):  # the same decisions; losses equal up to batching's float rounding
        assert {k: v for k, v in a.items() if not isinstance(v, float)} == {k: v for k, v in b.items() if not isinstance(v, float)}
        assert all(a[k] == pytest.approx(b[k], rel=1e-5, nan_ok=True) for k, v in b.items() if isinstance(v, float))
