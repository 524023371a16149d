"""The GPU engine: right-padded, length-sorted batches with no attention mask, so attention takes its fused kernels.

    losses = GpuEngine(model).losses(spans, Budget())   # chosen by itself for CUDA students; engine="gpu" forces it

Built for a GPU, where the CPU engine's packed rows (per-layer gathers, boolean masks, a host sync per
pack) keep SDPA off its flash / cuDNN kernels:

* **Few, large batches.** A batch is cut where padding would pass 15% of its width, but not before it holds
  :data:`MIN_BATCH_FLOP` of work: a small student's short texts would otherwise run in batches too small to keep
  the GPU ahead of the host launching them.
* **No attention mask.** Spans of a group are sorted by length and cut into right-padded batches. A causal
  model never lets a real token see the padding that comes after it, so no padding mask is passed:
  transformers then hands SDPA ``is_causal=True`` and no mask, which its flash and cuDNN kernels take.
  (Sliding-window layers shorter than a batch still get the model's own window mask.)
* **The shared prompt prefix runs once** per group (a template's system prompt) and its keys/values are
  reused by every batch of the group. The queries of a batch then see ``P`` prefix keys before their own:
  a *lower-right* causal mask, which :func:`prefix_attention` gives SDPA as
  ``torch.nn.attention.bias.causal_lower_right`` (flash-eligible) instead of the boolean mask transformers
  would build. Chosen over varlen/FlexAttention document masks because it needs nothing beyond SDPA,
  keeps the model's own attention function for every other case, and the prefix keys are read from one
  copy per batch rather than recomputed per text.
* **The output head only where labels are**, in bounded chunks (:mod:`srt_hf.student.output_head`): a
  128k vocabulary never becomes logits for every position.
* **No host sync per batch.** Token losses are summed per span on the device (``index_add_``) and copied to
  the host once, at the end; index tensors go up from pinned memory without blocking. Building the next
  batch on the CPU therefore overlaps with the GPU running the previous one.
* **Memory.** The token budget of a batch defaults to what the free GPU memory holds
  (:func:`default_batch_tokens`); a batch that still runs out of memory is split at half the budget and
  retried (one-line notice), and the halved budget is kept for the rest of the run. No span is lost.

Runs on any device when forced (``engine="gpu"``), which is how its exactness is tested on CPU.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import ConfigError
from .base import Budget, Engine, Step, no_step
from .spans import (
    Span,
    by_group,
    cache_argument,
    padded_batches,
    prefix_cache,
    scored_positions,
    shared_prefix_len,
    unique_spans,
)

logger = logging.getLogger("srt_hf.student")

NAME = "srt_prefix_causal"
MIN_BATCH_TOKENS, MAX_BATCH_TOKENS = 1024, 1 << 20
DEFAULT_BATCH_TOKENS = 65536  # off CUDA, where free memory is not measured
DEFAULT_BATCH_SIZE = 256
DEFAULT_PADDING = 0.15  # a GPU gains more from long batches than it loses on a little padding
# Work a batch holds before padding may cut it: ~5-30 ms on an H100/H200-class GPU, about what the host takes to
# launch one forward of a small model (~1000 operators). Smaller batches would leave the GPU waiting for the host:
# on alpaca rows, cutting at 15% padding alone gave a 135M student batches of 1.3k tokens (median), 80 per 1024 rows.
MIN_BATCH_FLOP = 4e12
MEMORY_SHARE = 0.5  # of the free GPU memory, for one batch's activations and keys/values


class GpuEngine(Engine):
    """Right-padded batches without a mask; the shared prefix's keys/values computed once per group."""

    name = "gpu"

    def __init__(self, model, share_prefix: bool = True):
        super().__init__(model, share_prefix)
        self.batch_tokens = 0  # tokens per batch of the current call
        self.shapes: list[tuple[int, int]] = []  # (rows, width) of each batch of the last call, for benchmarks
        self.memory_cap: int | None = None  # after an out-of-memory error: the halved budget, kept for later calls

    def unavailable(self) -> str | None:
        from .output_head import OutputHead

        try:
            OutputHead(self.model)
        except TypeError as err:
            return str(err)
        return None

    def variants(self) -> list[Engine]:
        return [self, GpuEngine(self.model, False)] if self.share_prefix else [self]

    def describe(self) -> str:
        return "the gpu engine (right-padded batches, no mask" + (", shared prefixes cached)" if self.share_prefix else ")")

    def losses(self, spans: Sequence[Span], budget: Budget, step: Step = no_step) -> np.ndarray:
        from .output_head import OutputHead

        model = self.model
        unique = unique_spans(spans)
        items = list(unique)
        slot = {span: j for j, span in enumerate(items)}
        sums = torch.zeros(len(items), dtype=torch.float64, device=model.device)  # per-span sums, on the device
        head = OutputHead(model)
        self.batch_tokens = budget.max_batch_tokens or default_batch_tokens(model)
        if self.memory_cap is not None:
            self.batch_tokens = min(self.batch_tokens, self.memory_cap)
        rows = budget.max_batch_size or DEFAULT_BATCH_SIZE
        padding = DEFAULT_PADDING if budget.max_padding is None else budget.max_padding
        least = min_batch_tokens(model)
        self.shapes = []
        with torch.inference_mode(), _prefix_attention(model):
            for members in by_group(items):
                prefix_len = shared_prefix_len(members) if self.share_prefix and len(members) > 1 else 0
                prefix_kv = prefix_cache(model, members[0].ids[:prefix_len], None) if prefix_len else None
                order = sorted(members, key=lambda s: len(s.ids), reverse=True)
                queue = deque(padded_batches(order, prefix_len, self.batch_tokens, rows, padding, least))
                while queue:
                    batch = queue.popleft()
                    try:
                        _run_batch(model, head, batch, prefix_len, prefix_kv, sums, slot)
                        self.shapes.append((len(batch), len(batch[0].ids) - prefix_len))
                        step(sum(len(span.ids) for span in batch))  # queued, not finished: no sync for a bar
                    except torch.OutOfMemoryError:  # this batch and the rest of the group, again at half the budget
                        self._shrink(batch, prefix_len)
                        rest = [span for b in (batch, *queue) for span in b]  # still longest first
                        queue = deque(padded_batches(rest, prefix_len, self.batch_tokens, rows, padding, least))
        counts = np.array([s.n_scored for s in items], dtype=np.float64)
        means = sums.cpu().numpy() / np.maximum(counts, 1)  # the one host sync
        result = np.full(len(spans), np.nan)
        for span, value in zip(items, means):
            result[unique[span]] = value
        return result

    def _shrink(self, batch: list[Span], prefix_len: int) -> None:
        """Halve the token budget (for the rest of this call and later ones) after ``batch`` ran out of GPU memory."""
        width = len(batch[0].ids) - prefix_len
        if len(batch) == 1:
            raise ConfigError(f"one text of {width + prefix_len} tokens does not fit in the free GPU memory; "
                              "lower `max_length`, use dtype bfloat16, or free the GPU")
        self.batch_tokens = self.memory_cap = max(min(self.batch_tokens, len(batch) * width) // 2, 1)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.warning("srt_hf: out of GPU memory on a batch of %d texts; going on at %d tokens per batch",
                       len(batch), self.batch_tokens)


