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
