"""Reading inputs and writing outputs of the CLI: files, ``save_to_disk`` folders, Hub ids, the demo set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import InputError

DEMO = "demo"
_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def demo_path() -> Path:
    """The demo set shipped in the package: 20 alpaca records, some deliberately weak."""
    return Path(__file__).parent / "data" / "demo_alpaca.jsonl"


def load_input(source: str, split: str = "train"):
    """A ``datasets.Dataset`` from a file (JSON/JSONL/CSV/Parquet), a ``save_to_disk`` folder, a srt_hf
    run folder, ``demo``, or a Hub dataset id."""
    import datasets

    path = demo_path() if source == DEMO and not Path(source).exists() else Path(source)
    if path.is_dir():
        if (path / "rows.parquet").is_file():  # a srt_hf run folder
            return datasets.Dataset.from_parquet(str(path / "rows.parquet"))
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise InputError(
                f"{path} is a folder but not a dataset saved with save_to_disk ({err})",
                fix="pass a data file, a save_to_disk folder or a Hub dataset id",
            ) from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise InputError(f"{path} has no split {split!r} (it has {list(loaded)})", fix="choose one with --split")
            loaded = loaded[split]
        return loaded
    if path.is_file():
        loader = _LOADERS.get(path.suffix.lower())
        if loader is None:
            raise InputError(
                f"cannot read {path}: unknown file type {path.suffix!r}",
                fix=f"use one of {sorted(_LOADERS)}, a save_to_disk folder or a Hub dataset id",
            )
        return datasets.load_dataset(loader, data_files=str(path), split="train")
    if source.count("/") == 1 and not source.startswith((".", "/")):
        try:
            return datasets.load_dataset(source, split=split)
        except Exception as err:  # noqa: BLE001 - datasets raises many types; all mean "cannot load"
            raise InputError(
                f"could not load the Hub dataset {source!r}: {err}",
                fix="check the id and --split, your network and HF_TOKEN; offline, pass a local file",
            ) from None
    raise InputError(f"{source!r} is not a file, a folder or a Hub dataset id", fix="check the path")


def nan_to_null(table: pa.Table) -> pa.Table:
    """Float NaN → null, so Parquet/JSON readers see missing scores as missing."""
    for i, field in enumerate(table.schema):
        if pa.types.is_floating(field.type):
            col = table.column(i)
            table = table.set_column(i, field, pc.if_else(pc.is_nan(col), pa.scalar(None, field.type), col))
    return table


def check_output_path(out: Path) -> None:
    if out.suffix.lower() not in (".parquet", ".jsonl"):
        raise InputError(f"cannot write {out}: the suffix decides the format", fix="end --out with .parquet or .jsonl")


PROVENANCE_KEY = b"srt_hf"


def write_tables(tables: Iterable[pa.Table], out: Path, provenance: dict | None = None) -> int:
    """Stream tables into one Parquet or JSONL file (chosen by suffix); returns the rows written.

    ``provenance`` (student, scoring, …) goes into the Parquet schema metadata, so a later
    ``srt-hf select`` can name it on its card; JSONL has no place for it."""
    check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    rows = 0
    if out.suffix.lower() == ".parquet":
        writer = None
        for table in tables:
            table = nan_to_null(table)
            if writer is None:
                schema = table.schema
                if provenance:
                    schema = schema.with_metadata({**(schema.metadata or {}), PROVENANCE_KEY: json.dumps(provenance)})
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
        if writer is None:
            raise InputError("nothing to write: the input has no rows", fix="check the input file")
        writer.close()
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for table in tables:
                for record in nan_to_null(table).to_pylist():
                    f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                rows += table.num_rows
    tmp.replace(out)
    return rows


def read_provenance(path: Path) -> dict:
    """The provenance ``write_tables`` stored in a Parquet file; empty for any other input."""
    if not (path.is_file() and path.suffix.lower() == ".parquet"):
        return {}
    raw = (pq.read_schema(path).metadata or {}).get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}
