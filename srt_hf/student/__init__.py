"""The student side of srt_hf: IFD / reverse-IFD scoring of rows under a student model.

    from srt_hf.student import IFDScorer
    ds = ds.map(IFDScorer(student="default", preset="reflection"), batched=True)

``scorer`` (the ``Dataset.map`` transform) → ``plan`` (rows → spans per preset) → ``engines`` (which
engine runs the spans: ``gpu``, ``cpu``, ``plain``; one file each) → ``output_head`` (logits only at
labelled positions). ``reference`` is the reference scripts' loop, the yardstick of tests and benchmarks.
Only the transform loads here; torch loads with the engines, when a model is scored.
"""

from .scorer import COLUMN_DOCS, DTYPES, SCORE_COLUMNS, STATUS_COLUMN, IFDScorer, ScoringConfig

__all__ = ["COLUMN_DOCS", "DTYPES", "SCORE_COLUMNS", "STATUS_COLUMN", "IFDScorer", "ScoringConfig"]
