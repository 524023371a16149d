"""Reading inputs and writing outputs of the CLI: files, ``save_to_disk`` folders, Hub ids, the demo set.

    ds = load_input("data/alpaca.csv", text_columns=["instruction", "input", "output"])
    write_tables(read_parts(parts), Path("runs/scored.parquet"), provenance={...})

Every input that cannot be read ends in one :class:`InputError` naming the file, the line where known and
the fix (a broken JSON line, a binary file, an empty file, a header-only CSV, ``[]``). Text columns of
CSV and JSON files are read as the text that is written there (``12``, not ``12.0`` or an int). A path
that looks like a file is never taken for a Hub id. Outputs are written atomically and durably.

What a run calls "the input" is its content, never its path or modification time: the dataset's ``_fingerprint``
(the key of resumable chunks, ``datasets`` caches and the run id of a batch folder) is a digest of the file's bytes
(or of every file of a ``save_to_disk`` folder) plus how it was read; a Hub id keeps the fingerprint ``datasets``
derives from the resolved Hub revision. ``datasets.load_dataset`` caches a file under its path and mtime, so an
edit that keeps both (``cp -p``, ``rsync -t``, ``touch -r``) would be read stale: the digest goes into its cache
key too. The bytes are hashed once, streamed (SHA-256, about 3 s per GB; see :func:`content_digest`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .durable import atomic_path
from .errors import InputError

DEMO = "demo"
_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
#: Column names read as text when no mapping names others (those of the formats srt_hf detects).
TEXT_COLUMNS = ("instruction", "input", "context", "output", "response", "prompt", "completion")


def demo_path() -> Path:
    """The demo set shipped in the package: 20 alpaca records, some deliberately weak."""
    return Path(__file__).parent / "data" / "demo_alpaca.jsonl"


def load_input(source: str, split: str = "train", *, text_columns: Iterable[str] = ()):
    """A ``datasets.Dataset`` from a file (JSON/JSONL/CSV/Parquet), a ``save_to_disk`` folder, a srt_hf
    run folder, ``demo``, or a Hub dataset id.

    ``text_columns`` (besides :data:`TEXT_COLUMNS`) are read as text from CSV and JSON files. An input with no
    rows is an error.
    """
    path = demo_path() if source == DEMO and not Path(source).exists() else Path(source)
    texts = [*TEXT_COLUMNS, *(c for c in text_columns if c)]
    identity = None
    if path.is_dir():
        ds, digest = _load_folder(path, split)
        identity = {"folder": digest, "split": split}
    elif path.is_file():
        digest = content_digest(path)
        ds = _load_file(path, texts, digest)
        identity = {"file": digest, "text_columns": sorted(set(texts))}
    elif looks_like_path(source):
        raise InputError(f"{source}: no such file or folder",
                         fix="check the path (a Hub dataset id has the form owner/name and no file suffix)")
    elif source.count("/") == 1 and not source.startswith((".", "/")):
        ds = _load_hub(source, split)
    else:
        raise InputError(f"{source!r} is not a file, a folder or a Hub dataset id", fix="check the path")
    if not len(ds):
        raise InputError(f"{source} has no rows", fix="pass data with at least one record (check the file, --split)")
    if identity is not None:  # the content, not the path and mtime datasets would fingerprint
        ds._fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return ds


#: Bytes read per step while hashing an input (large enough that hashing runs at memory speed).
_HASH_BLOCK = 1 << 22


def content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and bytes, in name order), streamed.

    Hashing is the price of reading what is on disk rather than trusting an mtime: 3.0 s per GB measured on the
    development machine (2 shared cores, page cache warm; reading the same GB into memory took 3.8-5.5 s), small
    next to parsing that GB with ``datasets``, and paid once per command.
    """
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file is not path:
            digest.update(f"\0{file.relative_to(path).as_posix()}\0".encode())
        with open(file, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def looks_like_path(source: str) -> bool:
    """A data-file suffix, or a parent folder that exists: the user means a local path, not a Hub id."""
    path = Path(source)
    if path.suffix.lower() in (*_LOADERS, ".gz", ".zst", ".arrow", ".txt", ".tsv"):
        return True
    return source.startswith((".", "/", "~")) or (len(path.parts) > 1 and path.parent.is_dir())


def _load_folder(path: Path, split: str):
    import datasets

    if (path / "rows.parquet").is_file():  # a srt_hf run folder
        digest = content_digest(path / "rows.parquet")
        return _load_file(path / "rows.parquet", [], digest), digest
    digest = content_digest(path)  # load_from_disk maps the files as they are; its fingerprint is state.json's
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise InputError(
            f"{path} is a folder but not a dataset saved with save_to_disk ({err})",
            fix="pass a data file, a save_to_disk folder or a Hub dataset id",
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged save_to_disk folder raises many types
        raise InputError(f"cannot read the save_to_disk folder {path}: {_innermost(err)}",
                         fix="save the dataset again, or pass a data file") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InputError(f"{path} has no split {split!r} (it has {list(loaded)})", fix="choose one with --split")
        loaded = loaded[split]
    return loaded, digest


def _load_hub(source: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(source, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; all mean "cannot load"
        raise InputError(
            f"could not load the Hub dataset {source!r}: {_innermost(err)}",
            fix="check the id and --split, your network and HF_TOKEN; offline, pass a local file",
        ) from None


def _load_file(path: Path, text_columns: list[str], digest: str):
    """``digest`` (of the file's bytes) names the ``datasets`` cache entry: an edit that kept the size and mtime
    is read again, not served from the cache."""
    import datasets

    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise InputError(
            f"cannot read {path}: unknown file type {path.suffix!r}",
            fix=f"use one of {sorted(_LOADERS)}, a save_to_disk folder or a Hub dataset id",
        )
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)", fix="pass a file with at least one record")
    options: dict[str, Any] = {}
    if loader == "csv":
        header = _csv_header(path)
        options["converters"] = {c: str for c in header if c in text_columns}  # the cell as written, not a number
    try:
        with _quiet_datasets_logs():
            ds = datasets.load_dataset(loader, name=f"srt-{digest[:24]}", data_files=str(path), split="train", **options)
    except Exception as err:  # noqa: BLE001 - datasets, pyarrow and pandas raise many types; all mean "cannot read"
        raise _unreadable(path, loader, err) from None
    if loader == "json":
        ds = _json_text_columns(ds, path, text_columns)
    return ds


@contextlib.contextmanager
def _quiet_datasets_logs() -> Iterator[None]:
    """datasets logs its own 'Failed to load JSON' line before raising; our error says it better."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])
    except UnicodeDecodeError:
        raise InputError(f"cannot read {path}: it is not UTF-8 text (is it a binary file?)",
                         fix="save the CSV as UTF-8 text, or pass another file") from None
    except csv.Error as err:
        raise InputError(f"cannot read {path}: line 1 is not CSV ({err})", fix="fix the header line") from None


def _innermost(err: BaseException) -> str:
    """The most specific message in an exception chain, on one line."""
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    messages = [f"{type(e).__name__}: {e}" for e in chain if str(e).strip() and "occurred while generating" not in str(e)]
    text = messages[-1] if messages else type(err).__name__
    return " ".join(text.split())[:300]


def _unreadable(path: Path, loader: str, err: BaseException) -> InputError:
    """Why a file could not be read, at the line where that is known."""
    if "corresponds to no data" in str(err) or isinstance(err, StopIteration):
        return InputError(f"{path} has no rows", fix="pass a file with at least one record")
    where = _first_bad_json_line(path) if loader == "json" else None
    if where:
        binary = "not UTF-8" in where
        return InputError(f"cannot read {path}: {where}", fix="pass a UTF-8 JSON Lines file" if binary else
                          "fix or remove that line (JSON Lines: one JSON object per line)")
    cause = _innermost(err)
    if "UnicodeDecodeError" in cause:
        return InputError(f"cannot read {path}: it is not UTF-8 text (is it a binary file?)",
                          fix=f"pass a UTF-8 {loader.upper()} file")
    if "EmptyDataError" in cause:
        return InputError(f"{path} has no columns and no rows", fix="pass a file with a header and at least one record")
    return InputError(f"cannot read {path} as {loader.upper()}: {cause}", fix=f"check that it is a valid {loader.upper()} file")


def _first_bad_json_line(path: Path) -> str | None:
    """'line N: <what is wrong>' for the first line of a JSON / JSON Lines file that does not parse, else None."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return f"line {line} is not UTF-8 text (is it a binary file?)"
    try:
        json.loads(text)
        return None  # one JSON document: not a line problem
    except ValueError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as err:
            return f"line {number} is not valid JSON ({getattr(err, 'msg', err)} at column {getattr(err, 'colno', '?')})"
        if not isinstance(value, dict):
            return f"line {number} is a JSON {type(value).__name__}, not an object with named fields"
    return None


def _json_text_columns(ds, path: Path, text_columns: list[str]):
    """Text columns that JSON typed as numbers (or mixed), replaced by the values as written in the file.

    A column of whole numbers (alone or beside texts) is converted in memory: JSON writes an integer one way
    only, so ``str(7)`` is what the file says and the file is not read again. A float's spelling is only in the
    file (``7`` beside ``2.5`` loads as ``7.0``; ``2.50`` as ``2.5``): only then is the file read once more. A column
    that also holds booleans, objects or lists is left as loaded (``formats`` says why such a row is not text).
    """
    from datasets import Value

    def typed_otherwise(feature) -> bool:  # a number, a bool, or values of mixed types (datasets' Json feature)
        if isinstance(feature, Value):
            return feature.dtype not in ("string", "large_string", "null")
        return type(feature).__name__ == "Json"

    wanted = [c for c in ds.column_names if c in text_columns and typed_otherwise(ds.features[c])]
    if not wanted:
        return ds
    order = ds.column_names
    spelled: list[str] = []  # columns holding floats: their text comes from the file
    for column in wanted:
        values = ds[column]
        if any(isinstance(v, (bool, dict, list)) for v in values):
            continue
        if any(isinstance(v, float) for v in values):
            spelled.append(column)
            continue
        ds = ds.remove_columns(column).add_column(column, [v if v is None or isinstance(v, str) else str(v) for v in values])
    records = _json_records_as_written(path) if spelled else None
    if records is not None and len(records) == len(ds):  # else formats._text still turns a number into text (12.0)
        for column in spelled:
            values = [r.get(column) if isinstance(r, dict) else None for r in records]
            if all(v is None or isinstance(v, str) for v in values):
                ds = ds.remove_columns(column).add_column(column, values)
    return ds.select_columns(order)


def _json_records_as_written(path: Path) -> list | None:
    """The records of a JSON / JSON Lines file with every number kept as written (a string)."""
    as_written = {"parse_int": str, "parse_float": str}
    text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text, **as_written)
        return value if isinstance(value, list) else None
    except ValueError:
        pass
    try:
        return [json.loads(line, **as_written) for line in text.splitlines() if line.strip()]
    except ValueError:
        return None


def nan_to_null(table: pa.Table) -> pa.Table:
    """Float NaN → null, so Parquet/JSON readers see missing scores as missing."""
    for i, field in enumerate(table.schema):
        if pa.types.is_floating(field.type):
            col = table.column(i)
            table = table.set_column(i, field, pc.if_else(pc.is_nan(col), pa.scalar(None, field.type), col))
    return table


def apply_limit(ds, limit: int | None):
    """The first ``limit`` rows (all when None); a limit below 1 is an error, not an empty run."""
    if limit is None:
        return ds
    if limit < 1:
        raise InputError(f"--limit {limit} leaves no rows", fix="pass --limit 1 or more, or leave it out to use every row")
    return ds.select(range(min(limit, len(ds))))


def check_output_path(out: Path) -> None:
    if out.suffix.lower() not in (".parquet", ".jsonl"):
        raise InputError(f"cannot write {out}: the suffix decides the format", fix="end --out with .parquet or .jsonl")


PROVENANCE_KEY = b"srt_hf"


def write_tables(tables: Iterable[pa.Table], out: Path, provenance: dict | None = None) -> int:
    """Stream tables into one Parquet or JSONL file (chosen by suffix); returns the rows written.

    ``provenance`` (student, scoring, …) goes into the Parquet schema metadata, so a later
    ``srt-hf select`` can name it on its card; JSONL has no place for it."""
    check_output_path(out)
    rows = 0
    with atomic_path(out) as tmp:  # a crash or a full disk leaves the earlier file as it was
        if out.suffix.lower() == ".parquet":
            writer = None
            try:
                for table in tables:
                    table = nan_to_null(table)
                    if writer is None:
                        schema = table.schema
                        if provenance:
                            schema = schema.with_metadata({**(schema.metadata or {}), PROVENANCE_KEY: json.dumps(provenance)})
                        writer = pq.ParquetWriter(tmp, schema)
                    writer.write_table(table.cast(writer.schema))
                    rows += table.num_rows
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:
                raise InputError("nothing to write: the input has no rows", fix="check the input file")
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for table in tables:
                    for record in nan_to_null(table).to_pylist():
                        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                    rows += table.num_rows
    return rows


def read_provenance(path: Path) -> dict:
    """The provenance ``write_tables`` stored in a Parquet file; empty for any other input."""
    if not (path.is_file() and path.suffix.lower() == ".parquet"):
        return {}
    raw = (pq.read_schema(path).metadata or {}).get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def with_columns(ds, columns: dict[str, list], features: dict[str, str] | None = None):
    """``datasets.Dataset`` ``ds`` with ``columns`` added (replacing any of the same name), ``features`` naming some types."""
    from datasets import Value

    present = [c for c in columns if c in ds.column_names]
    if present:
        ds = ds.remove_columns(present)
    for name, values in columns.items():
        kind = (features or {}).get(name)
        ds = ds.add_column(name, values, feature=Value(kind)) if kind else ds.add_column(name, values)
    return ds
