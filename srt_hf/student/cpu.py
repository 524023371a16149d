"""Exact mean token cross-entropy over labelled spans, batched and without wasted work, for any causal LM.

    losses = span_losses(model, [Span(ids, start), ...])    # float64, NaN where nothing is labelled

A :class:`Span` is one scoring pass of the references: token ids and the first labelled position.
:func:`span_losses` returns, for each span, the mean cross-entropy of the tokens at positions
``max(start, 1) .. len(ids) - 1`` given everything before them — the value Hugging Face's
``model(input_ids, labels=labels).loss`` gives at batch size 1 with ``labels[:start] = -100`` (position
0 has no prediction). It does less work than that loop and stays equal to it within float32 noise:

* identical spans are computed once;
* spans go through the body packed into one long row (no padding), or in padded batches of similar
  length, within a token budget;
* the longest prefix shared by every span of a group (a template's system prompt) runs once, and its
  key/value cache is reused by the whole group;
* the logits come from the model's own output head and post-processing (:mod:`srt_hf.output_head`),
  only at labelled positions, in bounded chunks.

Which path runs is decided once per model (:func:`scoring_path`): packed where packing is exact for
that model, else padded batches, else (a model whose head cannot be run alone) the plain batch-size-1
forward — each fallback with a one-line notice. "Exact" is checked, not assumed: the candidate path
scores a few probe spans and must equal the plain forward on them.
"""

from __future__ import annotations

import inspect
import logging
import math
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

logger = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate pass
# Largest relative difference to the plain forward a path may show on the probe spans, by dtype.
PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}


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


@dataclass(frozen=True)
class ScoringPath:
    """How spans go through a model.

    ``kind``: ``packed`` (several spans per row), ``padded`` (one span per row) or ``plain`` (the
    reference ``model(ids, labels=...)`` at batch size 1). ``backend`` of a packed path: ``segments``
    (the model's own attention function, per group of spans) or ``flash`` (transformers'
    flash-attention varlen kernels; ``implementation`` names it).
    """

    kind: str
    backend: str | None = None
    implementation: str | None = None
    share_prefix: bool = True

    def describe(self) -> str:
        what = {"packed": f"packed rows ({self.implementation or self.backend} attention)", "padded": "padded batches",
                "plain": "the plain batch-size-1 forward"}[self.kind]
        return what + (", shared prefixes cached" if self.share_prefix and self.kind != "plain" else "")


