"""The interface every student engine implements, and the batch budget it is given.

    engine = SomeEngine(model, share_prefix=True)
    losses = engine.losses(spans, Budget(max_batch_tokens=None))   # float64 per span, NaN where nothing is labelled

An engine is one way of running :class:`~srt_hf.student.spans.Span` s through a causal LM. It may come
in variants (the CPU engine: packed or padded, with or without the shared-prefix cache); the chooser in
:mod:`srt_hf.student.engines` probes them in order and keeps the first that equals the plain forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .spans import Span

#: Told the tokens of each finished batch (progress bars); the default tells no one.
Step = Callable[[float], None]


def no_step(tokens: float) -> None:
    pass


@dataclass(frozen=True)
class Budget:
    """How much work one forward pass may take.

    ``max_batch_tokens``: tokens (padded ones included) per forward. ``max_batch_size``: rows per padded
    batch. ``max_padding``: a padded batch's shortest span is at least ``1 - max_padding`` of its longest.
    None, for each: the engine's default for the device.
    """

    max_batch_tokens: int | None = None
    max_batch_size: int | None = None
    max_padding: float | None = None


class Engine:
    """One way of running spans through ``model``; subclasses fill in :meth:`losses` (and may refuse a model)."""

    name: ClassVar[str] = ""

    def __init__(self, model, share_prefix: bool = True):
        self.model = model
        self.share_prefix = share_prefix

    def unavailable(self) -> str | None:
        """Why this engine cannot run ``model`` at all (checked before any probe), else None."""
        return None

    def variants(self) -> list[Engine]:
        """The settings of this engine worth trying, fastest first (the chooser keeps the first exact one)."""
        return [self]

    def describe(self) -> str:
        return f"the {self.name} engine"

    def losses(self, spans: Sequence[Span], budget: Budget, step: Step = no_step) -> np.ndarray:
        """Mean cross-entropy per span; ``step`` is told the tokens of each batch as it is done."""
        raise NotImplementedError
