"""`srt-hf score`: file formats, nulls, summary, resume after an interruption, 2-process accelerate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from srt_hf.cli import main
from srt_hf.scoring import IFDScorer


def run_score(tiny_model_dir, out, *extra):
    return main(["score", "demo", "--student", str(tiny_model_dir), "--preset", "reflection", "--out", str(out), *extra])


def test_parquet_and_jsonl_with_summary(tmp_path, tiny_model_dir, capsys):
    assert run_score(tiny_model_dir, tmp_path / "s.parquet", "--chunk-rows", "8") == 0
    printed = capsys.readouterr().out
    assert "total       20" in printed and "rifd" in printed and "share with IFD >= 1" in printed
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.num_rows == 20 and table.column("id").to_pylist()[:2] == ["demo-00", "demo-01"]
    assert {"ifd", "rifd", "loss_A_cond", "loss_A_direct", "loss_Q_cond", "loss_Q_direct", "score_status"} <= set(table.column_names)
    assert not (tmp_path / "s.parquet.parts").exists()

    assert run_score(tiny_model_dir, tmp_path / "s.jsonl", "--no-rifd", "--limit", "3") == 0
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(records) == 3 and "rifd" not in records[0] and records[0]["score_status"] == "ok"


def test_missing_scores_are_null_in_files(tmp_path, tiny_model_dir):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"instruction": "Hi", "input": "", "output": ""}) + "\n"
                    + json.dumps({"instruction": "Say hello to me, please.", "input": "", "output": "Hello!"}) + "\n")
    assert main(["score", str(data), "--student", str(tiny_model_dir), "--out", str(tmp_path / "o.jsonl")]) == 0
    record = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert record["ifd"] is None and record["score_status"] == "skipped: empty response"


def test_bad_output_suffix_and_missing_column_are_clear_errors(tmp_path, tiny_model_dir, capsys):
    assert run_score(tiny_model_dir, tmp_path / "s.csv") == 2
    assert "end --out with .parquet or .jsonl" in capsys.readouterr().err
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"question": "Hi", "answer": "Hello"}) + "\n")
    assert main(["score", str(data), "--student", str(tiny_model_dir), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--instruction-column" in capsys.readouterr().err


def test_interrupted_run_resumes_without_redoing_chunks(tmp_path, tiny_model_dir, monkeypatch):
    calls = []
    original = IFDScorer.__call__

    def flaky(self, batch, rank=None):
        calls.append(len(batch["id"]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, batch, rank)

    monkeypatch.setattr(IFDScorer, "__call__", flaky)
    out = tmp_path / "s.parquet"
    assert run_score(tiny_model_dir, out, "--chunk-rows", "5") == 130
    assert len(list((tmp_path / "s.parquet.parts").glob("part-*.parquet"))) == 2
    calls.clear()
    assert run_score(tiny_model_dir, out, "--chunk-rows", "5") == 0
    assert calls == [5, 5]  # only the two unfinished chunks
    monkeypatch.setattr(IFDScorer, "__call__", original)
    fresh = tmp_path / "fresh.parquet"
    assert run_score(tiny_model_dir, fresh, "--chunk-rows", "5") == 0
    assert pq.read_table(out).to_pylist() == pq.read_table(fresh).to_pylist()


def test_two_processes_with_accelerate(tmp_path, tiny_model_dir):
    """On a machine without GPUs, accelerate needs --multi_gpu to start its multi-process launcher."""
    single = tmp_path / "single.parquet"
    assert run_score(tiny_model_dir, single, "--chunk-rows", "3") == 0
    double = tmp_path / "double.parquet"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "srt_hf", "score", "demo",
        "--student", str(tiny_model_dir), "--out", str(double), "--chunk-rows", "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("srt-hf score: 20 rows") == 1  # only the main process writes and reports
    assert "2 processes" in result.stdout
    a, b = pq.read_table(single).to_pylist(), pq.read_table(double).to_pylist()
    assert [r["id"] for r in b] == [r["id"] for r in a]
    for x, y in zip(a, b):
        assert y["ifd"] == pytest.approx(x["ifd"], rel=1e-5) and y["score_status"] == x["score_status"]


def test_scored_parquet_carries_its_provenance_into_select(tmp_path, tiny_model_dir):
    from srt_hf import models
    from srt_hf.dataio import read_provenance

    scored = tmp_path / "s.parquet"
    assert run_score(tiny_model_dir, scored, "--limit", "6") == 0
    provenance = read_provenance(scored)
    assert provenance["student"]["model"] == models.display_name(str(tiny_model_dir))
    assert provenance["student"]["engine"] == "cpu" and provenance["student"]["engine_variant"]
    assert provenance["scoring"] == {"preset": "reflection", "template": "vicuna"}
    assert provenance["source"]["name"] == "demo"

    assert main(["select", str(scored), "--top-share", "0.5", "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["student"] == provenance["student"] and meta["scoring"]["preset"] == "reflection"
    assert models.display_name(str(tiny_model_dir)) in (tmp_path / "run" / "README.md").read_text()
