"""What every student engine shares: a :class:`Span`, the probe spans, the shared-prefix cache, per-span means.

    span = Span(ids, start, group)   # one scoring pass of the references: ids, first labelled position, group

A span's loss is the mean cross-entropy of tokens ``max(start, 1) .. len(ids) - 1`` given everything
before them — ``model(ids, labels=ids with labels[:start] = -100).loss`` at batch size 1.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate pass


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


def probe_spans(vocab_size: int) -> list[Span]:
    """A few short spans (a group with a shared prefix, another without) that exercise every path's mechanics."""
    rng = np.random.default_rng(1234)
    low = min(10, vocab_size - 1)

    def draw(n: int) -> tuple[int, ...]:
        return tuple(int(t) for t in rng.integers(low, vocab_size, n))

    head = draw(MIN_SHARED_PREFIX + 3)
    spans = [Span(head + draw(n), len(head) + s, "probe-prefix") for n, s in ((13, 2), (9, 0), (12, 5))]
    spans += [Span(draw(n), s, "probe") for n, s in ((17, 0), (8, 3), (15, 1))]
    return spans


def vocab_size(model) -> int:
    return int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None else int(
        model.config.get_text_config().vocab_size
    )


def shared_prefix_len(spans: Sequence[Span]) -> int:
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


def prefix_cache(model, prefix: Sequence[int], inner: str | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of the prefix, each (1, kv_heads, P, d), from the model's own attention layers."""
    from transformers import DynamicCache

    from .packed_attention import PackLayout

    ids = torch.tensor([list(prefix)], device=model.device)
    kwargs = {cache_argument(model): DynamicCache(), "use_cache": True}  # full layers: the whole prefix is kept
    if inner is not None:  # inside the packed context the prefix runs as a packed row of one span
        kwargs.update(PackLayout.build([len(prefix)], model.device, inner).forward_kwargs())
    out = model.base_model(input_ids=ids, **kwargs)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_argument(model) -> str:
    """Recent transformers 5.x renamed the forward argument ``past_key_values`` to ``cache``; use this version's name."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


def scored_positions(span: Span, prefix_len: int) -> tuple[range, list[int]]:
    """Positions (relative to the span's suffix) whose states predict the labelled tokens, and those tokens."""
    positions = range(span.first_scored, len(span.ids))  # token p is predicted by the state at p - 1
    return range(span.first_scored - 1 - prefix_len, len(span.ids) - 1 - prefix_len), [span.ids[p] for p in positions]


def means(token_losses: np.ndarray, owner: list[int], n: int) -> list[float]:
    sums = np.zeros(n)
    np.add.at(sums, np.asarray(owner, dtype=np.int64), token_losses)
    counts = np.bincount(np.asarray(owner, dtype=np.int64), minlength=n)
    return [float(s / c) if c else math.nan for s, c in zip(sums, counts)]


def unique_spans(spans: Sequence[Span]) -> dict[Span, list[int]]:
    """Each distinct span with something to score, and where it occurs in ``spans`` (identical spans run once)."""
    unique: dict[Span, list[int]] = {}
    for i, span in enumerate(spans):
        if span.n_scored > 0:
            unique.setdefault(span, []).append(i)
    return unique


def by_group(spans) -> list[list[Span]]:
    """The spans of each group, in first-seen order (a group's spans may share a prompt head)."""
    groups: dict[str, list[Span]] = {}
    for span in spans:
        groups.setdefault(span.group, []).append(span)
    return list(groups.values())


def padded_batches(order: list[Span], prefix_len: int, max_tokens: int, max_rows: int, max_padding: float,
                   min_tokens: int = 0) -> Iterator[list[Span]]:
    """Longest-first spans cut into batches of at most ``max_tokens`` padded tokens and ``max_rows`` rows, a new
    batch wherever a span would be padded by more than ``max_padding`` of the batch's width — once the batch holds
    ``min_tokens`` padded tokens (below that, a new batch costs more than the padding it saves)."""
    batch: list[Span] = []
    for span in order:
        if batch:
            width = len(batch[0].ids) - prefix_len  # the longest of the batch: spans come longest first
            full = (len(batch) + 1) * width > max_tokens or len(batch) == max_rows
            wasteful = width - (len(span.ids) - prefix_len) > max_padding * width and len(batch) * width >= min_tokens
            if full or wasteful:
                yield batch
                batch = []
        batch.append(span)
    if batch:
        yield batch
