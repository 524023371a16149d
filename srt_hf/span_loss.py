"""Exact mean token cross-entropy over labelled spans, batched and without wasted work.

A :class:`Span` is one scoring pass of the references: token ids and the first labelled position.
:func:`span_losses` returns, for each span, the mean cross-entropy of the tokens at positions
``max(start, 1) .. len(ids) - 1`` given everything before them — the value Hugging Face's
``model(input_ids, labels=labels).loss`` gives at batch size 1 with ``labels[:start] = -100`` (position
0 has no prediction). It does less work than that loop and stays equal to it within float32 noise:

* identical spans are computed once;
* spans are batched by group and length (little padding), within a token budget;
* the longest prefix shared by every span of a group (a template's system prompt) runs once, and its
  key/value cache is reused by the whole group;
* the LM head and the 49k-way softmax run only at labelled positions, in bounded chunks.
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate pass
HEAD_CHUNK_ROWS = 1024  # rows of hidden states sent through the LM head at once


@dataclass(frozen=True)
class Span:
    """Token ids, the first labelled position, and a group name (spans of a group share their head)."""

    ids: tuple[int, ...]
    start: int
    group: str = ""

    @property
    def first_scored(self) -> int:
        return max(self.start, 1)

    @property
    def n_scored(self) -> int:
        return max(len(self.ids) - self.first_scored, 0)


def span_losses(
    model,
    spans: Sequence[Span],
    *,
    max_batch_tokens: int = 4096,
    max_batch_size: int = 64,
    max_padding: float = 0.05,
    share_prefix: bool = True,
    packing: bool | None = None,
) -> np.ndarray:
    """Mean cross-entropy per span (float64; NaN where no token is labelled).

    ``packing`` (default: on CPU, for models that use transformers' attention interface) puts up to
    ``max_batch_tokens`` tokens of several spans in one row with span-local attention — no padding.
    Otherwise spans go in padded batches of at most ``max_batch_tokens`` padded tokens and
    ``max_batch_size`` rows, each span no shorter than ``1 - max_padding`` of the batch's longest.
    """
    from .packed_attention import packed, supports_packing

    if packing is None:
        packing = model.device.type == "cpu" and supports_packing(model)
    result = np.full(len(spans), np.nan)
    unique: dict[Span, list[int]] = defaultdict(list)
    for i, span in enumerate(spans):
        if span.n_scored > 0:
            unique[span].append(i)
    groups: dict[str, list[Span]] = defaultdict(list)
    for span in unique:
        groups[span.group].append(span)
    with torch.inference_mode(), (packed(model) if packing else nullcontext()):
        for members in groups.values():
            prefix_len = _shared_prefix_len(members) if share_prefix and len(members) > 1 else 0
            prefix_kv = _prefix_cache(model, members[0].ids[:prefix_len]) if prefix_len else None
            order = sorted(members, key=lambda s: len(s.ids), reverse=True)
            if packing:
                batches = _packs(order, prefix_len, max_batch_tokens)
                run = _packed_losses
            else:
                batches = _padded_batches(order, prefix_len, max_batch_tokens, max_batch_size, max_padding)
                run = _padded_losses
            for batch in batches:
                for span, loss in zip(batch, run(model, batch, prefix_len, prefix_kv)):
                    result[unique[span]] = loss
    return result


def _shared_prefix_len(spans: Sequence[Span]) -> int:
    """Longest common token prefix, short enough that every labelled prediction comes after it."""
    limit = min(s.first_scored - 1 for s in spans)
    first = spans[0].ids
    n = min(limit, len(first))
    for span in spans[1:]:
        ids = span.ids
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
        if n < MIN_SHARED_PREFIX:
            return 0
    return n if n >= MIN_SHARED_PREFIX else 0


def _prefix_cache(model, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ids = torch.tensor([list(prefix)], device=model.device)
    out = model.base_model(input_ids=ids, use_cache=True)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_argument(model) -> str:
    """Recent transformers 5.x renamed the forward argument ``past_key_values`` to ``cache``; use this version's name."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


def _packs(order: list[Span], prefix_len: int, max_tokens: int) -> Iterator[list[Span]]:
    pack: list[Span] = []
    size = 0
    for span in order:
        n = len(span.ids) - prefix_len
        if pack and size + n > max_tokens:
            yield pack
            pack, size = [], 0
        pack.append(span)
        size += n
    if pack:
        yield pack


def _padded_batches(order: list[Span], prefix_len: int, max_tokens: int, max_size: int, max_padding: float) -> Iterator[list[Span]]:
    batch: list[Span] = []
    for span in order:
        if batch:
            width = len(batch[0].ids) - prefix_len  # the longest of the batch: spans come longest first
            full = (len(batch) + 1) * width > max_tokens or len(batch) == max_size
            wasteful = width - (len(span.ids) - prefix_len) > max_padding * width
            if full or wasteful:
                yield batch
                batch = []
        batch.append(span)
    if batch:
        yield batch


def _scored_positions(span: Span, prefix_len: int) -> tuple[range, list[int]]:
    """Positions (relative to the span's suffix) whose states predict the labelled tokens, and those tokens."""
    positions = range(span.first_scored, len(span.ids))  # token p is predicted by the state at p - 1
    return range(span.first_scored - 1 - prefix_len, len(span.ids) - 1 - prefix_len), [span.ids[p] for p in positions]


def _packed_losses(model, pack: list[Span], prefix_len: int, prefix_kv) -> list[float]:
    device = model.device
    ids, positions, segments, picks, targets, owner = [], [], [], [], [], []
    for j, span in enumerate(pack):
        a = len(ids)
        suffix = span.ids[prefix_len:]
        ids.extend(suffix)
        positions.extend(range(prefix_len, prefix_len + len(suffix)))
        segments.append((a, a + len(suffix)))
        rel, tgt = _scored_positions(span, prefix_len)
        picks.extend(a + r for r in rel)
        targets.extend(tgt)
        owner.extend([j] * len(tgt))
    hidden = model.base_model(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.tensor([positions], device=device),
        use_cache=False,
        srt_segments=segments,
        srt_prefix_kv=prefix_kv,
    ).last_hidden_state[0]
    picked = hidden[torch.tensor(picks, device=device)]
    return _means(_token_cross_entropy(model, picked, torch.tensor(targets, device=device)), owner, len(pack))


def _padded_losses(model, batch: list[Span], prefix_len: int, prefix_kv) -> list[float]:
    from transformers import DynamicCache

    device = model.device
    width = max(len(s.ids) for s in batch) - prefix_len
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), prefix_len + width), dtype=torch.long)
    mask[:, :prefix_len] = 1
    rows, cols, targets, owner = [], [], [], []
    for b, span in enumerate(batch):
        suffix = span.ids[prefix_len:]
        input_ids[b, : len(suffix)] = torch.tensor(suffix)
        mask[b, prefix_len : prefix_len + len(suffix)] = 1
        rel, tgt = _scored_positions(span, prefix_len)
        rows.extend([b] * len(tgt))
        cols.extend(rel)
        targets.extend(tgt)
        owner.extend([b] * len(tgt))
    kwargs: dict = {"use_cache": prefix_kv is not None}
    if prefix_kv is not None:
        kwargs[_cache_argument(model)] = DynamicCache(
            ddp_cache_data=[(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1)) for k, v in prefix_kv],
            config=model.config,
        )
    padded = any(len(s.ids) != len(batch[0].ids) for s in batch)
    attention_mask = mask.to(device) if padded else None  # no mask: SDPA takes its plain causal path
    hidden = model.base_model(input_ids=input_ids.to(device), attention_mask=attention_mask, **kwargs).last_hidden_state
    picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    return _means(_token_cross_entropy(model, picked, torch.tensor(targets, device=device)), owner, len(batch))


def _means(token_losses: np.ndarray, owner: list[int], n: int) -> list[float]:
    sums = np.zeros(n)
    np.add.at(sums, np.asarray(owner, dtype=np.int64), token_losses)
    counts = np.bincount(np.asarray(owner, dtype=np.int64), minlength=n)
    return [float(s / c) if c else math.nan for s, c in zip(sums, counts)]


def _token_cross_entropy(model, hidden: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Cross-entropy of each target under the LM head, computed in float32 like transformers' loss."""
    head = model.get_output_embeddings()
    config = model.config.get_text_config()
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    out = []
    for i in range(0, hidden.shape[0], HEAD_CHUNK_ROWS):
        logits = head(hidden[i : i + HEAD_CHUNK_ROWS])
        if scale is not None:
            logits = logits * scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        logits = logits.float()
        t = targets[i : i + HEAD_CHUNK_ROWS]
        out.append(torch.nn.functional.cross_entropy(logits, t, reduction="none").double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
