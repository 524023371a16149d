"""Resumable, streaming, optionally distributed ``map`` to Parquet parts.

    parts = map_in_chunks(ds, scorer, Path("out.parquet.parts"), key=digest, chunk_rows=64)
    for table in read_parts(parts): ...

Rows are processed in fixed chunks; each finished chunk is written atomically and durably (fsync, then
rename) to ``work_dir/part-NNNNNN.parquet``. A rerun with the same key skips finished chunks, so a killed
run resumes where it stopped and memory never holds more than one chunk. A rerun also checks every
finished chunk: one that cannot be read or holds the wrong number of rows (what a power cut can leave),
one computed from another input (``inputs``), or one the caller wants again (``redo``, e.g. rows whose
teacher request failed) is redone, with a one-line notice. Under ``accelerate launch`` chunk ``i`` goes
to process ``i % num_processes``; the parts keep the original row order.

``rows_per_call`` hands ``fn`` several chunks at once (whole chunks, up to that many rows) and still writes one
part per chunk: a GPU student scores 1024 rows in one call far faster than 16 calls of 64, while a rerun
resumes chunk by chunk as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .durable import atomic_path, write_text_atomic
from .errors import ConfigError
from .progress import chunk_progress, quiet_foreign_bars

logger = logging.getLogger(__name__)

#: Schema-metadata key of a part: what it was computed from (``{"input": digest}``).
CHUNK_KEY = b"srt_hf_chunk"


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
    inputs: Sequence[str] | None = None,
    redo: Callable[[Path], str | None] | None = None,
    rows_per_call: int | None = None,
) -> list[Path]:
    """Apply ``fn`` (a batched map function returning new columns) chunk by chunk; returns the part files.

    ``key`` identifies the computation (config + input); parts written under another key are discarded.
    ``schema`` pins the types of the new columns (floats default to float64, everything else is inferred).
    ``inputs`` (one digest per chunk, e.g. :func:`part_digest` of the previous stage's parts) says what each
    chunk is computed from: a finished chunk recorded with another digest is redone. ``redo(part)`` returns
    why a finished part must be computed again (None: keep it). ``rows_per_call``: rows ``fn`` gets at once (whole
    chunks, at least one; default one chunk).
    """
    from tqdm.auto import tqdm

    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows = {chunk_rows}: a chunk holds at least one row (CLI: --chunk-rows 64)")
    state = process_state()
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    n_chunks = max(1, -(-len(ds) // chunk_rows))
    if inputs is not None and len(inputs) != n_chunks:
        raise ValueError(f"inputs has {len(inputs)} digests for {n_chunks} chunks")
    meta = {"key": key, "rows": len(ds), "chunk_rows": chunk_rows}
    if rank == 0:
        _prepare(work_dir, meta)
    if state:
        state.wait_for_everyone()
    parts = [work_dir / f"part-{i:06d}.parquet" for i in range(n_chunks)]
    mine = [i for i in range(n_chunks) if i % world == rank]

    def rows_of(i: int) -> int:
        return min(chunk_rows, len(ds) - i * chunk_rows)

    todo, redone = [], []
    for i in mine:
        if not parts[i].exists():
            todo.append(i)
            continue
        why = _check_part(parts[i], rows_of(i), inputs[i] if inputs is not None else None)
        if why is None and redo is not None:
            why = redo(parts[i])
        if why is not None:
            todo.append(i)
            redone.append(f"{parts[i].name} ({why})")
    if redone:
        shown = ", ".join(redone[:3]) + (f" and {len(redone) - 3} more" if len(redone) > 3 else "")
        logger.warning("srt_hf: %s: redoing %d finished chunk(s) of %s: %s", desc, len(redone), work_dir, shown)
    done_rows = sum(rows_of(i) for i in mine if i not in todo)
    bar = tqdm(total=sum(rows_of(i) for i in mine), initial=done_rows, desc=desc, unit="row", disable=rank != 0)
    calls: list[list[int]] = []  # the chunks of each call to fn
    for i in todo:
        if calls and sum(rows_of(j) for j in calls[-1]) + rows_of(i) <= (rows_per_call or 0):
            calls[-1].append(i)
        else:
            calls.append([i])
    try:
        with quiet_foreign_bars():  # a model loading inside the first chunk prints no bar inside ours
            for chunks in calls:
                _write_chunks(ds, fn, [(i * chunk_rows, i * chunk_rows + rows_of(i)) for i in chunks],
                              [parts[i] for i in chunks], bar, schema=schema,
                              input_digests=[inputs[i] if inputs is not None else None for i in chunks])
    finally:  # on an error too, so that the bar's last line comes before the error's message
        bar.close()
    if state:
        state.wait_for_everyone()
    return parts


def _write_chunks(ds, fn: Callable[[dict[str, list]], dict[str, Any]], bounds: list[tuple[int, int]], parts: list[Path],
                  bar, *, schema: pa.Schema | None, input_digests: list[str | None]) -> None:
    """Compute the chunks of rows ``bounds`` (lo, hi) in one call to ``fn``, then write each into its part
    (atomically); the work inside moves ``bar`` as it goes."""
    rows = [hi - lo for lo, hi in bounds]
    with chunk_progress(bar, sum(rows)):
        batches = [ds[lo:hi] for lo, hi in bounds if hi > lo]
        batch = batches[0] if len(batches) == 1 else {k: [v for b in batches for v in b[k]] for k in batches[0]} if batches else {}
        new = fn(batch) if batch else {}
    start = 0
    for (lo, hi), n, part, digest in zip(bounds, rows, parts, input_digests):
        table = ds.with_format("arrow")[lo:hi] if hi > lo else ds.with_format("arrow")[0:0]
        for name, values in new.items():
            array = _to_arrow(values[start : start + n], schema.field(name).type if schema and name in schema.names else None)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, array)
            else:
                table = table.append_column(name, array)
        start += n
        record = {"input": digest}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), CHUNK_KEY: json.dumps(record).encode()})
        with atomic_path(part) as tmp:
            pq.write_table(table, tmp)


def _check_part(part: Path, rows: int, input_digest: str | None) -> str | None:
    """Why a finished part cannot be kept (unreadable, wrong row count, other input), or None."""
    try:
        file = pq.ParquetFile(part)
        metadata = file.schema_arrow.metadata or {}
        n = file.metadata.num_rows
    except Exception as err:  # noqa: BLE001 - a damaged file raises whatever the reader stumbles on
        return f"unreadable: {type(err).__name__}"
    if n != max(rows, 0):
        return f"holds {n} rows, expected {rows}"
    if input_digest is not None:
        try:
            recorded = json.loads(metadata.get(CHUNK_KEY, b"{}")).get("input")
        except ValueError:
            recorded = None
        if recorded != input_digest:
            return "its input changed"
    return None


def _prepare(work_dir: Path, meta: dict) -> None:
    """Start ``work_dir`` afresh unless it holds parts of the same computation (an unreadable meta.json is another one)."""
    meta_file = work_dir / "meta.json"
    if meta_file.exists():
        try:
            same = json.loads(meta_file.read_text()) == meta
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if not meta_file.exists():
        write_text_atomic(meta_file, json.dumps(meta))


def _to_arrow(values: Any, type: pa.DataType | None) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if type is None else values.cast(type)
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return pa.array(values.astype(np.float64), type=type or pa.float64())
    return pa.array(list(values), type=type)


def part_digest(part: Path) -> str:
    """SHA-256 of a part file: what a later stage records as its input."""
    digest = hashlib.sha256()
    with open(part, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def row_digests(ds, chunk_rows: int) -> list[str]:
    """One SHA-256 per chunk of ``ds``'s rows (every column, values as read): the ``inputs`` of a first stage, so an
    input edited in place redoes exactly the chunks whose rows changed.

    The values are hashed, not Arrow buffers (whose bytes depend on how a table happens to be chunked): about 3-5 s
    per 100,000 rows of 1 KB on the development machine, once per command."""
    table = ds.with_format("arrow")[:] if len(ds) else None
    digests = []
    for lo in range(0, max(len(ds), 1), chunk_rows):
        columns = table.slice(lo, chunk_rows).to_pydict() if table is not None else {}
        digests.append(hashlib.sha256(json.dumps(columns, sort_keys=True, default=str).encode()).hexdigest())
    return digests


def column_kinds(part: Path, column: str) -> list[str]:
    """The status kinds of ``column`` in a part (for ``redo`` decisions)."""
    from .status import kind_of

    return [kind_of(s) for s in pq.read_table(part, columns=[column]).column(column).to_pylist()]


def read_parts(parts: list[Path]):
    """The parts as a stream of tables, in order (without the bookkeeping metadata of the parts)."""
    for part in parts:
        table = pq.read_table(part)
        metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != CHUNK_KEY}
        yield table.replace_schema_metadata(metadata or None)
