"""IFDScorer as a `datasets` transform: batched map, pinned schema, ranks, pickling, caching."""

from __future__ import annotations

import json
import pickle

import pytest
from datasets import Dataset, Value, load_dataset

from srt_hf import IFDScorer

ROWS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "Say hello in French.", "input": "", "output": "Bonjour !"},
    {"instruction": "Give a synonym of quick.", "input": "", "output": "Fast."},
]


@pytest.fixture
def scorer(tiny_model_dir):
    return IFDScorer(student=str(tiny_model_dir), preset="reflection")


def test_batched_map_adds_pinned_columns(scorer):
    out = Dataset.from_list(ROWS).map(scorer, batched=True, batch_size=3)
    assert out.column_names == ["instruction", "input", "output", *scorer.config.output_columns()]
    assert out.features["ifd"] == Value("float64") and out.features["score_status"] == Value("string")
    assert list(out["score_status"]) == ["ok"] * 4
    assert all(v > 0 for v in list(out["ifd"]) + list(out["rifd"]))
    assert dict(out.features) == {**Dataset.from_list(ROWS).features, **scorer.features}


def test_all_null_first_batch_keeps_the_schema(scorer):
    rows = [{"instruction": "", "input": "", "output": "x"}, {"instruction": "Hi", "input": "", "output": ""}] + ROWS
    out = Dataset.from_list(rows).map(scorer, batched=True, batch_size=2)
    assert out.features["ifd"] == Value("float64")
    assert list(out["score_status"])[:2] == ["invalid: empty instruction", "skipped: empty response"]
    assert list(out["ifd"])[2] > 0


def test_rifd_is_opt_in_outside_reflection(tiny_model_dir):
    cherry = IFDScorer(student=str(tiny_model_dir), preset="cherry")
    assert "rifd" not in cherry.config.output_columns()
    with_rifd = IFDScorer(student=str(tiny_model_dir), preset="superfiltering", rifd=True)
    out = Dataset.from_list(ROWS).map(with_rifd, batched=True)
    assert all(v > 0 for v in list(out["rifd"]))


def test_with_rank_and_num_proc(scorer):
    single = Dataset.from_list(ROWS).map(scorer, batched=True)
    ranked = Dataset.from_list(ROWS).map(scorer, batched=True, batch_size=2, with_rank=True, num_proc=2)
    assert list(ranked["ifd"]) == pytest.approx(list(single["ifd"]), rel=1e-5)


def test_pickles_without_the_model(scorer):
    scorer(Dataset.from_list(ROWS[:1])[:])  # loads the model
    assert scorer._model is not None
    blob = pickle.dumps(scorer)
    assert len(blob) < 5_000
    clone = pickle.loads(blob)
    assert clone._model is None and clone.config == scorer.config


def test_second_identical_map_is_served_from_cache(tmp_path, tiny_model_dir):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS))
    ds = load_dataset("json", data_files=str(data), split="train", cache_dir=str(tmp_path / "cache"))
    first = ds.map(IFDScorer(student=str(tiny_model_dir)), batched=True)
    again_scorer = IFDScorer(student=str(tiny_model_dir))
    again = ds.map(again_scorer, batched=True)
    assert again_scorer._model is None  # never called: the cached result was used
    assert again._fingerprint == first._fingerprint and list(again["ifd"]) == list(first["ifd"])
    for change in ({"preset": "cherry"}, {"template": "alpaca"}, {"student": "default"}):
        changed = IFDScorer(**{"student": str(tiny_model_dir), **change})
        assert ds.map(changed, batched=True, batch_size=2)._fingerprint != first._fingerprint
        assert changed._model is not None, change


def test_with_rank_puts_the_student_on_the_gpu_of_its_rank(monkeypatch, scorer):
    """Where GPUs exist, the rank datasets passes (with_rank=True) picks cuda:rank, wrapping round the GPUs."""
    import torch

    from srt_hf import models
    from srt_hf.student import scorer as scoring

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    devices = []
    monkeypatch.setattr(scoring, "_load_student", lambda student, revision, dtype, device: devices.append(device) or (None, None))
    for rank in (0, 1, 2, None):
        scorer._load(rank)
    assert devices == ["cuda:0", "cuda:1", "cuda:0", "cuda"]
    assert models.prepare_device("cpu", 1) == "cpu"  # an explicit device wins over the rank
