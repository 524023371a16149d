"""The dataset card of a run folder: metadata, configs, file and column descriptions, counts, histograms.

    write_dataset_card("runs/alpaca-srt")          # -> runs/alpaca-srt/README.md and images/*.png

The card reads the run folder (see :mod:`srt_hf.runs`). Every key of ``run.json`` is optional; the ones
used are::

    kind        "recycle" | "select"
    source      {"name": Hub id or path, "license": SPDX/Hub id, "split": str, "language": str | list}
    teacher     {"model": str, ...generation settings}      (recycle)
    student     {"model": str, ...}
    scoring     {"preset": str, "template": str, ...}
    prompts     {name: template text}                        the teacher prompts, shown verbatim
    selection   {"rule": str, ...parameters}
    methods     ["selective-reflection-tuning", "k-center", ...]   what the run did (see cards.citations)
    counts      {stage: rows}                                in pipeline order
    reasons     {"kept: …" / "dropped: …": rows}             why rows were kept or dropped
    columns     {column: description}                        added to the column dictionary
    histograms  {"ifd": {"before": "rows.parquet:ifd", "after": "selected.parquet:ifd"}, "rifd": {...}}
    hub         {"repo_id": str, "revision": str}            written by `srt-hf push`
    space       {"repo_id": str, "url": str}                 written by `srt-hf push --space`
    srt_hf_version, created

A recycle run's card also reads rows.parquet's statuses and choices, so what it says about the teacher
(whose versions were used, how many reflections failed and why) is counted, not assumed.

The charts come from :mod:`srt_hf.charts` (matplotlib).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import PROJECT_URL, __version__
from ..charts import histogram_png
from ..runs import INTERNAL_SETTINGS, ROWS, SELECTED, SFT, RunPaths, read_meta
from ..selection.decisions import SELECTED as SELECTED_COLUMN
from .citations import citations_for, run_methods
from .common import (
    BASE_TAGS,
    DATASET_TEMPLATE,
    as_dict,
    card_yaml,
    looks_like_hub_id,
    provenance,
    render,
)

IMAGES = "images"

# Data configs of a run folder: (config name, file, description). The first present is the default.
DATA_CONFIGS = (
    ("sft", SFT, "the kept rows as conversational prompt/completion records (TRL SFT format)"),
    ("selected", SELECTED, "the kept rows with every provenance and score column"),
    ("rows", ROWS, "every input row: original, reflected and chosen texts, scores and statuses"),
)


def write_dataset_card(run_dir: Path, *, repo_id: str | None = None, license: str | None = None) -> Path:
    """Render ``RUN/README.md`` (and its charts under ``RUN/images/``) from run.json and the Parquet files.

    ``repo_id`` is used in the loading snippets (default: the one `srt-hf push` recorded, else a
    placeholder); ``license`` overrides the source license recorded in run.json.
    """
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    meta = read_meta(run_dir) if paths.meta.is_file() else {}
    source = as_dict(meta.get("source"), "name")
    repo_id = repo_id or as_dict(meta.get("hub"), "repo_id").get("repo_id")

    files = [_describe_file(run_dir, name, rel, text) for name, rel, text in DATA_CONFIGS if (run_dir / rel).is_file()]
    columns = column_dictionary(files, column_docs(meta))
    counts = _counts(meta, files)
    license_origin = "flag" if license else source.get("license_from") or "source"
    largest = max([f["rows"] for f in files] + [0])
    metadata: dict[str, Any] = {
        "license": license or source.get("license") or "unknown",
        "task_categories": ["text-generation"],
        "size_categories": [size_category(largest)],
        "tags": [*BASE_TAGS, "ifd", "data-selection", "instruction-tuning"]
        + (["synthetic"] if meta.get("kind", "recycle") == "recycle" else []),
        "pretty_name": meta.get("pretty_name") or (repo_id or run_dir.resolve().name).split("/")[-1],
        "configs": [
            {"config_name": f["config"], "data_files": [{"split": "train", "path": f["path"]}],
             **({"default": True} if i == 0 else {})}
            for i, f in enumerate(files)
        ],
    }
    if _is_hub_dataset(source.get("name")):
        metadata["source_datasets"] = [source["name"]]
    if source.get("language"):
        metadata["language"] = source["language"]

    charts = _write_histograms(run_dir, meta)
    space = as_dict(meta.get("space"), "repo_id")
    context = {
        "project_url": PROJECT_URL,
        "teacher_use": teacher_use(run_dir, meta) if meta.get("kind", "recycle") == "recycle" else None,
        "written": meta.get("teacher_written"),  # the training prompts / completions the teacher wrote
        "has_rifd": any(c["score"] == "r-IFD" for c in charts),
        "report": paths.rows.is_file(),
        "space": space if space.get("repo_id") else None,
        "card_data": card_yaml(metadata, "dataset"),
        "title": metadata["pretty_name"],
        "kind": meta.get("kind", "recycle"),
        "repo_id": repo_id,
        "load_id": repo_id or "path/to/" + run_dir.resolve().name,
        "license": license or source.get("license"),
        "license_origin": license_origin if (license or source.get("license")) else None,
        "source": source,
        **provenance(meta),
        "prompts": dict(meta.get("prompts") or {}),
        "smoke_test": meta.get("smoke_test"),
        "layouts_sent": meta.get("layouts_sent"),
        "settings": _settings(meta),
        "counts": counts,
        "reasons": dict(meta.get("reasons") or {}),
        "files": files,
        "columns": columns,
        "samples": sample_records(run_dir, files),
        "command": as_dict(meta.get("command"), "text").get("text"),
        "train": _training(meta, repo_id or str(run_dir)),
        "charts": charts,
        "version": meta.get("srt_hf_version", __version__),
        "created": meta.get("created"),
        "citations": citations_for(run_methods(meta)),
    }
    paths.card.write_text(render(DATASET_TEMPLATE, context), encoding="utf-8")
    return paths.card


def column_docs(meta: Mapping[str, Any]) -> dict[str, str]:
    """Descriptions of the columns: those of the modules that produce them (a select run of a recycle folder
    carries the recycle columns), then run.json's ``columns``."""
    from ..formats import COLUMN_DOCS as FORMAT_DOCS
    from ..pipeline import COLUMN_DOCS as RECYCLE_DOCS
    from ..scoring import COLUMN_DOCS as SCORE_DOCS

    return {**FORMAT_DOCS, **SCORE_DOCS, **RECYCLE_DOCS,
            **{str(k): str(v) for k, v in (meta.get("columns") or {}).items()}}