PLAIN = ScoringPath("plain", share_prefix=False)


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

    ``packing``: None (default) picks the fastest exact path (:func:`scoring_path`); True forces the
    packed path, False the padded one (no check: for tests and comparisons). Packed rows hold up to
    ``max_batch_tokens`` tokens; padded batches at most ``max_batch_tokens`` padded tokens and
    ``max_batch_size`` rows, each span no shorter than ``1 - max_padding`` of the batch's longest.
    """
    if packing is None:
        path = scoring_path(model, share_prefix=share_prefix)
    elif packing:
        path = _packed_path(model, share_prefix)
        if path is None:
            raise ValueError(f"{type(model).__name__} cannot run packed here (attention {model.config._attn_implementation!r})")
    else:
        path = ScoringPath("padded", share_prefix=share_prefix)
    return _run(model, spans, path, max_batch_tokens, max_batch_size, max_padding)


# ------------------------------------------------------------------------------------------------
# Choosing the path


_PATHS: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


def scoring_path(model, share_prefix: bool = True) -> ScoringPath:
    """The fastest path that is exact for ``model`` on this device and dtype (probed once, then remembered)."""
    key = (share_prefix, str(model.device), model.dtype, model.config._attn_implementation)
    known = _PATHS.setdefault(model, {})
    if key in known:
        return known[key]
    candidates = []
    packed = _packed_path(model, share_prefix)
    if packed is not None:
        candidates.append(packed)
        if share_prefix:
            candidates.append(replace(packed, share_prefix=False))
    candidates.append(ScoringPath("padded", share_prefix=share_prefix))
    if share_prefix:
        candidates.append(ScoringPath("padded", share_prefix=False))
    chosen, failures = PLAIN, []
    for path in candidates:
        problem = _probe(model, path)
        if problem is None:
            chosen = path
            break
        failures.append(f"{path.describe()}: {problem}")
    if failures or packed is None:
        why = "; ".join(failures) if failures else f"its attention ({model.config._attn_implementation}) cannot be packed"
        logger.warning("srt_hf: scoring %s with %s (%s)", type(model).__name__, chosen.describe(), why)
    known[key] = chosen
    return chosen


def _packed_path(model, share_prefix: bool) -> ScoringPath | None:
    from .packed_attention import flash_implementation, segments_supported

    flash = flash_implementation(model)
    if flash is not None:
        return ScoringPath("packed", "flash", flash, share_prefix=False)  # flash varlen takes no prefix cache
    if segments_supported(model):
        return ScoringPath("packed", "segments", share_prefix=share_prefix)
    return None


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


def _probe(model, path: ScoringPath) -> str | None:
    """None when ``path`` equals the plain forward on the probe spans, else what went wrong."""
    spans = probe_spans(_vocab_size(model))
    try:
        ours = _run(model, spans, path, max_batch_tokens=48, max_batch_size=4, max_padding=1.0)
    except Exception as err:  # noqa: BLE001 - any failure means: this path cannot handle this architecture
        return f"{type(err).__name__}: {err}"
    reference = _run(model, spans, PLAIN, 0, 1, 0.0)
    worst = float(np.max(np.abs(ours - reference) / np.maximum(np.abs(reference), 1e-12)))
    tolerance = PROBE_TOLERANCE.get(model.dtype, 1e-2)
    return None if worst <= tolerance else f"differs from the plain forward by {worst:.1e} (relative)"


def _vocab_size(model) -> int:
    return int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None else int(
        model.config.get_text_config().vocab_size
    )


# ------------------------------------------------------------------------------------------------
# Running a path


def _run(model, spans: Sequence[Span], path: ScoringPath, max_batch_tokens: int, max_batch_size: int, max_padding: float) -> np.ndarray:
    from .output_head import OutputHead
    from .packed_attention import packed

    result = np.full(len(spans), np.nan)
    unique: dict[Span, list[int]] = defaultdict(list)
    for i, span in enumerate(spans):
        if span.n_scored > 0:
            unique[span].append(i)
    if path.kind == "plain":
        with torch.inference_mode():
            for span, where in unique.items():
                result[where] = _plain_loss(model, span)
        return result
    groups: dict[str, list[Span]] = defaultdict(list)
    for span in unique:
        groups[span.group].append(span)
    head = OutputHead(model)
    context = packed(model, path.backend, path.implementation) if path.kind == "packed" else nullcontext()
    with torch.inference_mode(), context as inner:
        for members in groups.values():
            prefix_len = _shared_prefix_len(members) if path.share_prefix and len(members) > 1 else 0
            prefix_kv = _prefix_cache(model, members[0].ids[:prefix_len], inner) if prefix_len else None
            order = sorted(members, key=lambda s: len(s.ids), reverse=True)
            if path.kind == "packed":
                for pack in _packs(order, prefix_len, max_batch_tokens):
                    losses = _packed_losses(model, head, pack, prefix_len, prefix_kv, path, inner)
                    for span, loss in zip(pack, losses):
                        result[unique[span]] = loss
            else:
                for batch in _padded_batches(order, prefix_len, max_batch_tokens, max_batch_size, max_padding):
                    for span, loss in zip(batch, _padded_losses(model, head, batch, prefix_len, prefix_kv)):
                        result[unique[span]] = loss
    return result


def _plain_loss(model, span: Span) -> float:
    """The reference computation: ``model(ids, labels=labels).loss`` at batch size 1."""
    ids = torch.tensor([span.ids], device=model.device)
    labels = ids.clone()
    labels[0, : span.start] = -100
    return float(model(input_ids=ids, labels=labels).loss)


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


def _prefix_cache(model, prefix: Sequence[int], inner: str | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of the prefix, each (1, kv_heads, P, d), from the model's own attention layers."""
    from transformers import DynamicCache

    from .packed_attention import PackLayout

    ids = torch.tensor([list(prefix)], device=model.device)
    kwargs = {_cache_argument(model): DynamicCache(), "use_cache": True}  # full layers: the whole prefix is kept
    if inner is not None:  # inside the packed context the prefix runs as a packed row of one span
        kwargs.update(PackLayout.build([len(prefix)], model.device, inner).forward_kwargs())
    out = model.base_model(input_ids=ids, **kwargs)
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
        rel, tgt = _scored_positions(span, prefix_len)
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
    return _means(head.token_losses(picked, torch.tensor(targets, device=device)), owner, len(pack))


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
        rel, tgt = _scored_positions(span, prefix_len)
        rows.extend([b] * len(tgt))
        cols.extend(rel)
        targets.extend(tgt)
        owner.extend([b] * len(tgt))
    kwargs: dict = {"use_cache": prefix_kv is not None}
    if prefix_kv is not None:
        expanded = [(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1)) for k, v in prefix_kv]
        kwargs[_cache_argument(model)] = DynamicCache(ddp_cache_data=expanded)  # full layers, as the prefix was made
    padded = any(len(s.ids) != len(batch[0].ids) for s in batch)
    attention_mask = mask.to(device) if padded else None  # no mask: SDPA takes its plain causal path
    hidden = model.base_model(input_ids=input_ids.to(device), attention_mask=attention_mask, **kwargs).last_hidden_state
    picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (K, hidden)
    return _means(head.token_losses(picked, torch.tensor(targets, device=device)), owner, len(batch))


def _means(token_losses: np.ndarray, owner: list[int], n: int) -> list[float]:
    sums = np.zeros(n)
    np.add.at(sums, np.asarray(owner, dtype=np.int64), token_losses)
    counts = np.bincount(np.asarray(owner, dtype=np.int64), minlength=n)
    return [float(s / c) if c else math.nan for s, c in zip(sums, counts)]
