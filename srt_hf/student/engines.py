"""Which engine scores a student, chosen in this one place, and :func:`span_losses`, the entry point.

    losses = span_losses(model, [Span(ids, start), ...])             # float64, NaN where nothing is labelled
    losses = span_losses(model, spans, engine="gpu")                  # force an engine (tests, comparisons)

Every engine returns, for each span, what ``model(ids, labels=...).loss`` gives at batch size 1 with the
span's prefix masked (:mod:`srt_hf.student.spans`), doing less work than that loop. Automatic choice:
CUDA students try the ``gpu`` engine, then ``cpu``; others try ``cpu``; ``plain`` (the batch-size-1
forward itself) is always last. Each candidate (each of its variants) must equal the plain forward on a
few probe spans before it is used; the choice is remembered per model and announced in one line (a
warning when a faster engine was passed over, with the reason).

A new engine (say, vLLM prompt log-probs) is one file with an :class:`~srt_hf.student.base.Engine`
subclass and one entry in :data:`ENGINES` (and in :func:`auto_order` if it should be picked by itself).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

import numpy as np
import torch

from .. import progress
from ..errors import ConfigError
from .base import Budget, Engine
from .cpu import CpuEngine, ScoringPath, packed_path
from .gpu import GpuEngine
from .plain import PlainEngine
from .spans import Span, probe_spans, vocab_size

logger = logging.getLogger("srt_hf.student")

#: Every engine by name: the one list to extend.
ENGINES: dict[str, type[Engine]] = {"gpu": GpuEngine, "cpu": CpuEngine, "plain": PlainEngine}
# Largest relative difference to the plain forward a variant may show on the probe spans, by dtype.
PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def auto_order(model) -> tuple[str, ...]:
    """The engines tried for ``model`` when none is named, best first."""
    return ("gpu", "cpu", "plain") if model.device.type == "cuda" else ("cpu", "plain")


def span_losses(
    model,
    spans: Sequence[Span],
    *,
    engine: str | None = None,
    max_batch_tokens: int | None = None,
    max_batch_size: int | None = None,
    max_padding: float | None = None,
    share_prefix: bool = True,
    packing: bool | None = None,
) -> np.ndarray:
    """Mean cross-entropy per span (float64; NaN where no token is labelled).

    ``engine``: None picks the fastest exact one (:func:`choose_engine`); a name from :data:`ENGINES`
    forces it, unprobed. ``packing`` True / False forces the CPU engine's packed / padded path (unprobed:
    for tests and comparisons). The batch settings (:class:`~srt_hf.student.base.Budget`), where None: the
    engine's defaults for the device.
    """
    budget = Budget(max_batch_tokens, max_batch_size, max_padding)
    return run_engine(pick_engine(model, engine, share_prefix, packing), spans, budget)


def run_engine(engine: Engine, spans: Sequence[Span], budget: Budget) -> np.ndarray:
    """``engine.losses`` with the chunk's progress bar moving per batch (for a caller that picked the engine itself)."""
    step = progress.steps(sum(len(span.ids) for span in spans if span.n_scored > 0))
    return engine.losses(spans, budget, step)


def pick_engine(model, engine: str | None = None, share_prefix: bool = True, packing: bool | None = None) -> Engine:
    """The engine (variant) :func:`span_losses` runs with these settings; its ``name`` and ``describe()`` say which
    scored (run.json). ``packing`` True / False: the CPU engine's packed / padded path, unprobed."""
    if packing is not None:
        if engine not in (None, "cpu"):
            raise ConfigError(f"`packing` is a setting of the cpu engine; drop it or set engine='cpu' (not {engine!r}).")
        path = packed_path(model, share_prefix) if packing else ScoringPath("padded", share_prefix=share_prefix)
        if path is None:
            raise ValueError(f"{type(model).__name__} cannot run packed here (attention {model.config._attn_implementation!r})")
        return CpuEngine(model, path.share_prefix, path)
    return choose_engine(model, engine, share_prefix)


_CHOSEN: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


def choose_engine(model, name: str | None = None, share_prefix: bool = True) -> Engine:
    """The engine (variant) that scores ``model``: ``name`` if given, else the first exact one of :func:`auto_order`.
    Remembered per model and settings, so an engine's state (the GPU engine's halved memory budget) lasts the run."""
    if name is not None and name not in ENGINES:
        raise ConfigError(f"Unknown student engine {name!r}. Set `engine` to one of {sorted(ENGINES)} or leave it unset.")
    key = (name, share_prefix, str(model.device), model.dtype, model.config._attn_implementation)
    known = _CHOSEN.setdefault(model, {})
    if key not in known:
        known[key] = _named(model, name, share_prefix) if name else _choose(model, share_prefix)
    return known[key]


def _named(model, name: str, share_prefix: bool) -> Engine:
    engine = ENGINES[name](model, share_prefix)
    why = engine.unavailable()
    if why:
        raise ConfigError(f"The {name} engine cannot score {type(model).__name__}: {why}. Leave `engine` unset to pick one.")
    return engine.variants()[0]


def _choose(model, share_prefix: bool) -> Engine:
    failures = []
    for name in auto_order(model):
        engine = ENGINES[name](model, share_prefix)
        why = engine.unavailable()
        if why:
            failures.append(f"{name}: {why}")
            continue
        for variant in engine.variants():
            problem = None if name == "plain" else probe(variant)
            if problem is None:
                announce = logger.warning if failures else logger.info
                announce("srt_hf: scoring %s with %s%s", type(model).__name__, variant.describe(),
                         f" ({'; '.join(failures)})" if failures else "")
                return variant
            failures.append(f"{variant.describe()}: {problem}")
    raise AssertionError("the plain engine is always exact")  # pragma: no cover


def probe(engine: Engine) -> str | None:
    """None when ``engine`` equals the plain forward on the probe spans, else what went wrong."""
    model = engine.model
    spans = probe_spans(vocab_size(model))
    try:
        ours = engine.losses(spans, Budget(max_batch_tokens=48, max_batch_size=4, max_padding=1.0))
    except Exception as err:  # noqa: BLE001 - any failure means: this engine cannot handle this architecture
        return f"{type(err).__name__}: {err}"
    reference = PlainEngine(model).losses(spans)
    worst = float(np.max(np.abs(ours - reference) / np.maximum(np.abs(reference), 1e-12)))
    tolerance = PROBE_TOLERANCE.get(model.dtype, 1e-2)
    return None if worst <= tolerance else f"differs from the plain forward by {worst:.1e} (relative)"
