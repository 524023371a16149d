"""Dataset and model cards of srt-hf runs: Hub metadata, provenance, charts and citations.

    from srt_hf.cards import write_dataset_card, write_model_card
    write_dataset_card("runs/alpaca-srt")        # RUN/README.md + RUN/images/*.png, from run.json and the Parquet files

One module per job: :mod:`.common` (rendering, YAML front matter, provenance readers), :mod:`.dataset`,
:mod:`.model` and :mod:`.citations` (the BibTeX table keyed by method names).
"""

from __future__ import annotations

from .citations import citations_for, run_methods
from .common import DATASET_TEMPLATE, MODEL_TEMPLATE, TEMPLATE_DIRS
from .dataset import column_docs, size_category, write_dataset_card
from .model import validate_model_card, write_model_card

__all__ = [
    "DATASET_TEMPLATE", "MODEL_TEMPLATE", "TEMPLATE_DIRS", "citations_for", "column_docs", "run_methods",
    "size_category", "validate_model_card", "write_dataset_card", "write_model_card",
]