def default_batch_tokens(model) -> int:
    """Tokens per batch that the free GPU memory holds (:func:`tokens_for_memory`); a constant off CUDA."""
    if model.device.type != "cuda":
        return DEFAULT_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(model.device)
    return tokens_for_memory(model.config.get_text_config(), free, torch.finfo(model.dtype).bits // 8)


def min_batch_tokens(model) -> int:
    """Padded tokens that carry :data:`MIN_BATCH_FLOP` through the body (2 FLOP per weight and token; the head runs
    on labelled tokens only): ~19k for a 135M student, ~2k for 1B, ~300 for 8B."""
    return int(MIN_BATCH_FLOP // max(2 * model.num_parameters(exclude_embeddings=True), 1))


def tokens_for_memory(text_config, free_bytes: int, dtype_bytes: int) -> int:
    """A batch's tokens within :data:`MEMORY_SHARE` of ``free_bytes``, net of the output head's logit chunk.

    Per token, the live activations of one layer (residual, norm, attention in/out: ~8 hidden; the MLP's
    gate/up/product: ~3 intermediate) and every layer's keys and values (the prefix cache keeps them all).
    """
    from .output_head import CHUNK_BYTES

    h = text_config.hidden_size
    inter = getattr(text_config, "intermediate_size", None) or 4 * h
    heads = text_config.num_attention_heads
    kv = getattr(text_config, "num_key_value_heads", None) or heads
    d = getattr(text_config, "head_dim", None) or h // heads
    per_token = dtype_bytes * (8 * h + 3 * inter + 2 * text_config.num_hidden_layers * kv * d)
    usable = free_bytes * MEMORY_SHARE - CHUNK_BYTES["cuda"]
    return int(min(max(usable // per_token, MIN_BATCH_TOKENS), MAX_BATCH_TOKENS))



def _to_device(values: list[int], device) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.long)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _run_batch(model, head, batch: list[Span], prefix_len: int, prefix_kv, sums: torch.Tensor, slot: dict) -> None:
    """One right-padded batch through the body (no mask) and the head; adds its token losses into ``sums``."""
    from transformers import DynamicCache

    device = model.device
    width = len(batch[0].ids) - prefix_len
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids: list[int] = []
    rows, cols, targets, owner = [], [], [], []
    for b, span in enumerate(batch):
        suffix = span.ids[prefix_len:]
        ids.extend(suffix)
        ids.extend([pad] * (width - len(suffix)))  # after every real token: causality keeps it unseen
        rel, tgt = scored_positions(span, prefix_len)
        rows.extend([b] * len(tgt))
        cols.extend(rel)
        targets.extend(tgt)
        owner.extend([slot[span]] * len(tgt))
    kwargs: dict = {"use_cache": prefix_kv is not None}
    if prefix_kv is not None:
        expanded = [(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1)) for k, v in prefix_kv]
        kwargs[cache_argument(model)] = DynamicCache(ddp_cache_data=expanded)  # full layers, as the prefix was made
    input_ids = _to_device(ids, device).view(len(batch), width)  # (B, W)
    hidden = model.base_model(input_ids=input_ids, **kwargs).last_hidden_state  # (B, W, hidden)
    picked = hidden[_to_device(rows, device), _to_device(cols, device)]  # (K, hidden)
    losses = head.token_losses_on_device(picked, _to_device(targets, device))  # (K,) float32
    sums.index_add_(0, _to_device(owner, device), losses.double())


def prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA for queries that follow a cached prefix: lower-right causal, which flash kernels take.

    ``query``: (B, heads, L, d); ``key``/``value``: (B, kv_heads, P + L, d). Everything else (no prefix,
    a sliding window shorter than the keys, soft-capping, sinks) goes to transformers' own SDPA function
    with the mask transformers built.
    """
    from torch.nn.attention.bias import causal_lower_right
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    window = kwargs.get("sliding_window")
    special = kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None or not getattr(module, "is_causal", True)
    if q_len == kv_len or special or (window is not None and window < kv_len):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if key.shape[1] != query.shape[1]:  # grouped-query attention: one key/value head per group of query heads
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=causal_lower_right(q_len, kv_len), scale=scaling
    )  # (B, heads, L, d)
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def _prefix_attention(model):
    """Route an ``sdpa`` model's attention through :func:`prefix_attention` for the block (others are left alone)."""
    previous = model.config._attn_implementation
    if previous != "sdpa":
        yield
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, prefix_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA gets (None where its causal flag suffices)
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
