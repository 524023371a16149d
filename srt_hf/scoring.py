"""Where the scorer used to live: ``from srt_hf.scoring import IFDScorer`` keeps working (the code is in :mod:`srt_hf.student`)."""

from .student.scorer import COLUMN_DOCS, DTYPES, SCORE_COLUMNS, STATUS_COLUMN, IFDScorer, ScoringConfig

__all__ = ["COLUMN_DOCS", "DTYPES", "SCORE_COLUMNS", "STATUS_COLUMN", "IFDScorer", "ScoringConfig"]
