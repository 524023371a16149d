"""The CPU engine: spans packed into long rows without padding, or in padded batches of similar length.

    losses = CpuEngine(model).losses(spans, Budget(max_batch_tokens=4096))

Built for a few CPU cores, where one long row gives the linear layers the matrix shapes they run
fastest:

* spans go through the body packed into one long row (:mod:`srt_hf.student.packed_attention`), or in
  padded batches of similar length, within a token budget;
* the longest prefix shared by every span of a group (a template's system prompt) runs once, and its
  key/value cache is reused by the whole group;
* the logits come from the model's own output head (:mod:`srt_hf.student.output_head`), only at labelled
  positions, in bounded chunks.

Its variants, fastest first (:meth:`CpuEngine.variants`): packed with the prefix cache, packed without,
padded with, padded without; the chooser keeps the first that equals the plain forward on the probe spans.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .base import Budget, Engine, Step, no_step
from .spans import (
    Span,
    by_group,
    cache_argument,
    means,
    padded_batches,
    prefix_cache,
    scored_positions,
    shared_prefix_len,
    unique_spans,
)

DEFAULT_BATCH_TOKENS, DEFAULT_BATCH_SIZE, DEFAULT_PADDING = 4096, 64, 0.05


@dataclass(frozen=True)
class ScoringPath:
    """How the CPU engine runs spans.

    ``kind``: ``packed`` (several spans per row) or ``padded`` (one span per row). ``backend`` of a packed
    path: ``segments`` (the model's own attention function, per group of spans) or ``flash``
    (transformers' flash-attention varlen kernels; ``implementation`` names it).
    """

    kind: str
    backend: str | None = None
    implementation: str | None = None
    share_prefix: bool = True

    def describe(self) -> str:
        what = f"packed rows ({self.implementation or self.backend} attention)" if self.kind == "packed" else "padded batches"
        return what + (", shared prefixes cached" if self.share_prefix else "")


class CpuEngine(Engine):
    """Packed rows or padded batches (``path``); without one, :meth:`variants` lists those worth probing."""

    name = "cpu"

    def __init__(self, model, share_prefix: bool = True, path: ScoringPath | None = None):
        super().__init__(model, share_prefix)
        self.path = path

    def variants(self) -> list[Engine]:
        if self.path is not None:
            return [self]
        paths = []
        packed = packed_path(self.model, self.share_prefix)
        if packed is not None:
            paths.append(packed)
            if packed.share_prefix:
                paths.append(ScoringPath("packed", packed.backend, packed.implementation, share_prefix=False))
        paths.append(ScoringPath("padded", share_prefix=self.share_prefix))
        if self.share_prefix:
            paths.append(ScoringPath("padded", share_prefix=False))
        return [CpuEngine(self.model, p.share_prefix, p) for p in paths]

    def describe(self) -> str:
        return "the cpu engine" + (f" ({self.path.describe()})" if self.path else "")

    def losses(self, spans: Sequence[Span], budget: Budget, step: Step = no_step) -> np.ndarray:
        path = self.path or self.variants()[0].path
        tokens = budget.max_batch_tokens or DEFAULT_BATCH_TOKENS
        padding = DEFAULT_PADDING if budget.max_padding is None else budget.max_padding
        return _run(self.model, spans, path, tokens, budget.max_batch_size or DEFAULT_BATCH_SIZE, padding, step)


def packed_path(model, share_prefix: bool) -> ScoringPath | None:
    """The packed path this model can take here (flash varlen on CUDA half precision, else segments), or None."""
    from .packed_attention import flash_implementation, segments_supported

    flash = flash_implementation(model)
    if flash is not None:
        return ScoringPath("packed", "flash", flash, share_prefix=False)  # flash varlen takes no prefix cache
    if segments_supported(model):
        return ScoringPath("packed", "segments", share_prefix=share_prefix)
    return None


def _run(model, spans: Sequence[Span], path: ScoringPath, max_batch_tokens: int, max_batch_size: int, max_padding: float,
         step: Step = no_step) -> np.ndarray:
    from .output_head import OutputHead
    from .packed_attention import packed

    result = np.full(len(spans), np.nan)
    unique = unique_spans(spans)
    head = OutputHead(model)
    context = packed(model, path.backend, path.implementation) if path.kind == "packed" else nullcontext()
    with torch.inference_mode(), context as inner:
        for members in by_group(unique):
            prefix_len = shared_prefix_len(members) if path.share_prefix and len(members) > 1 else 0
            prefix_kv = prefix_cache(model, members[0].ids[:prefix_len], inner) if prefix_len else None
            order = sorted(members, key=lambda s: len(s.ids), reverse=True)
            if path.kind == "packed":
                for pack in _packs(order, prefix_len, max_batch_tokens):
                    losses = _packed_losses(model, head, pack, prefix_len, prefix_kv, path, inner)
                    for span, loss in zip(pack, losses):
                        result[unique[span]] = loss
                    step(sum(len(span.ids) for span in pack))
            else:
                for batch in padded_batches(order, prefix_len, max_batch_tokens, max_batch_size, max_padding):
                    for span, loss in zip(batch, _padded_losses(model, head, batch, prefix_len, prefix_kv)):
                        result[unique[span]] = loss
                    step(sum(len(span.ids) for span in batch))
    return result


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



def _packed_losses(model, head, pack: list[Span], prefix_len: int, prefix_kv, path: ScoringPath, inner: str) -> list[float]:
    from .packed_attention import PackLayout, varlen_kwargs

    device = model.device
    ids, positions, lengths, picks, targets, owner = [], [], [], [], [], []
    for j, span in enumerate(pack):
        a = len(ids)
        suffix = span.ids[prefix_len:]
        ids.extend(suffix)
        positions.extend(range(prefix_len, prefix_len + len(suffix)))
        lengths.append(len(suffix))
        rel, tgt = scored_positions(span, prefix_len)
        picks.extend(a + r for r in rel)
        targets.extend(tgt)
        owner.extend([j] * len(tgt))
    if path.backend == "flash":
        attention = varlen_kwargs(lengths, device)
    else:
        attention = PackLayout.build(lengths, device, inner, prefix_kv).forward_kwargs()
    hidden = model.base_model(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.tensor([positions], device=device),
        use_cache=False,
        **attention,
    ).last_hidden_state[0]  # (T, hidden)
    picked = hidden[torch.tensor(picks, device=device)]  # (K, hidden)
    return means(head.token_losses(picked, torch.tensor(targets, device=device)), owner, len(pack))


def _padded_losses(model, head, batch: list[Span], prefix_len: int, prefix_kv) -> list[float]:
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
        rel, tgt = scored_positions(span, prefix_len)
        rows.extend([b] * len(tgt))
        cols.extend(rel)
        targets.extend(tgt)
        owner.extend([b] * len(tgt))
    kwargs: dict = {"use_cache": prefix_kv is not None}
    if prefix_kv is not None:
        expanded = [(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1)) for k, v in prefix_kv]
        kwargs[cache_argument(model)] = DynamicCache(ddp_cache_data=expanded)  # full layers, as the prefix was made
    padded = any(len(s.ids) != len(batch[0].ids) for s in batch)
    attention_mask = mask.to(device) if padded else None  # no mask: SDPA takes its plain causal path
    hidden = model.base_model(input_ids=input_ids.to(device), attention_mask=attention_mask, **kwargs).last_hidden_state
    picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (K, hidden)
    return means(head.token_losses(picked, torch.tensor(targets, device=device)), owner, len(batch))
