"""Randomly initialised students of real sizes, for speed measurements where no trained weights can travel.

    path = build_random_student("llama-1b")   # Llama-3.2-1B's shapes, the embedded tokenizer, bfloat16 on disk

Speed depends on the shapes, not on the weights, so a random 1B model times like a trained one; its
losses are meaningless and only compared with the reference loop on the same random model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import transformers

from srt_hf import models

# name -> the config fields of a public model of that size (Llama-3.2-1B; Qwen2.5-0.5B)
SHAPES = {
    "llama-1b": (transformers.LlamaConfig, dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=8192,
    )),
    "qwen2-0.5b": (transformers.Qwen2Config, dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        tie_word_embeddings=True, max_position_embeddings=8192,
    )),
    # the embedded SmolLM2-135M (the GPU kit's tok/config.json holds the same)
    "smollm2-135m": (transformers.LlamaConfig, dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5,
    )),
    # for CPU dry runs of the GPU benchmarks: same code path, seconds instead of minutes
    "tiny": (transformers.LlamaConfig, dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True, max_position_embeddings=4096,
    )),
}


def _tokenizer():
    """The embedded model's tokenizer: from the GPU kit (``SRT_HF_GPU_TOKENIZER``) where the model cannot travel."""
    kit = os.environ.get("SRT_HF_GPU_TOKENIZER")
    return models.load_tokenizer(kit) if kit else models.load_tokenizer(None)


def build_random_student(name: str, root: str | os.PathLike | None = None) -> Path:
    """A folder holding a random model of shape ``name`` and the embedded tokenizer (built once, then reused)."""
    if name not in SHAPES:
        raise SystemExit(f"unknown random student {name!r}; choose one of {sorted(SHAPES)}")
    out = Path(root or os.environ.get("SRT_HF_BENCH_CACHE", "/tmp/srt_hf_bench")) / f"random-{name}"
    if (out / "config.json").is_file():
        return out
    tokenizer = _tokenizer()
    config_class, fields = SHAPES[name]
    config = config_class(**fields, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")  # a killed build never looks finished
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
