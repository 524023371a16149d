"""One self-contained HTML page per run folder: what the teacher changed, what the student kept, and why.

    from srt_hf.report import write_report
    write_report("runs/demo-srt")          # -> runs/demo-srt/report.html (also: `srt-hf report runs/demo-srt`)

The page shows the run's provenance (source, teacher, student, preset, prompts, settings, the command, what the
teacher wrote into the training data, its tokens), the counts per stage as a funnel, the IFD / r-IFD histograms of
all rows against the kept rows with each population's figures and the rule's cutoffs (:mod:`srt_hf.figures`,
:mod:`srt_hf.charts`: the same as the card's), and a row browser: every row's original,
reflected and final texts side by side with word-level differences, its statuses, the choice at each stage
with its reason, and its scores; filters by status kind, choice, selection and reason, a text search, and a
stable link per row (``report.html#row-12``). ``recycle`` and ``select`` write it at the end of each run.

Everything is inline (CSS, JavaScript, data): it opens offline from disk or as a static Space. The data
is one JSON object whose texts sit in a de-duplicated string table (a final text is a reference to the
original or the reflected one, not a copy); above :data:`INLINE_LIMIT` bytes it is gzip-compressed and
base64-encoded, and the page unpacks it with the browser's ``DecompressionStream``. Texts are only ever put
into the page as text nodes, so a row holding ``<script>`` shows as text.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import InputError
from .runs import INTERNAL_SETTINGS, ROWS, RunPaths, read_meta
from .status import kind_of

REPORT = "report.html"
ASSETS = Path(__file__).resolve().parent / "assets"
INLINE_LIMIT = 1_000_000  # bytes of JSON embedded as it is; larger payloads are gzip + base64
SELECTED, REASON = "selected", "selection_reason"

# The recycle view: (stage label, status column, choice column, reason column).
RECYCLE_STAGES = (
    ("read", "read_status", None, None),
    ("student scores the original", "original_score_status", None, None),
    ("instruction reflection", "instruction_reflection_status", "instruction_choice", "instruction_choice_reason"),
    ("response reflection", "response_reflection_status", "response_choice", "response_choice_reason"),
    ("final scores", "final_score_status", None, None),
)
# Rows of the side-by-side grid: label, original column, teacher versions (column, caption, column it
# replaces, status column, choice column), final column.
RECYCLE_PANELS = (
    ("instruction", "original_instruction",
     (("instruction_reflected", "new instruction (stage 1)", "original_instruction", "instruction_reflection_status",
       "instruction_choice"),), "final_instruction"),
    ("input", "original_input",
     (("input_reflected", "input of the new instruction (stage 1)", "original_input", "instruction_reflection_status",
       "instruction_choice"),), "final_input"),
    ("response", "original_response",
     (("response_reflected", "answer to the new instruction (stage 1)", "original_response",
       "instruction_reflection_status", "instruction_choice"),
      ("better_response", "better answer (stage 3)", "chosen_response", "response_reflection_status",
       "response_choice")), "final_response"),
)
RECYCLE_SCORES = (
    ("IFD", ("original_ifd", "reflected_pair_ifd", "better_response_ifd", "final_ifd")),
    ("r-IFD", ("original_rifd", "reflected_pair_rifd", "better_response_rifd", "final_rifd")),
)
RECYCLE_SCORE_HEADS = ("original", "teacher's pair", "better answer", "final")
# Numeric columns a plain (select) run may carry, in the order they are shown.
PLAIN_SCORES = (
    ("IFD", "ifd"), ("r-IFD", "rifd"), ("IFD (final)", "final_ifd"), ("r-IFD (final)", "final_rifd"),
    ("pick order", "selection_order"), ("squared distance to the pool", "kcenter_sq_distance"),
    ("loss", "loss"), ("w", "w"), ("d", "d"),
    ("loss(response | prompt)", "loss_A_cond"), ("loss(response)", "loss_A_direct"),
)



def write_report(run_dir: str | Path, *, out: str | Path | None = None, compress: bool | None = None) -> Path:
    """Write ``RUN/report.html`` (or ``out``) from run.json and rows.parquet; returns its path.

    ``compress``: gzip + base64 the data (default: when its JSON is larger than :data:`INLINE_LIMIT`).
    """
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    if not paths.rows.is_file():
        raise InputError(f"{run_dir} has no {ROWS}, so it is not a finished srt-hf run folder",
                         fix="pass the --out folder of `srt-hf recycle` or `srt-hf select`")
    meta = read_meta(run_dir) if paths.meta.is_file() else {}
    payload = build_payload(run_dir, meta)
    page = render(payload, compress=compress)
    target = Path(out) if out is not None else paths.root / REPORT
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target


def build_payload(run_dir: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The report's data: provenance from run.json, and every row as columns of string-table indices / numbers."""
    import pyarrow.parquet as pq

    table = pq.read_table(RunPaths(run_dir).rows)
    names = set(table.column_names)
    strings = _Strings()
    columns: dict[str, list] = {}
    recycle = {"original_instruction", "final_instruction", "instruction_choice"} <= names

    def text(name: str) -> bool:
        if name in names and name not in columns:
            columns[name] = [strings.add(v) for v in table.column(name).to_pylist()]
        return name in names

    def number(name: str) -> bool:
        if name in names and name not in columns:
            columns[name] = [_number(v) for v in table.column(name).to_pylist()]
        return name in names

    view: dict[str, Any] = {}
    if recycle:
        view["kind"] = "recycle"
        view["stages"] = [
            {"label": label, "status": status if text(status) else None,
             "choice": choice if choice and text(choice) else None,
             "reason": reason if reason and text(reason) else None}
            for label, status, choice, reason in RECYCLE_STAGES if status in names
        ]
        view["panels"] = []
        for label, original, teacher, final in RECYCLE_PANELS:
            versions = [
                {"text": col, "caption": caption, "base": base, "status": status, "choice": choice}
                for col, caption, base, status, choice in teacher
                if text(col) and text(base) and text(status) and text(choice)
            ]
            if text(original) and text(final):
                view["panels"].append({"label": label, "original": original, "teacher": versions, "final": final})
        score_rows = [[label, [c if number(c) else None for c in cols]] for label, cols in RECYCLE_SCORES]
        view["scores"] = {"heads": list(RECYCLE_SCORE_HEADS), "rows": score_rows}
        view["sort"] = "final_ifd" if "final_ifd" in names else None
    else:
        view["kind"] = "plain"
        view["panels"] = _plain_texts(table, strings, columns)
        view["stages"] = [{"label": c.removesuffix("_status").replace("_", " ") or c, "status": c, "choice": None,
                           "reason": None} for c in table.column_names if c.endswith("status") and text(c)]
        view["scores"] = {"heads": ["value"], "rows": [[label, [c]] for label, c in PLAIN_SCORES if number(c)]}
        view["sort"] = next((c for c in ("ifd", "final_ifd") if c in columns), None)
    view["order"] = "selection_order" if number("selection_order") else None
    if SELECTED in names:
        columns[SELECTED] = [1 if v else 0 for v in table.column(SELECTED).to_pylist()]
        view["selected"] = SELECTED
    view["reason"] = REASON if text(REASON) else None
    id_column = next((c for c in ("id", "row_id") if c in names), None)
    if id_column:
        columns["_id"] = [strings.add(None if v is None else str(v)) for v in table.column(id_column).to_pylist()]
    view["id"] = "_id" if id_column else None
    view["id_label"] = id_column
    charts = _chart_values(run_dir, meta, columns, names, table)
    # each status's kind, read by srt_hf.status (the page never parses a status itself)
    kinds = {str(k): kind_of(strings.values[k]) for c in columns if c.endswith("status") for k in set(columns[c])
             if k is not None}
    return {
        "format": 1,
        "title": _title(run_dir, meta),
        "n": table.num_rows,
        "meta": _meta_for_page(meta),
        "view": view,
        "charts": charts,
        "strings": strings.values,
        "columns": columns,
        "kinds": kinds,
    }


