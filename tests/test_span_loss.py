"""The batched span-loss engine equals transformers' batch-size-1 loss, whatever the batching."""

from __future__ import annotations

import math
import random

import pytest
import torch

from srt_hf.models import load_causal_lm
from srt_hf.student.engines import span_losses
from srt_hf.student.spans import Span


def hf_loss(model, span: Span) -> float:
    """What the references compute: model(ids, labels).loss with the prefix masked, batch size 1."""
    ids = torch.tensor([span.ids])
    labels = ids.clone()
    labels[0, : span.start] = -100
    with torch.no_grad():
        return model(ids, labels=labels).loss.item()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir), device="cpu")


def random_spans(seed: int = 0, n: int = 24) -> list[Span]:
    rng = random.Random(seed)
    head = [rng.randrange(100, 40000) for _ in range(20)]  # a shared "system prompt"
    spans = []
    for i in range(n):
        group = "shared" if i % 2 else "plain"
        body = [rng.randrange(100, 40000) for _ in range(rng.randrange(3, 60))]
        ids = head + body if group == "shared" else body
        start = rng.randrange(len(head) + 1, len(ids)) if group == "shared" else rng.choice([0, 1, len(ids) // 2])
        spans.append(Span(tuple(ids), start, group))
    spans.append(spans[3])  # a duplicate
    return spans


@pytest.mark.parametrize(
    "kwargs",
    [
        {"packing": True},
        {"packing": True, "share_prefix": False},
        {"packing": True, "max_batch_tokens": 40},  # many small packs; spans longer than the budget go alone
        {"packing": False},
        {"packing": False, "max_padding": 1.0, "max_batch_tokens": 10_000},  # heavily padded batches
        {"packing": False, "share_prefix": False, "max_padding": 1.0},
    ],
)
def test_equals_batch_size_one(tiny, kwargs):
    spans = random_spans()
    ours = span_losses(tiny, spans, **kwargs)
    for span, value in zip(spans, ours):
        expected = hf_loss(tiny, span)
        assert value == pytest.approx(expected, rel=1e-5), (span, kwargs)


def test_no_labelled_token_is_nan(tiny):
    spans = [Span((5, 6, 7), 3), Span((5,), 0), Span((5, 6, 7), 1)]
    out = span_losses(tiny, spans)
    assert math.isnan(out[0]) and math.isnan(out[1])
    assert out[2] == pytest.approx(hf_loss(tiny, spans[2]), rel=1e-5)


def test_position_zero_is_never_scored(tiny):
    """start=0 and start=1 label the same tokens: the first token has no prediction."""
    a, b = span_losses(tiny, [Span((11, 12, 13, 14), 0, "x"), Span((11, 12, 13, 14), 1, "y")])
    assert a == b


def test_model_attention_restored(tiny):
    before = tiny.config._attn_implementation
    span_losses(tiny, random_spans(n=4), packing=True)
    assert tiny.config._attn_implementation == before
