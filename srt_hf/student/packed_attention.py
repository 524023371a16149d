"""Attention for packed sequences: several spans in one row, each attending only to itself (and a shared prefix).

    with packed(model, "segments"):     # or "flash" on CUDA with flash-attn installed
        hidden = model.base_model(input_ids=ids, position_ids=positions, use_cache=False,
                                  **layout.forward_kwargs()).last_hidden_state

Packing removes padding and gives the linear layers one long row (the large matrix shapes a CPU runs
fastest). Two backends:

* ``"segments"`` (any device): registered with transformers' ``AttentionInterface`` as ``"srt_packed"``.
  The spans of a row are gathered into a few right-padded batches of similar length and handed, one
  batch per call, to **the attention function the model itself was configured with** (``sdpa`` or the
  model file's own ``eager_attention_forward``), with the keyword arguments the model passes (scaling,
  ``sliding_window``, ``softcap``, sinks ...) and a causal mask in that function's format. Whatever the
  model's attention does, it does here; only which keys a query sees is ours: its own span's earlier
  tokens (within the model's sliding window) and the shared prefix, whose keys/values come precomputed.
* ``"flash"`` (CUDA, half precision, flash-attn installed): transformers' own variable-length path
  (``flash_attention_2``/``_3`` with ``cu_seq_lens``), no padding at all; no shared prefix.

Which backend is exact for which model is decided in :mod:`srt_hf.student.cpu` (and checked in :mod:`srt_hf.student.engines`).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

NAME = "srt_packed"
MAX_BUCKET_WASTE = 0.125  # a bucket's shortest span is at least 7/8 of its longest (attention on padding is wasted)


@dataclass
class PackLayout:
    """Where each span of a packed row lies, grouped into buckets of similar length (computed once per row)."""

    lengths: list[int]
    implementation: str = "sdpa"  # the model's own attention implementation, called per bucket
    prefix_kv: list | None = None  # per layer (keys, values) of the shared prefix: (1, kv_heads, P, d)
    # per bucket: gather (S, L) row positions, the row positions of its valid outputs, their flat indices, L
    buckets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = field(default_factory=list)
    _masks: dict = field(default_factory=dict)

    @classmethod
    def build(cls, lengths: list[int], device, implementation: str = "sdpa", prefix_kv=None) -> PackLayout:
        layout = cls(list(lengths), implementation, prefix_kv)
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
        i = 0
        while i < len(order):
            width = lengths[order[i]]
            members = [order[i]]
            i += 1
            while i < len(order) and lengths[order[i]] >= (1 - MAX_BUCKET_WASTE) * width:
                members.append(order[i])
                i += 1
            gather = torch.empty((len(members), width), dtype=torch.long)
            valid = torch.zeros((len(members), width), dtype=torch.bool)
            for b, j in enumerate(members):
                n = lengths[j]
                gather[b, :n] = torch.arange(starts[j], starts[j] + n)
                gather[b, n:] = starts[j]  # padding reads a real token; its output is dropped
                valid[b, :n] = True
            flat = gather[valid]  # row positions of the valid outputs, bucket order
            layout.buckets.append((gather.to(device), flat.to(device), valid.reshape(-1).nonzero()[:, 0].to(device), width))
        return layout

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix_kv is None else self.prefix_kv[0][0].shape[2]

    def mask(self, width: int, window: int | None, dtype: torch.dtype, device) -> torch.Tensor | None:
        """(1, 1, width, P + width): causal over the span, every prefix key visible, within ``window``.

        None where SDPA's own causal flag says the same (no prefix, no window shorter than the span).
        Boolean for SDPA; additive (0 / dtype min) for an ``eager`` function, which adds it to the scores.
        """
        P = self.prefix_len
        window = window if window is not None and window < P + width else None
        eager = self.implementation != "sdpa"
        if not eager and P == 0 and window is None:
            return None
        key = (width, window, dtype, eager)
        if key not in self._masks:
            q = torch.arange(P, P + width, device=device)[:, None]  # absolute positions of the queries
            k = torch.arange(P + width, device=device)[None, :]
            allowed = k <= q
            if window is not None:
                allowed &= k > q - window  # transformers' sliding-window rule
            if eager:
                m = torch.zeros(allowed.shape, dtype=dtype, device=device)
                m.masked_fill_(~allowed, torch.finfo(dtype).min)
            else:
                m = allowed
            self._masks[key] = m[None, None]
        return self._masks[key]

    def forward_kwargs(self) -> dict:
        return {"srt_layout": self}


def packed_attention(module, query, key, value, attention_mask=None, **kwargs):
    """``query``: (1, heads, T, d); ``key``/``value``: (1, kv_heads, T, d). Returns (1, T, heads, d)."""
    layout: PackLayout = kwargs.pop("srt_layout")
    if kwargs.get("position_bias") is not None:
        raise NotImplementedError("position_bias cannot be split by span")  # the scorer then runs unpacked
    kwargs.pop("position_ids", None)  # packed positions mean nothing to a per-bucket call
    inner = model_attention_function(module, layout.implementation)
    window = kwargs.get("sliding_window")
    out = query.new_empty(query.shape[2], query.shape[1], value.shape[-1])  # (T, heads, d_v)
    prefix = layout.prefix_kv[module.layer_idx] if layout.prefix_kv is not None else None
    for gather, flat, valid, width in layout.buckets:
        q = query[0][:, gather].transpose(0, 1)  # (S, heads, L, d)
        k = key[0][:, gather].transpose(0, 1)  # (S, kv_heads, L, d)
        v = value[0][:, gather].transpose(0, 1)
        if prefix is not None:
            pk, pv = prefix
            k = torch.cat([pk.expand(k.shape[0], -1, -1, -1), k], dim=2)  # (S, kv_heads, P + L, d)
            v = torch.cat([pv.expand(v.shape[0], -1, -1, -1), v], dim=2)
        mask = layout.mask(width, window, query.dtype, query.device)
        o, _ = inner(module, q, k, v, mask, **kwargs)  # (S, L, heads, d_v)
        out[flat] = o.reshape(-1, o.shape[2], o.shape[3])[valid]
    return out[None], None


def model_attention_function(module, implementation: str):
    """The attention function ``module`` calls under ``implementation`` (its own file's eager one for 'eager')."""
    if implementation == "eager":
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise NotImplementedError(f"{type(module).__name__} has no module-level eager_attention_forward")
        return fn
    from transformers import AttentionInterface

    return AttentionInterface()[implementation]


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_attention)