#: The description of a column srt_hf did not write: the input's own, passed through.
INPUT_COLUMN = "from the input data, as read"
#: Column prefixes of a recycle run's scores (the scorer's columns, prefixed) and the pair they score.
SCORED_PAIRS = (("original_", "the original pair"), ("reflected_pair_", "the teacher's new pair (stage 1)"),
                ("better_response_", "the kept instruction with the teacher's better answer (stage 3)"),
                ("better_", "the kept instruction with the teacher's better answer (stage 3)"),
                ("final_", "the final pair"))


def describe_column(name: str, docs: Mapping[str, str]) -> str:
    """``docs[name]``, else the description of the scorer column it prefixes (``original_loss_A_cond`` →
    that of ``loss_A_cond``, "of the original pair"); else the column came with the input data (every column
    srt_hf writes is documented)."""
    if docs.get(name):
        return docs[name]
    for prefix, pair in SCORED_PAIRS:
        rest = name.removeprefix(prefix)
        if rest != name and docs.get(rest):
            return f"{docs[rest]}; of {pair}"
    return INPUT_COLUMN


def column_dictionary(files: Sequence[Mapping[str, Any]], docs: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every column of the data files once: name, type, the configs that hold it, description."""
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        for column in f["columns"]:
            entry = out.setdefault(column["name"], {"name": column["name"], "type": column["type"], "configs": [],
                                                    "description": describe_column(column["name"], docs)})
            entry["configs"].append(f["config"])
    return list(out.values())


def sample_records(run_dir: Path, files: list[dict[str, Any]], scan: int = 1024) -> dict[str, tuple[int, str]]:
    """Per config, a sample record that is not also a record of an earlier config: (row index, indented JSON).
    ``rows`` holds every row of ``selected`` with the same columns, so its sample is its first row that is not a
    kept one (among the first ``scan`` rows of each); a config with nothing new there gets no sample."""
    seen: set[str] = set()
    samples = {}
    for f in files:
        records = list(_records(run_dir / f["path"], scan))
        first_new = next(((i, r) for i, r in enumerate(records) if r not in seen), None)
        if first_new is not None:
            samples[f["config"]] = first_new
        seen.update(records)
    return samples


def _records(path: Path, scan: int, limit: int = 300) -> Iterator[str]:
    """The first ``scan`` rows of a Parquet file as indented JSON, each text cut at ``limit`` characters ("…")."""
    import json

    import pyarrow.parquet as pq

    def cut(value: Any) -> Any:
        if isinstance(value, str):
            return value if len(value) <= limit else value[:limit] + "…"
        if isinstance(value, list):
            return [cut(v) for v in value]
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, float):
            return round(value, 4) if np.isfinite(value) else None
        return value

    for batch in pq.ParquetFile(path).iter_batches(batch_size=min(scan, 256)):
        for row in batch.to_pylist():
            yield json.dumps(cut(row), ensure_ascii=False, indent=2, default=str)
            scan -= 1
            if scan <= 0:
                return


def _training(meta: Mapping[str, Any], dataset: str) -> dict[str, str]:
    """What the training snippets name: the dataset and the run's student (its Hub id where there is one)."""
    student = as_dict(meta.get("student"), "model")
    model = student.get("hub_id") or student.get("model") or "HuggingFaceTB/SmolLM2-135M-Instruct"
    return {"dataset": dataset, "model": str(model), "output_dir": f"{str(model).split('/')[-1]}-srt"}


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket of ``n`` rows."""
    edges = [(10**3, "1K"), (10**4, "10K"), (10**5, "100K"), (10**6, "1M"), (10**7, "10M"), (10**8, "100M"),
             (10**9, "1B"), (10**10, "10B"), (10**11, "100B"), (10**12, "1T")]
    if n < edges[0][0]:
        return "n<1K"
    for (_, lo), (hi_n, hi) in zip(edges, edges[1:]):
        if n < hi_n:
            return f"{lo}<n<{hi}"
    return "n>1T"


def teacher_use(run_dir: Path, meta: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """What the teacher's versions did in a recycle run, counted from rows.parquet: per stage how many
    reflections succeeded, how many failed and why (the full statuses, most frequent first); over all rows, for
    how many the final text is the teacher's; and of the training rows, how many prompts and completions the
    teacher wrote (run.json ``teacher_written``, :func:`srt_hf.figures.teacher_written`). None when the columns
    are missing."""
    import pyarrow.parquet as pq

    from ..figures import teacher_written
    from ..status import is_ok

    names = ("instruction_reflection_status", "instruction_choice", "response_reflection_status", "response_choice")
    path = RunPaths(Path(run_dir)).rows
    if not path.is_file() or not set(names) <= set(pq.read_schema(path).names):
        return None
    has_selected = SELECTED_COLUMN in pq.read_schema(path).names
    cols = pq.read_table(path, columns=[*names, *([SELECTED_COLUMN] if has_selected else [])]).to_pydict()
    n = len(cols[names[0]])

    def stage(status: list, choice: list) -> dict[str, Any]:
        failed: dict[str, int] = {}
        for s in status:
            if not is_ok(s):
                key = (s or "no status").replace("`", "'")
                failed[key] = failed.get(key, 0) + 1
        why = sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        total = sum(failed.values())
        return {"ok": sum(is_ok(s) for s in status), "used": sum(c == "reflected" for c in choice), "failed": total,
                "why": why, "other": total - sum(n for _, n in why)}

    instruction = stage(cols[names[0]], cols[names[1]])
    response = stage(cols[names[2]], cols[names[3]])
    pair = sum(a == "reflected" and b != "reflected" for a, b in zip(cols[names[1]], cols[names[3]]))
    written = (meta or {}).get("teacher_written") or (
        teacher_written(cols, [bool(v) for v in cols[SELECTED_COLUMN]]) if has_selected else None)
    return {"rows": n, "instruction": instruction, "response": response,
            "responses_used": pair + response["used"], "responses_from_pair": pair, "written": written}


def _is_hub_dataset(name: Any) -> bool:
    """An ``owner/name`` Hub id (not the built-in ``demo``, not a local path)."""
    return looks_like_hub_id(name) and "/" in name


def _settings(meta: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) rows of the teacher / student / scoring / selection settings beyond their name, internal
    wiring (:data:`srt_hf.runs.INTERNAL_SETTINGS`) left out."""
    rows = []
    for section, key in (("teacher", "model"), ("student", "model"), ("scoring", "preset"), ("selection", "rule")):
        for name, value in as_dict(meta.get(section), key).items():
            if name != key and value is not None and name not in INTERNAL_SETTINGS:
                rows.append((f"{section} `{name}`", value))
    return rows


def _describe_file(run_dir: Path, config: str, rel: str, text: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    meta = pq.read_metadata(run_dir / rel)
    columns = [{"name": f.name, "type": _type_name(f.type)} for f in meta.schema.to_arrow_schema()]
    return {"config": config, "path": rel, "rows": meta.num_rows, "description": text, "columns": columns}


def _type_name(t) -> str:
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = t.value_type
        if pa.types.is_struct(inner) and {inner.field(i).name for i in range(inner.num_fields)} >= {"role", "content"}:
            return "messages"
        return f"list[{_type_name(inner)}]"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    return str(t)


def _counts(meta: Mapping[str, Any], files: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict(meta.get("counts") or {})
    if not counts:
        by_config = {f["config"]: f["rows"] for f in files}
        for stage, config in (("input", "rows"), ("selected", "selected"), ("sft", "sft")):
            if config in by_config:
                counts[stage] = by_config[config]
    return counts


def _write_histograms(run_dir: Path, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One chart per score with figures (:func:`srt_hf.figures.score_figures`): all rows (``before``) against the
    kept rows (``after``), the rule's cutoffs on it, and the table of every population's figures."""
    from ..charts import clip_notes, histogram_bins
    from ..figures import SCORE_LABELS, cutoffs, histogram_specs, read_values, score_figures, shown

    specs = histogram_specs(meta)
    charts = []
    for score, figures in score_figures(run_dir, meta).items():
        spec = specs[score]
        before, after = read_values(run_dir, spec["before"]), read_values(run_dir, spec["after"])
        rel = f"{IMAGES}/{score}_histogram.png"
        (run_dir / IMAGES).mkdir(exist_ok=True)
        label = SCORE_LABELS.get(score, score)
        bins = histogram_bins(before, after)
        lines = cutoffs(meta, score)
        histogram_png(run_dir / rel, label, before, after, bins=bins, labels=(figures[0].title(), figures[-1].title()),
                      cutoffs=lines)
        charts.append({"score": label, "path": rel, "figures": [{**f.as_dict(), "shown": shown(f)} for f in figures],
                       "before": figures[0].title(), "after": figures[-1].title(), "cutoffs": lines,
                       "notes": clip_notes(bins, before, after)})
    return charts
