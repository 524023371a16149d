"""Any student: the four losses equal a plain batch-size-1 forward for every causal-LM architecture.

Tiny random models (2 layers, hidden 64, a 400-token byte-level BPE trained here) are built from each
architecture's config with the features that make it different turned up so that getting them wrong
shows: sliding windows shorter than the texts, strong attention and final-logit soft-capping, Granite's
multipliers and ``logits_scaling``, Cohere's ``logit_scale``, mixture-of-experts routing. Each is scored
with the reflection preset by the CPU engine (packed and padded) and the GPU engine (forced, so it runs on
CPU too), with the shared-prefix cache on and off, and compared with
:func:`srt_hf.student.reference.reference_losses` (``model(ids, labels=...)``, batch size 1). A second set
scores code with indentation under several architectures' *default* configs against the tokenizer object
itself (not the copy reloaded from the student's folder). No embedded model is needed; set
``SRT_HF_TEST_DEVICE=cuda`` to run every test on a GPU.
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
from srt_hf.student import engines
from srt_hf.student.cpu import CpuEngine, ScoringPath
from srt_hf.student.engines import choose_engine, span_losses
from srt_hf.student.plain import PlainEngine
from srt_hf.student.reference import reference_losses
from srt_hf.student.spans import Span, probe_spans

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
PATHS = [{"packing": packing, "share_prefix": share} for packing in (True, False) for share in (True, False)] + [
    {"engine": "gpu", "share_prefix": share} for share in (True, False)
]
# Default configs (only the sizes shrunk): attention biases, no sliding windows, each family's own choices.
DEFAULTS = {
    "llama": transformers.LlamaConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": lambda **kw: transformers.Qwen3Config(**kw, head_dim=16),
    "mistral": transformers.MistralConfig,
    "phi3": transformers.Phi3Config,
    "gemma3_text": lambda **kw: transformers.Gemma3TextConfig(**kw, head_dim=16),
    "olmo2": transformers.Olmo2Config,
}
CODE = [  # responses whose indentation a tokenizer may split in more than one way
    ("Write a JavaScript function that adds two numbers.",
     "function add(a, b) {\n    if (a == null) {\n        return b;\n    }\n    return a + b;\n}"),
    ("Write a Python function that returns the largest of a list.",
     "def largest(xs):\n    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n            best = x\n    return best"),
]


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
    texts += [t for pair in CODE for t in pair]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts + [REVERSE_INSTRUCTION], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build(name: str, tokenizer, path, config=None):
    config = config or CONFIGS[name]()
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
    chosen = choose_engine(model)
    expected_engine = "gpu" if model.device.type == "cuda" else "cpu"
    assert chosen.name == expected_engine, chosen.describe()  # the fast engine is exact for every one of them
    if chosen.name == "cpu":
        assert chosen.path.kind == "packed", chosen.describe()
    expected = reference_losses(model, scorers[0].tokenizer, rows)
    for kw, scorer in zip(PATHS, scorers):
        out = scorer(batch)
        assert out["score_status"] == ["ok"] * len(rows), (name, kw)
        for i, ref in enumerate(expected):
            for key in LOSSES:
                assert out[key][i] == pytest.approx(ref[key], rel=1e-5), (name, kw, i, key)


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_code_with_indentation_under_default_configs(name, tokenizer, tmp_path):
    """Scores equal the plain forward on the ids of the tokenizer the student was saved with.

    transformers 5 loads some model types' tokenizers with its own class (Qwen2Tokenizer for ``qwen2``),
    whose pre-tokenizer split indentation unlike the saved ``tokenizer.json``; the reference computed
    with the scorer's reloaded tokenizer hid that, so the expectation here uses the original object.
    """
    config = DEFAULTS[name](**COMMON)
    student = build(name, tokenizer, tmp_path, config)
    rows = [{"instruction": q, "input": "", "response": a} for q, a in CODE]
    batch = {"instruction": [q for q, _ in CODE], "input": ["", ""], "output": [a for _, a in CODE]}
    for kw in ({}, {"engine": "gpu"}, {"packing": False}):
        scorer = IFDScorer(student=str(student), preset="reflection", device=DEVICE, **kw)
        out = scorer(batch)
        expected = reference_losses(scorer.model, tokenizer, rows)
        assert out["score_status"] == ["ok"] * len(rows), (name, kw)
        for i, ref in enumerate(expected):
            for key in LOSSES:
                assert out[key][i] == pytest.approx(ref[key], rel=1e-5), (name, kw, i, key)


@pytest.fixture(scope="module")
def tiny_dir(tokenizer, tmp_path_factory):
    """A tiny random Llama with the test's tokenizer (no embedded model needed)."""
    return build("llama", tokenizer, tmp_path_factory.mktemp("tiny-llama"))


def load(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).to(DEVICE).eval()


def plain(model, spans):
    return PlainEngine(model).losses(spans)


def test_flash_varlen_path_on_cpu(tiny_dir):
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
    model = load(tiny_dir)
    spans = probe_spans(model.config.vocab_size) * 2
    flash = ScoringPath("packed", "flash", "srt_test_varlen", share_prefix=False)
    got = CpuEngine(model, False, flash).losses(spans, engines.Budget(max_batch_tokens=60))
    np.testing.assert_allclose(got, plain(model, spans), rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored


def test_inexact_packing_falls_back_with_a_notice(tiny_dir, monkeypatch, caplog):
    """A packed path that gets the prefix wrong fails the probe: the CPU engine packs without the prefix cache instead."""
    from srt_hf.student import packed_attention

    monkeypatch.setattr(packed_attention.PackLayout, "prefix_len", property(lambda self: 0))  # prefix keys masked wrongly
    monkeypatch.setattr(engines, "auto_order", lambda model: ("cpu", "plain"))  # the CPU engine's choice, on any device
    model = load(tiny_dir)
    with caplog.at_level(logging.WARNING, logger="srt_hf.student"):
        chosen = choose_engine(model)
    assert (chosen.name, chosen.path.kind, chosen.path.share_prefix) == ("cpu", "packed", False)
    notices = [r.getMessage() for r in caplog.records if r.name == "srt_hf.student"]
    assert len(notices) == 1 and "differs from the plain forward" in notices[0]
    spans = probe_spans(model.config.vocab_size)
    np.testing.assert_allclose(span_losses(model, spans), plain(model, spans), rtol=1e-5)


def test_a_head_that_cannot_run_alone_falls_back_to_the_plain_forward(tiny_dir, monkeypatch, caplog):
    from srt_hf.student import output_head

    zeros = lambda self, hidden: torch.zeros(hidden.shape[0], self.vocab_size, device=hidden.device)  # noqa: E731
    monkeypatch.setattr(output_head.OutputHead, "logits", zeros)
    model = load(tiny_dir)
    with caplog.at_level(logging.WARNING, logger="srt_hf.student"):
        assert choose_engine(model).name == "plain"
    assert "the plain batch-size-1 forward" in caplog.text
    spans = [Span((5, 6, 7, 8), 1), Span((9, 10, 11), 0)]
    with torch.no_grad():
        expected = [model(torch.tensor([s.ids], device=DEVICE), labels=torch.tensor([s.ids], device=DEVICE)).loss.item()
                    for s in spans]
    np.testing.assert_allclose(span_losses(model, spans), expected, rtol=1e-6)