def flash_implementation(model) -> str | None:
    """transformers' flash-attention implementation usable for ``model`` here, if any (CUDA, half precision)."""
    if model.device.type != "cuda" or model.dtype not in (torch.float16, torch.bfloat16):
        return None
    if not getattr(model, "_supports_flash_attn", False):
        return None
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    if is_flash_attn_3_available():
        return "flash_attention_3"
    if is_flash_attn_2_available():
        return "flash_attention_2"
    return None


def segments_supported(model) -> bool:
    """Whether the model dispatches attention through transformers' AttentionInterface with sdpa or eager."""
    return bool(getattr(model, "_supports_attention_backend", False)) and model.config._attn_implementation in ("sdpa", "eager")


def varlen_kwargs(lengths: list[int], device) -> dict:
    """transformers' flash-attention varlen arguments for spans of ``lengths`` laid end to end."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    cu = cu.to(device)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


@contextmanager
def packed(model, backend: str, implementation: str | None = None):
    """Switch ``model``'s attention for packed rows for the duration of the block; yields the inner implementation.

    ``"segments"``: attention goes through :func:`packed_attention`, which calls the model's previous
    implementation per bucket. ``"flash"``: ``implementation`` (a flash-attention implementation name).
    """
    previous = model.config._attn_implementation
    if backend == "segments":
        register()
        target, inner = NAME, previous
    else:
        target = inner = implementation
    model.set_attn_implementation(target)
    try:
        yield inner
    finally:
        model.set_attn_implementation(previous)
