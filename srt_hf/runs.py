"""The run folder: what `srt-hf recycle` and `srt-hf select` leave behind, and what `srt-hf push` uploads.

    RUN/
      run.json           metadata: versions, the command, teacher, student, preset, prompts, selection rule, counts,
                         score figures per population (srt_hf.figures)
      rows.parquet       every input row, with original / reflected / chosen texts, scores and statuses
      selected.parquet   the rows kept by the selection rule
      sft/train.parquet  the kept rows as conversational prompt/completion records (TRL SFT format)
      README.md          the dataset card
      report.html        every row, what the teacher changed and why, in one offline page (srt-hf report)
      images/            the card's IFD / r-IFD histograms
      cache.sqlite       the teacher's response cache (recycle only; not uploaded, nor its -wal / -shm files)
      batches.json       recycle --submit openai: the batch ids of its batch files (not uploaded)
      work/              resumable per-stage parts (not uploaded)
      .srt-hf.lock       held by the run writing the folder (not uploaded)

`srt-hf push` uploads the documented outputs only (:data:`UPLOADED`), never the cache, work files,
locks or anything else left in the folder. Files are written atomically (fsync, then rename).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROWS, SELECTED, SFT, META, CARD = "rows.parquet", "selected.parquet", "sft/train.parquet", "run.json", "README.md"
CACHE, WORK, IMAGES, REPORT = "cache.sqlite", "work", "images", "report.html"
NOT_UPLOADED = (CACHE, WORK)
# run.json settings that say how a run was wired, not what it did: the card and the report leave them out.
INTERNAL_SETTINGS = frozenset({"within_earlier_selection", "ifd_column", "hub_id", "chunk_rows", "instruction_column",
                               "input_column", "response_column", "messages_column", "device", "retry_failed"})
#: The top-level entries of a run folder that are published (everything else stays local).
UPLOADED = (META, ROWS, SELECTED, CARD, REPORT, SFT.split("/")[0], IMAGES)


class _InRun:
    """A file or folder of the run, read as an attribute of :class:`RunPaths` (``RunPaths(root).rows``)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, paths: RunPaths | None, owner: type | None = None) -> Any:
        return self if paths is None else paths.root / self.name


@dataclass(frozen=True)
class RunPaths:
    """Where each part of the run folder ``root`` lies (each attribute a :class:`~pathlib.Path`)."""

    root: Path
    rows, selected, sft, meta = _InRun(ROWS), _InRun(SELECTED), _InRun(SFT), _InRun(META)
    card, cache, work = _InRun(CARD), _InRun(CACHE), _InRun(WORK)


def write_meta(root: Path, meta: dict[str, Any]) -> None:
    from .durable import write_text_atomic

    write_text_atomic(RunPaths(root).meta, json.dumps(meta, indent=2, ensure_ascii=False, default=str))


def read_meta(root: Path) -> dict[str, Any]:
    return json.loads(RunPaths(root).meta.read_text())


def write_sft(selected, path: Path, *, instruction: str, input: str | None, response: str, id_column: str | None = None) -> int:
    """Write the selected rows as conversational prompt/completion records; returns the row count."""
    from .durable import atomic_path
    from .formats import to_prompt_completion

    def convert(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch[instruction])
        records = [
            to_prompt_completion(batch[instruction][i], (batch[input][i] or "") if input else "", batch[response][i])
            for i in range(n)
        ]
        out = {"prompt": [r["prompt"] for r in records], "completion": [r["completion"] for r in records]}
        if id_column:
            out["id"] = [str(v) for v in batch[id_column]]
        return out

    sft = selected.map(convert, batched=True, remove_columns=selected.column_names, desc="SFT format")
    with atomic_path(path) as tmp:
        sft.to_parquet(str(tmp))
    return len(sft)
