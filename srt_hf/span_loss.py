"""Where the span losses used to live: ``from srt_hf.span_loss import Span, span_losses`` keeps working (see :mod:`srt_hf.student.engines`)."""

from .student.engines import choose_engine, span_losses
from .student.spans import Span, probe_spans

__all__ = ["Span", "choose_engine", "probe_spans", "span_losses"]
