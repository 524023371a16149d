"""Any student: the four losses equal a plain batch-size-1 forward for every causal-LM architecture.

Tiny random models (2 layers, hidden 64, a 400-token byte-level BPE trained here) are built from each
architecture's config with the features that make it different turned up so that getting them wrong
shows: sliding windows shorter than the texts, strong attention and final-logit soft-capping, Granite's
multipliers and ``logits_scaling``, Cohere's ``logit_scale``, mixture-of-experts routing. Each is scored
with the reflection preset on the packed path and the padded path, with the shared-prefix cache on and
off, and compared with :func:`srt_hf.reference.reference_losses` (``model(ids, labels=...)``, batch size 1).
"""

from __future__ import annotations

import json
import logging
import os
from itertools import pairwise

import numpy as np
import pytest
import torch
import transformers
from conftest import DATA

from srt_hf import IFDScorer
from srt_hf.reference import reference_losses
from srt_hf.span_loss import (
    PLAIN,
    ScoringPath,
    Span,
    _run,
    probe_spans,
    scoring_path,
    span_losses,
)

LOSSES = ("loss_A_cond", "loss_A_direct", "loss_Q_cond", "loss_Q_direct")
WINDOW = 16  # shorter than most texts: a window that is ignored shows
COMMON = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=16),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=WINDOW),
    "gemma2": lambda: transformers.Gemma2Config(
        **COMMON, head_dim=16, sliding_window=WINDOW, attn_logit_softcapping=0.5, final_logit_softcapping=0.7
    ),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        **COMMON, head_dim=16, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=0.7,
    ),
    "phi3": lambda: transformers.Phi3Config(**COMMON, sliding_window=WINDOW),
    "granite": lambda: transformers.GraniteConfig(
        **COMMON, logits_scaling=8.0, embedding_multiplier=3.0, attention_multiplier=0.3, residual_multiplier=0.5
    ),
    "cohere": lambda: transformers.CohereConfig(**COMMON, logit_scale=0.0625),
    "olmo2": lambda: transformers.Olmo2Config(**COMMON),
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=2048),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        **COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64
    ),
    "mixtral": lambda: transformers.MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW),
}
DEVICE = os.environ.get("SRT_HF_TEST_DEVICE", "cpu")  # benchmarks/gpu_check.sh runs this file on cuda
PATHS = [{"packing": packing, "share_prefix": share} for packing in (True, False) for share in (True, False)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared machine a second thread mostly waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    records = [json.loads(line) for line in (DATA / "records.jsonl").read_text().splitlines()[:4]]
    return [{"instruction": r["instruction"], "input": r["input"], "response": r["output"]} for r in records]


@pytest.fixture(scope="module")
def tokenizer(rows):
    """A byte-level BPE of 400 tokens trained on the rows and the prompt templates (no network, ~0.1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from srt_hf.templates import PROMPT_TEMPLATES, REVERSE_INSTRUCTION

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [v for r in rows for v in r.values()] + [t for p in PROMPT_TEMPLATES.values() for t in p.values()]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts + [REVERSE_INSTRUCTION], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build(name: str, tokenizer, path):
    config = CONFIGS[name]()
    config.vocab_size = len(tokenizer)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>"))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("name", list(CONFIGS))
def test_four_losses_equal_the_plain_forward(name, rows, tokenizer, tmp_path):
    student = build(name, tokenizer, tmp_path)
    batch = {"instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows],
             "output": [r["response"] for r in rows]}
    scorers = [IFDScorer(student=str(student), preset="reflection", device=DEVICE, **kw) for kw in PATHS]
    model = scorers[0].model
    assert scoring_path(model).kind == "packed", scoring_path(model)  # packing is exact for every one of them
    expected = reference_losses(model, scorers[0].tokenizer, rows)
    for kw, scorer in zip(PATHS, scorers):
        out = scorer(batch)
        assert out["score_status"] == ["ok"] * len(rows), (name, kw)
        for i, ref in enumerate(expected):
            for key in LOSSES:
                assert out[key][i] == pytest.approx(ref[key], rel=1e-5), (name, kw, i, key)


def test_flash_varlen_path_on_cpu(tiny_model_dir):
    """The CUDA flash path (cu_seq_lens, restarting positions, no prefix) with a reference varlen kernel in its place."""
    from transformers import AttentionInterface

    def reference_varlen(module, query, key, value, attention_mask, scaling=None, **kwargs):
        cu = kwargs["cu_seq_lens_q"].tolist()
        assert kwargs["cu_seq_lens_k"].tolist() == cu and kwargs["max_length_q"] == max(b - a for a, b in pairwise(cu))
        out = torch.empty_like(query)
        for a, b in pairwise(cu):
            out[:, :, a:b] = torch.nn.functional.scaled_dot_product_attention(
                query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=True
            )
        return out.transpose(1, 2), None

    AttentionInterface.register("srt_test_varlen", reference_varlen)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    spans = probe_spans(model.config.vocab_size) * 2
    flash = ScoringPath("packed", "flash", "srt_test_varlen", share_prefix=False)
    got = _run(model, spans, flash, max_batch_tokens=60, max_batch_size=64, max_padding=0.05)
    np.testing.assert_allclose(got, _run(model, spans, PLAIN, 0, 1, 0.0), rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored


def test_inexact_packing_falls_back_with_a_notice(tiny_model_dir, monkeypatch, caplog):
    """A packed path that gets the prefix wrong fails the probe: the scorer packs without the prefix cache instead."""
    from srt_hf import packed_attention

    monkeypatch.setattr(packed_attention.PackLayout, "prefix_len", property(lambda self: 0))  # prefix keys masked wrongly
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with caplog.at_level(logging.WARNING, logger="srt_hf.span_loss"):
        path = scoring_path(model)
    assert (path.kind, path.share_prefix) == ("packed", False)
    notices = [r.getMessage() for r in caplog.records if r.name == "srt_hf.span_loss"]
    assert len(notices) == 1 and "differs from the plain forward" in notices[0]
    spans = probe_spans(model.config.vocab_size)
    np.testing.assert_allclose(span_losses(model, spans), _run(model, spans, PLAIN, 0, 1, 0.0), rtol=1e-5)


def test_a_head_that_cannot_run_alone_falls_back_to_the_plain_forward(tiny_model_dir, monkeypatch, caplog):
    from srt_hf import output_head

    monkeypatch.setattr(output_head.OutputHead, "logits", lambda self, hidden: torch.zeros(hidden.shape[0], self.vocab_size))
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with caplog.at_level(logging.WARNING, logger="srt_hf.span_loss"):
        assert scoring_path(model) == PLAIN
    assert "the plain batch-size-1 forward" in caplog.text
    spans = [Span((5, 6, 7, 8), 1), Span((9, 10, 11), 0)]
    expected = [model(torch.tensor([s.ids]), labels=torch.tensor([s.ids])).loss.item() for s in spans]
    np.testing.assert_allclose(span_losses(model, spans), expected, rtol=1e-6)
