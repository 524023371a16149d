"""The GPU engine's batching, memory sizing and out-of-memory recovery, on CPU (its exactness: test_architectures.py)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
import transformers

from srt_hf.student import gpu
from srt_hf.student.base import Budget
from srt_hf.student.engines import choose_engine, span_losses
from srt_hf.student.gpu import GpuEngine, tokens_for_memory
from srt_hf.student.plain import PlainEngine
from srt_hf.student.spans import Span, padded_batches


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=512)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def spans(n: int = 20) -> list[Span]:
    rng = random.Random(3)
    head = tuple(rng.randrange(10, 300) for _ in range(12))  # a shared prompt head
    out = []
    for i in range(n):
        body = tuple(rng.randrange(10, 300) for _ in range(rng.randrange(4, 40)))
        out.append(Span(head + body, len(head) + 1, "a") if i % 2 else Span(body, i % 3, "b"))
    return out


def test_an_out_of_memory_batch_is_split_and_no_span_is_lost(model, monkeypatch, caplog):
    """A fake CUDA out-of-memory error on every batch over 120 tokens: halved budgets, one notice each, same losses."""
    real = gpu._run_batch
    seen = []

    def tight(model, head, batch, prefix_len, prefix_kv, sums, slot):
        padded = len(batch) * (len(batch[0].ids) - prefix_len)
        if padded > 120:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        seen.append(len(batch))
        return real(model, head, batch, prefix_len, prefix_kv, sums, slot)

    monkeypatch.setattr(gpu, "_run_batch", tight)
    engine = GpuEngine(model)
    items = spans()
    with caplog.at_level(logging.WARNING, logger="srt_hf.student"):
        got = engine.losses(items, Budget(max_batch_tokens=1000, max_padding=1.0))
    np.testing.assert_allclose(got, PlainEngine(model).losses(items), rtol=1e-5)
    notices = [r.getMessage() for r in caplog.records if "out of GPU memory" in r.getMessage()]
    assert notices and all("tokens per batch" in n for n in notices)
    assert engine.batch_tokens <= 120 and sum(seen) == len(set(items))  # every distinct span ran exactly once


def test_a_single_text_too_large_for_memory_names_the_fix(model, monkeypatch):
    def never(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(gpu, "_run_batch", never)
    with pytest.raises(Exception, match="max_length"):
        GpuEngine(model).losses(spans(2), Budget(max_batch_tokens=1000))


def test_token_budget_follows_free_memory():
    config = transformers.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                                      num_key_value_heads=8)  # the Llama-3.2-1B shape
    small, large = (tokens_for_memory(config, free << 30, 2) for free in (20, 120))
    assert gpu.MIN_BATCH_TOKENS < small < large <= gpu.MAX_BATCH_TOKENS
    assert tokens_for_memory(config, 1 << 30, 2) == gpu.MIN_BATCH_TOKENS  # never below the floor


def test_batches_are_right_padded_without_a_mask(model, monkeypatch):
    """The body gets no attention mask (so SDPA may take its causal kernels), and rows are longest first."""
    calls = []
    body = model.base_model.forward

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attention_mask"), kwargs["input_ids"].shape))
        return body(*args, **kwargs)

    monkeypatch.setattr(model.base_model, "forward", spy)
    GpuEngine(model, share_prefix=False).losses(spans(8), Budget(max_batch_tokens=4000, max_padding=1.0))
    assert calls and all(mask is None for mask, _ in calls)
    assert any(shape[0] > 1 for _, shape in calls)


def test_padding_cuts_a_batch_only_once_it_holds_enough_work():
    order = [Span(tuple(range(10, 10 + n)), 0) for n in (40, 30, 20, 10)]  # longest first, each 25%+ shorter
    widths = lambda batches: [[len(s.ids) for s in b] for b in batches]  # noqa: E731
    assert widths(padded_batches(order, 0, 10_000, 64, 0.15)) == [[40], [30], [20], [10]]
    assert widths(padded_batches(order, 0, 10_000, 64, 0.15, min_tokens=100)) == [[40, 30, 20], [10]]  # 3 x 40 >= 100
    assert widths(padded_batches(order, 0, 100, 64, 0.15, min_tokens=10_000)) == [[40, 30], [20, 10]]  # the cap holds


def test_the_least_work_of_a_batch_scales_with_the_student():
    small, large = (transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(
        hidden_size=h, intermediate_size=2 * h, num_hidden_layers=2, num_attention_heads=4, vocab_size=300)) for h in (32, 64))
    assert gpu.min_batch_tokens(small) > 3 * gpu.min_batch_tokens(large) > 0  # 4x the weights: a quarter of the tokens


def test_a_named_engine_keeps_its_halved_budget_for_the_next_call(model, monkeypatch):
    """engine="gpu" gives the same engine every call, so a budget halved after an out-of-memory error stays halved."""
    real, ooms = gpu._run_batch, []

    def tight(model, head, batch, prefix_len, prefix_kv, sums, slot):
        if len(batch) * (len(batch[0].ids) - prefix_len) > 200:
            ooms.append(len(batch))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(model, head, batch, prefix_len, prefix_kv, sums, slot)

    monkeypatch.setattr(gpu, "_run_batch", tight)
    first = span_losses(model, spans(), engine="gpu", max_batch_tokens=1000, max_padding=1.0)
    engine = choose_engine(model, "gpu")
    assert engine is choose_engine(model, "gpu") and ooms and engine.memory_cap <= 200
    ooms.clear()
    second = span_losses(model, spans(), engine="gpu", max_batch_tokens=1000, max_padding=1.0)
    np.testing.assert_array_equal(first, second)
    assert ooms == []  # the halved budget held from the start
