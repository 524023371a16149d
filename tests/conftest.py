"""Shared fixtures: the embedded model, a tiny random model with the embedded tokenizer, the demo set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network except 127.0.0.1
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once to safetensors (cached across runs)."""
    from srt_hf.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, request) -> Path:
    """A 2-layer Llama with random weights and the embedded model's tokenizer and chat template (on the GPU machine,
    where the embedded model cannot travel, the GPU kit's copy of them: ``SRT_HF_GPU_TOKENIZER``)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    kit = os.environ.get("SRT_HF_GPU_TOKENIZER")
    tokenizer = AutoTokenizer.from_pretrained(kit or request.getfixturevalue("embedded_dir"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def short_gpt2_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A 1-layer GPT-2 with only 128 positions (a learned position table: no row past them), the tiny model's tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = tmp_path_factory.mktemp("short-gpt2")
    config = GPT2Config(
        n_embd=32, n_layer=1, n_head=2, n_positions=128, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def demo_path() -> Path:
    from srt_hf.dataio import demo_path as path

    return path()


def _hub_offline_mode(monkeypatch, offline: bool) -> None:
    """huggingface_hub's offline flag (read once at its import) and the variable, as a user would set them."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub not in offline mode for srt_hf's check; nothing can reach the Hub anyway (uploads are
    replaced, sockets blocked)."""
    _hub_offline_mode(monkeypatch, False)


@pytest.fixture
def hub_offline(monkeypatch):
    """huggingface_hub in offline mode (HF_HUB_OFFLINE=1)."""
    _hub_offline_mode(monkeypatch, True)
