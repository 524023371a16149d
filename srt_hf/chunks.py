"""Resumable, streaming, optionally distributed ``map`` to Parquet parts.

Rows are processed in fixed chunks; each finished chunk is written atomically to
``work_dir/part-NNNNNN.parquet``. A rerun with the same key skips finished chunks, so a killed run
resumes where it stopped and memory never holds more than one chunk. Under ``accelerate launch``
chunk ``i`` goes to process ``i % num_processes``; the parts keep the original row order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def process_state():
    """accelerate's ``PartialState`` when launched with several processes, else ``None``."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # Without GPUs accelerate would fall back to a single process; cpu=True gives gloo across processes.
    return PartialState(cpu=not torch.cuda.is_available())


def map_in_chunks(
    ds,
    fn: Callable[[dict[str, list]], dict[str, Any]],
    work_dir: Path,
    *,
    key: str,
    chunk_rows: int = 64,
    desc: str = "rows",
    schema: pa.Schema | None = None,
) -> list[Path]:
    """Apply ``fn`` (a batched map function returning new columns) chunk by chunk; returns the part files.

    ``key`` identifies the computation (config + input); parts written under another key are discarded.
    ``schema`` pins the types of the new columns (floats default to float64, everything else is inferred).
    """
    from tqdm.auto import tqdm

    state = process_state()
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    n_chunks = max(1, -(-len(ds) // chunk_rows))
    meta = {"key": key, "rows": len(ds), "chunk_rows": chunk_rows}
    if rank == 0:
        _prepare(work_dir, meta)
    if state:
        state.wait_for_everyone()
    parts = [work_dir / f"part-{i:06d}.parquet" for i in range(n_chunks)]
    mine = [i for i in range(n_chunks) if i % world == rank]
    todo = [i for i in mine if not parts[i].exists()]
    done_rows = sum(min(chunk_rows, len(ds) - i * chunk_rows) for i in mine if i not in todo)
    bar = tqdm(total=sum(min(chunk_rows, len(ds) - i * chunk_rows) for i in mine), initial=done_rows, desc=desc, unit="row", disable=rank != 0)
    for i in todo:
        lo, hi = i * chunk_rows, min((i + 1) * chunk_rows, len(ds))
        table = ds.with_format("arrow")[lo:hi] if hi > lo else ds.with_format("arrow")[0:0]
        new = fn(ds[lo:hi]) if hi > lo else {}
        for name, values in new.items():
            array = _to_arrow(values, schema.field(name).type if schema and name in schema.names else None)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, array)
            else:
                table = table.append_column(name, array)
        tmp = parts[i].with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(parts[i])
        bar.update(hi - lo)
    bar.close()
    if state:
        state.wait_for_everyone()
    return parts


def _prepare(work_dir: Path, meta: dict) -> None:
    meta_file = work_dir / "meta.json"
    if meta_file.exists() and json.loads(meta_file.read_text()) != meta:
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    meta_file.write_text(json.dumps(meta))


def _to_arrow(values: Any, type: pa.DataType | None) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if type is None else values.cast(type)
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return pa.array(values.astype(np.float64), type=type or pa.float64())
    return pa.array(list(values), type=type)


def read_parts(parts: list[Path]):
    """The parts as a stream of tables, in order."""
    for part in parts:
        yield pq.read_table(part)