def render(payload: Mapping[str, Any], *, compress: bool | None = None) -> str:
    """The HTML page around ``payload``: the template with its CSS, script and data inlined."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if compress is None:
        compress = len(data.encode()) > INLINE_LIMIT
    if compress:
        encoding = "gzip+base64"
        body = base64.b64encode(gzip.compress(data.encode(), compresslevel=9, mtime=0)).decode("ascii")
    else:
        encoding = "json"  # '<', '>' and '&' escaped so no text can close the script element or open a comment
        body = data.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    template = (ASSETS / "report.html").read_text(encoding="utf-8")
    parts = {
        "__TITLE__": html.escape(str(payload.get("title") or "srt-hf report")),
        "__STYLE__": (ASSETS / "report.css").read_text(encoding="utf-8"),
        "__SCRIPT__": (ASSETS / "report.js").read_text(encoding="utf-8"),
        "__ENCODING__": encoding,
        "__DATA__": body,
    }
    # one pass over the template only, so nothing inside the data or the script is ever replaced
    return re.sub(r"__(?:TITLE|STYLE|SCRIPT|ENCODING|DATA)__", lambda m: parts[m.group(0)], template)


class _Strings:
    """A string table: each distinct text stored once, rows refer to it by index (None stays None)."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, value: Any) -> int | None:
        if value is None:
            return None
        value = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        index = self._index.get(value)
        if index is None:
            index = self._index[value] = len(self.values)
            self.values.append(value)
        return index


