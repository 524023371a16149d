"""Attention for packed sequences: several spans in one row, each attending only to itself.

Packing removes padding and gives the linear layers one long row (the large matrix shapes a CPU runs
fastest), while attention runs span by span — no quadratic work across spans. A shared prefix (a
template's system prompt) comes in as precomputed keys/values that every span attends to first.

Registered with transformers' ``AttentionInterface`` as ``"srt_packed"``; the spans and the prefix
travel as keyword arguments of the model's forward, which transformers hands to every attention call.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

NAME = "srt_packed"


def packed_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """``query``: (1, heads, T, d); ``key``/``value``: (1, kv_heads, T, d). Returns (1, T, heads, d)."""
    segments = kwargs.get("srt_segments") or [(0, query.shape[2])]
    prefix = kwargs.get("srt_prefix_kv")
    groups = query.shape[1] // key.shape[1]
    out = torch.empty_like(query)
    if prefix is not None:
        prefix_k, prefix_v = prefix[module.layer_idx]
        prefix_len = prefix_k.shape[2]
    for a, b in segments:
        q, k, v = query[:, :, a:b], key[:, :, a:b], value[:, :, a:b]
        if prefix is None:
            out[:, :, a:b] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=groups > 1)
        else:
            k, v = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)
            mask = torch.ones(b - a, prefix_len + b - a, dtype=torch.bool, device=q.device).tril(prefix_len)
            out[:, :, a:b] = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=groups > 1)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_attention)


def supports_packing(model) -> bool:
    """Whether the model dispatches attention through transformers' AttentionInterface."""
    return bool(getattr(model, "_supports_attention_backend", False))


@contextmanager
def packed(model):
    """Switch ``model`` to packed attention for the duration of the block."""
    register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
