"""Randomly initialised students of real shapes, for speed measurements where no trained weights can travel.

    tok = kit_tokenizer()                                   # $SRT_HF_GPU_TOKENIZER, default ../shared/gpu/tok
    model = random_student("llama-3.2-1b", tok, "cuda")     # Llama-3.2-1B's shapes, random weights, on the device
    path = build_random_student("llama-1b")                 # older form: a saved folder with the embedded tokenizer

Speed depends on the shapes, not on the weights, so a random 1B model times like a trained one; its losses
are meaningless and only compared with the reference loop on the same random weights. The vocabulary is the
real model's (the head's cost is part of the shape); the kit tokenizer's ids all fall inside it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
KIT_TOKENIZER = ROOT.parent / "shared" / "gpu" / "tok"

# name -> (config class, the public model's config fields). Sources: each model's config.json on the Hub.
SHAPES = {
    "smollm2-135m": (transformers.LlamaConfig, dict(  # HuggingFaceTB/SmolLM2-135M
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, vocab_size=49152, rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192,
        rms_norm_eps=1e-5,
    )),
    "qwen2.5-0.5b": (transformers.Qwen2Config, dict(  # Qwen/Qwen2.5-0.5B
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        vocab_size=151936, rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768,
    )),
    "llama-3.2-1b": (transformers.LlamaConfig, dict(  # meta-llama/Llama-3.2-1B
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=131072,
    )),
    "llama-3.1-8b": (transformers.LlamaConfig, dict(  # meta-llama/Llama-3.1-8B
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False, max_position_embeddings=131072,
    )),
    "tiny": (transformers.LlamaConfig, dict(  # for dry runs on a CPU
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
    )),
}
# older names of build_random_student
_ALIASES = {"llama-1b": "llama-3.2-1b", "qwen2-0.5b": "qwen2.5-0.5b"}


def kit_tokenizer():
    """The GPU kit's tokenizer (SmolLM2's): ``$SRT_HF_GPU_TOKENIZER``, else ``../shared/gpu/tok`` beside the checkout."""
    from srt_hf import models

    path = os.environ.get("SRT_HF_GPU_TOKENIZER") or str(KIT_TOKENIZER)
    if not Path(path, "tokenizer.json").is_file():
        raise SystemExit(f"no tokenizer at {path}; set SRT_HF_GPU_TOKENIZER to the GPU kit's tok/ folder")
    return models.load_tokenizer(path)


def shape_config(name: str, tokenizer):
    if name not in SHAPES:
        raise SystemExit(f"unknown student shape {name!r}; choose one of {sorted(SHAPES)}")
    config_class, fields = SHAPES[name]
    return config_class(**fields, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)


def random_student(name: str, tokenizer, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A random model of shape ``name``, initialised directly on ``device`` (seconds, even for 8B on a GPU)."""
    config = shape_config(name, tokenizer)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _tokenizer():
    """The embedded model's tokenizer: from the GPU kit (``SRT_HF_GPU_TOKENIZER``) where the model cannot travel."""
    from srt_hf import models

    return kit_tokenizer() if os.environ.get("SRT_HF_GPU_TOKENIZER") else models.load_tokenizer(None)


def build_random_student(name: str, root: str | os.PathLike | None = None) -> Path:
    """A folder holding a random model of shape ``name`` and the embedded tokenizer (built once, then reused)."""

    name = _ALIASES.get(name, name)
    out = Path(root or os.environ.get("SRT_HF_BENCH_CACHE", "/tmp/srt_hf_bench")) / f"random-{name}"
    if (out / "config.json").is_file():
        return out
    tokenizer = _tokenizer()
    model = random_student(name, tokenizer, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")  # a killed build never looks finished
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