def _number(value: Any) -> float | int | None:
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, int):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return float(f"{value:.6g}") if math.isfinite(value) else None


def _plain_texts(table, strings: _Strings, columns: dict[str, list]) -> list[dict[str, Any]]:
    """Instruction / input / response of a run whose rows are in any supported format (select runs)."""
    from .formats import ColumnMapping, RowProblem, detect_format, read_batch

    try:
        fmt = detect_format(table.column_names, ColumnMapping())
    except InputError:  # a table of its own shape (e.g. DS weight's question / response): its first text columns
        texts = [f.name for f in table.schema if _is_text(f.type) and not f.name.endswith(("status", "reason"))][:4]
        for name in texts:
            columns[name] = [strings.add(v) for v in table.column(name).to_pylist()]
        return [{"label": name.replace("_", " "), "text": name} for name in texts]
    out = {"_instruction": [], "_input": [], "_response": []}
    for batch in table.to_batches(max_chunksize=4096):
        for ex in read_batch(batch.to_pydict(), fmt):
            bad = isinstance(ex, RowProblem)
            out["_instruction"].append(strings.add(str(ex) if bad else ex.instruction))
            out["_input"].append(strings.add("" if bad else ex.input))
            out["_response"].append(strings.add("" if bad else ex.response))
    columns.update(out)
    return [{"label": "instruction", "text": "_instruction"}, {"label": "input", "text": "_input"},
            {"label": "response", "text": "_response"}]


def _is_text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _chart_values(run_dir: Path, meta: Mapping[str, Any], columns: dict[str, list], names: set[str],
                  table) -> list[dict[str, Any]]:
    """The before → after histograms, as the card draws them (:mod:`srt_hf.figures`, :mod:`srt_hf.charts`): which
    columns they read (run.json ``histograms``; 'after' is the kept rows of its column), each population's label
    and figures, the bins (one clipping rule), the notes on clipped values and the rule's cutoffs."""
    from .charts import clip_notes, clipped, histogram_bins
    from .figures import SCORE_LABELS, cutoffs, histogram_specs, read_values, score_figures, shown

    specs = histogram_specs(meta)
    charts = []
    for score, figures in score_figures(run_dir, meta).items():
        spec = specs[score]
        before, after = (str(spec.get(k) or "").rsplit(":", 1)[-1] for k in ("before", "after"))
        if before not in names or after not in names:
            continue
        for col in (before, after):
            if col not in columns:
                columns[col] = [_number(v) for v in table.column(col).to_pylist()]
        values = read_values(run_dir, spec["before"]), read_values(run_dir, spec["after"])
        bins = histogram_bins(*values)
        charts.append({"label": SCORE_LABELS.get(score, score), "before": before, "after": after,
                       "before_label": figures[0].title(), "after_label": figures[-1].title(),
                       "figures": [{"label": f.label, "source": f.source, **shown(f)} for f in figures],
                       "bins": bins.as_dict(), "clipped": clipped(bins, *values), "notes": clip_notes(bins, *values),
                       "cutoffs": cutoffs(meta, score)})
    return charts


def _title(run_dir: Path, meta: Mapping[str, Any]) -> str:
    hub = meta.get("hub") if isinstance(meta.get("hub"), Mapping) else {}
    return str(meta.get("pretty_name") or hub.get("repo_id") or Path(run_dir).resolve().name)


def _meta_for_page(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of run.json the page shows, with the settings split into what they describe."""
    keep = ("kind", "source", "teacher", "student", "scoring", "selection", "counts", "reasons", "teacher_requests",
            "teacher_usage", "teacher_written", "command", "prompts", "srt_hf_version", "created", "derived_from", "hub",
            "space", "smoke_test", "layouts_sent")
    page = {k: meta[k] for k in keep if k in meta}
    page["settings"] = settings_rows(meta)
    return page


def settings_rows(meta: Mapping[str, Any]) -> list[list[Any]]:
    """(section, name, value) rows of the teacher / student / scoring / selection / run settings, internal
    wiring (:data:`INTERNAL_SETTINGS`) left out."""
    rows: list[list[Any]] = []
    for section, key in (("teacher", "model"), ("student", "model"), ("scoring", "preset"), ("selection", "rule"),
                         ("config", "")):
        value = meta.get(section)
        if not isinstance(value, Mapping):
            continue
        for name, v in value.items():
            if name == key or name in INTERNAL_SETTINGS or v is None or isinstance(v, (dict, list)):
                continue
            if section == "config" and _shown_elsewhere(name):
                continue
            rows.append([section, name, v])
    return rows


def _shown_elsewhere(name: str) -> bool:
    """Config fields the page shows elsewhere: the student and preset in the provenance, the prompts verbatim."""
    return name in ("student", "preset") or name.endswith(("template", "template_with_input"))
