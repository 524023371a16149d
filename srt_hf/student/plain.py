"""The plain engine: the reference ``model(ids, labels=...)`` at batch size 1, one forward per span.

    losses = PlainEngine(model).losses(spans, Budget())

Slow and always right: the fallback for a student no faster engine reproduces, and the yardstick the
chooser probes every other engine against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .base import Budget, Engine, Step, no_step
from .spans import Span, unique_spans


class PlainEngine(Engine):
    name = "plain"

    def __init__(self, model, share_prefix: bool = False):
        super().__init__(model, share_prefix=False)

    def describe(self) -> str:
        return "the plain batch-size-1 forward"

    def losses(self, spans: Sequence[Span], budget: Budget | None = None, step: Step = no_step) -> np.ndarray:
        result = np.full(len(spans), np.nan)
        with torch.inference_mode():
            for span, where in unique_spans(spans).items():
                result[where] = plain_loss(self.model, span)
                step(len(span.ids))
        return result


def plain_loss(model, span: Span) -> float:
    """The reference computation: ``model(ids, labels=labels).loss`` at batch size 1."""
    ids = torch.tensor([span.ids], device=model.device)
    labels = ids.clone()
    labels[0, : span.start] = -100
    return float(model(input_ids=ids, labels=labels).loss)
