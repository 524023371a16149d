"""The input is its content: an edit that keeps the size and mtime is seen; a copy of the same bytes is the same run."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from srt_hf.cli import main
from srt_hf.dataio import content_digest, load_input
from srt_hf.scoring import IFDScorer

TEXTS = ["alpha", "bravo", "charlie", "delta", "echoes", "foxtrot"]


def write_rows(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"instruction": f"Spell {t}.", "output": f"{t} is spelled {t}."}) + "\n" for t in texts))


def edit_keeping_size_and_mtime(path: Path, old: str, new: str) -> None:
    """What ``cp -p`` of another version, ``rsync -t`` or ``touch -r`` leave: other bytes, same size and mtime."""
    assert len(old) == len(new)
    before = os.stat(path)
    data = path.read_text()
    path.write_text(data.replace(old, new))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_an_edit_with_the_same_size_and_mtime_is_read_and_a_copy_is_the_same_input(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_rows(path, TEXTS)
    first = load_input(str(path))
    edit_keeping_size_and_mtime(path, "bravo", "BRAVO")
    edited = load_input(str(path))
    assert edited[1]["instruction"] == "Spell BRAVO." and edited._fingerprint != first._fingerprint  # not the stale cache
    copy = tmp_path / "copy.jsonl"
    shutil.copy(path, copy)  # new mtime, same bytes
    os.utime(copy, (1, 1))
    assert load_input(str(copy))._fingerprint == edited._fingerprint
    assert content_digest(copy) == content_digest(path)


def test_a_save_to_disk_folder_is_identified_by_its_files(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_dict({"instruction": ["a", "b"], "output": ["x", "y"]}).save_to_disk(str(folder))
    before = load_input(str(folder))._fingerprint
    shutil.copytree(folder, tmp_path / "copy")
    assert load_input(str(tmp_path / "copy"))._fingerprint == before
    Dataset.from_dict({"instruction": ["a", "c"], "output": ["x", "y"]}).save_to_disk(str(tmp_path / "other"))
    assert load_input(str(tmp_path / "other"))._fingerprint != before


def score(tiny_model_dir, data: Path, out: Path) -> int:
    return main(["score", str(data), "--student", str(tiny_model_dir), "--out", str(out), "--chunk-rows", "2", "--no-rifd"])


@pytest.mark.slow
def test_a_fresh_run_reads_the_edited_rows(tmp_path, tiny_model_dir):
    data, out = tmp_path / "rows.jsonl", tmp_path / "s.parquet"
    write_rows(data, TEXTS)
    assert score(tiny_model_dir, data, out) == 0
    edit_keeping_size_and_mtime(data, "delta", "DELTA")
    assert score(tiny_model_dir, data, out) == 0
    assert pq.read_table(out).column("instruction").to_pylist()[3] == "Spell DELTA."


@pytest.mark.slow
def test_a_resume_redoes_the_chunks_an_edit_changed(tmp_path, tiny_model_dir, monkeypatch, caplog):
    data, out = tmp_path / "rows.jsonl", tmp_path / "s.parquet"
    write_rows(data, TEXTS)
    real, calls = IFDScorer.__call__, []

    def interrupted(self, batch, rank=None):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(batch["instruction"])
        return real(self, batch, rank)

    monkeypatch.setattr(IFDScorer, "__call__", interrupted)
    assert score(tiny_model_dir, data, out) == 130  # chunks 0 and 1 finished
    edit_keeping_size_and_mtime(data, "alpha", "ALPHA")
    calls.clear()
    monkeypatch.setattr(IFDScorer, "__call__", lambda self, batch, rank=None: calls.append(batch["instruction"]) or real(self, batch, rank))
    with caplog.at_level(logging.WARNING, logger="srt_hf"):
        assert score(tiny_model_dir, data, out) == 0
    assert calls == [["Spell ALPHA.", "Spell bravo."], ["Spell echoes.", "Spell foxtrot."]]  # chunk 1 was kept
    assert "redoing 1 finished chunk(s)" in caplog.text and "part-000000.parquet (its input changed)" in caplog.text
    assert pq.read_table(out).column("instruction").to_pylist()[0] == "Spell ALPHA."


def test_a_touched_input_keeps_its_batch_folder(tmp_path, monkeypatch, capsys):
    from test_batch import write_results
    from test_probe_cases import stub_student

    from srt_hf.dataio import demo_path

    stub_student(monkeypatch)
    data, folder = tmp_path / "demo.jsonl", tmp_path / "batches"
    shutil.copy(demo_path(), data)

    def run() -> int:
        return main(["recycle", str(data), "--limit", "4", "--out", str(tmp_path / "run"), "--teacher", "http://127.0.0.1:9/v1",
                     "--teacher-model", "fake", "--student", "stub", "--teacher-batch", str(folder)])

    assert run() == 3
    write_results(folder / "2-reflect-instruction-round1.jsonl")
    os.utime(data, (1, 1))  # same bytes, another mtime (a copy without -p, a git checkout)
    assert run() == 3  # imported; the next stage's requests are exported
    assert (folder / "4-reflect-response-round1.jsonl").exists() and "another run" not in capsys.readouterr().err
    edit_keeping_size_and_mtime(data, "Give", "GIVE")  # other bytes: other data, so another run
    assert run() == 2 and "holds requests of another run" in capsys.readouterr().err


def test_a_recycle_rerun_redoes_only_the_edited_rows_chunks(tmp_path, monkeypatch, caplog):
    from fault_server import FaultServer
    from test_probe_cases import stub_student

    stub_student(monkeypatch)
    data, out = tmp_path / "rows.jsonl", tmp_path / "run"
    write_rows(data, TEXTS)
    with FaultServer() as server:
        def run() -> int:
            return main(["recycle", str(data), "--out", str(out), "--teacher", server.url + "/v1", "--teacher-model", "fake",
                         "--student", "stub", "--chunk-rows", "2"])

        assert run() == 0
        server.reset_counts()
        edit_keeping_size_and_mtime(data, "echoes", "ECHOES")
        with caplog.at_level(logging.WARNING, logger="srt_hf"):
            assert run() == 0
        asked = [json.dumps(entry["body"]["messages"]) for entry in server.log]
    assert "1/5 student scores the originals: redoing 1 finished chunk(s)" in caplog.text
    assert "part-000002.parquet (its input changed)" in caplog.text and "part-000000" not in caplog.text
    assert len(asked) == 2 and all("ECHOES" in a or "foxtrot" in a for a in asked)  # row 4's two reflections only
    rows = pq.read_table(out / "rows.parquet").column("original_instruction").to_pylist()
    assert rows[4] == "Spell ECHOES."
