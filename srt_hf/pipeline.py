"""Selective Reflection-Tuning, stages 1–5 of docs/ARCHITECTURE.md (Definitions), resumable in a run folder.

    result = recycle(ds, teacher=EndpointTeacher(url, model=...), student="default", out="runs/alpaca-srt")

0. every row is read into the canonical view (``original_instruction`` / ``original_input`` /
   ``original_response``) and scored by the student (``original_ifd``, ``original_rifd``);
1. the teacher reflects on the instruction and writes a new pair (``instruction_reflected``,
   ``input_reflected``, ``response_reflected``, ``instruction_reflection_status``);
2. the student scores the new pair (``reflected_pair_ifd``…) and keeps it iff its IFD is higher
   (``instruction_choice`` + ``instruction_choice_reason``): the kept pair is ``chosen_instruction``,
   ``chosen_input``, ``chosen_response``;
3. the teacher writes a better answer to the kept instruction (``better_response``,
   ``response_reflection_status``);
4. the student scores it (``better_response_ifd``…) and keeps it iff its reverse IFD is lower
   (``response_choice`` + ``response_choice_reason``): the result is ``final_instruction``,
   ``final_input``, ``final_response`` with ``final_ifd`` / ``final_rifd``;
5. rows with ``final_ifd < 1`` and ``final_rifd < 1`` are selected (optionally only the top share by
   IFD): ``selected`` + ``selection_reason``.

Each stage runs in chunks written to ``RUN/work/<stage>/``, and teacher replies go to the SQLite cache
``RUN/cache.sqlite`` the moment they arrive: a run killed at any point and started again repeats no
finished request and loses no row. A rerun also asks the teacher again for the rows whose request failed
(``request_failed``; ``retry_failed=False`` keeps them): their chunks are redone, the answered rows come from
the cache, and the later stages redo the chunks whose input changed. The run holds an exclusive lock on its
folder, so a second run into it stops at once. Every input row comes out, with the choice made at each
stage and why.
A comparison needs both scores: a side the student could not score never wins over one it could.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__, models
from .chunks import column_kinds, map_in_chunks, part_digest, row_digests
from .errors import ConfigError
from .formats import ColumnMapping, RowProblem, detect_format, read_batch
from .locks import output_lock
from .progress import quiet_foreign_bars
from .reflection import (
    LAYOUT_JSON,
    LAYOUT_MARKERS,
    LAYOUT_PROBE,
    InstructionReflection,
    ReflectionConfig,
    ResponseReflection,
)
from .runs import RunPaths
from .scoring import IFDScorer, ScoringConfig
from .status import INVALID, OK, PENDING, REJECTED, RETRYABLE, SKIPPED, is_ok, kind_of, make
from .teachers import GenerationConfig, LocalTeacher, Teacher, load_teacher
from .teachers.batch_teacher import BatchConfig, BatchMode
from .teachers.probe_store import restore_probe, save_probe

logger = logging.getLogger(__name__)

ORIGINAL = ("original_instruction", "original_input", "original_response")
REFLECTED_PAIR = ("instruction_reflected", "input_reflected", "response_reflected")
CHOSEN = ("chosen_instruction", "chosen_input", "chosen_response")
FINAL = ("final_instruction", "final_input", "final_response")
#: run.json counts of stages 2 and 4 (over all rows): how often the student kept the teacher's version.
NEW_PAIRS_KEPT, BETTER_ANSWERS_KEPT = "teacher's new pair kept (stage 2)", "teacher's better answer kept (stage 4)"

COLUMN_DOCS = {
    "row_id": "position of the row in the input dataset",
    "read_status": "ok, or invalid: <why the row could not be read>",
    "original_instruction": "the instruction as read from the input (multi-turn context flattened)",
    "original_input": "the optional input as read from the input",
    "original_response": "the response as read from the input",
    "original_ifd": "student IFD of the original pair",
    "original_rifd": "student reverse IFD of the original pair",
    "instruction_reflected": "the teacher's new instruction (the original when the reflection failed)",
    "input_reflected": "input of the new instruction (empty: the new instruction is self-contained)",
    "response_reflected": "the teacher's answer to its new instruction",
    "instruction_reflection_status": "ok | parse_failed: … | placeholder: … | rejected: meta reply … | request_failed: … | empty_input: … | invalid: …",
    "instruction_reflection_layout": "how the teacher was asked: json (<dialect>) | markers | markers, reply to the JSON probe (empty: not asked)",
    "reflected_pair_ifd": "student IFD of the teacher's new pair",
    "reflected_pair_rifd": "student reverse IFD of the teacher's new pair",
    "instruction_choice": "original | reflected: which pair stage 2 kept",
    "instruction_choice_reason": "why (the IFD comparison, or why there was none)",
    "chosen_instruction": "instruction kept by stage 2",
    "chosen_input": "input kept by stage 2",
    "chosen_response": "response that came with the kept instruction",
    "better_response": "the teacher's better answer to the kept instruction (the kept one when the reflection failed)",
    "response_reflection_status": "status of the response reflection (as for instruction_reflection_status)",
    "response_reflection_layout": "how the teacher was asked for the better answer (as for instruction_reflection_layout)",
    "better_response_ifd": "student IFD of (kept instruction, better answer)",
    "better_response_rifd": "student reverse IFD of (kept instruction, better answer)",
    "response_choice": "original | reflected: which response stage 4 kept",
    "response_choice_reason": "why (the reverse-IFD comparison, or why there was none)",
    "final_instruction": "the instruction after both stages",
    "final_input": "the input after both stages",
    "final_response": "the response after both stages",
    "final_ifd": "student IFD of the final pair",
    "final_rifd": "student reverse IFD of the final pair",
    "selected": "whether the final filter kept the row (final_ifd < 1 and final_rifd < 1, then the top share)",
    "selection_reason": "why the row was kept or dropped",
}


@dataclass
class RecycleConfig(ColumnMapping):
    """Settings of the selective recycling pipeline (the teacher's own settings live in GenerationConfig)."""

    student: str | None = field(default="default", metadata={"help": "Student model: 'default' (embedded SmolLM2-135M-Instruct), a Hub id, a local directory or a .gguf file."})
    preset: str = field(default="reflection", metadata={"help": "Scoring preset of the student (reflection reproduces the paper)."})
    template: str | None = field(default=None, metadata={"help": "Prompt template of the preset (reflection: vicuna or alpaca)."})
    max_length: int | None = field(default=None, metadata={"help": "Token budget of the student's scoring. Default: the preset's."})
    dtype: str = field(default="float32", metadata={"help": "Student dtype."})
    device: str | None = field(default=None, metadata={"help": "Student device. Default: cuda when available, else cpu."})
    engine: str | None = field(default=None, metadata={"help": ScoringConfig.__dataclass_fields__["engine"].metadata["help"]})
    top_share: float | None = field(default=None, metadata={"help": "After the ifd<1 and rifd<1 filter, keep only this share with the highest IFD (0-1)."})
    chunk_rows: int = field(default=64, metadata={"help": "Rows per resumable chunk of each stage (a GPU student scores up to 1024 rows, whole chunks, in one call)."})
    instruction_template: str | None = field(default=None, metadata={"help": "Instruction-reflection prompt (Jinja text or .jinja file), rows without input."})
    instruction_template_with_input: str | None = field(default=None, metadata={"help": "Instruction-reflection prompt for rows with input."})
    response_template: str | None = field(default=None, metadata={"help": "Response-reflection prompt (Jinja text or .jinja file), rows without input."})
    response_template_with_input: str | None = field(default=None, metadata={"help": "Response-reflection prompt for rows with input."})
    retry_parse_failures: bool = field(default=True, metadata={"help": "Ask the teacher once more when a reply cannot be parsed or is a meta reply (commentary about the text instead of a new one)."})
    structured: str = field(default="auto", metadata={"help": "Teacher reply layout. auto: a JSON object (review first, then the new texts) where the teacher can enforce a schema, else the [marker] layout; json: JSON only; off: markers."})
    instruction_json_template: str | None = field(default=None, metadata={"help": "Instruction-reflection prompt of the JSON layout (Jinja text or .jinja file)."})
    instruction_json_template_with_input: str | None = field(default=None, metadata={"help": "Instruction-reflection prompt of the JSON layout for rows with input."})
    response_json_template: str | None = field(default=None, metadata={"help": "Response-reflection prompt of the JSON layout (Jinja text or .jinja file)."})
    response_json_template_with_input: str | None = field(default=None, metadata={"help": "Response-reflection prompt of the JSON layout for rows with input."})
    retry_failed: bool = field(default=True, metadata={"help": "On a rerun, ask the teacher again for the rows whose request failed (request_failed); --no-retry-failed keeps them as they are."})

    def __post_init__(self) -> None:
        if self.top_share is not None and not 0 <= self.top_share <= 1:
            raise ConfigError(f"`top_share` = {self.top_share} must be between 0 and 1 (CLI: --top-share).")
        if self.chunk_rows < 1:
            raise ConfigError(f"`chunk_rows` = {self.chunk_rows}: a chunk holds at least one row (CLI: --chunk-rows 64).")


@dataclass
class RecycleResult:
    """What ``recycle`` produced: the run folder, every row, the selected rows, the SFT data, the metadata."""

    run_dir: Path
    rows: Any
    selected: Any
    sft: Any
    meta: dict[str, Any]


def recycle(
    ds,
    teacher: Teacher | str | None = "default",
    student: str | None = None,
    out: str | Path | None = None,
    *,
    config: RecycleConfig | None = None,
    generation: GenerationConfig | None = None,
    teacher_model: str | None = None,
    source: str | None = None,
    batch: BatchConfig | None = None,
) -> RecycleResult:
    """Run stages 1–5 on ``ds`` and write the run folder ``out`` (rerun the same call to resume).

    ``teacher``: a Teacher, or a name for :func:`srt_hf.teachers.load_teacher` (URLs, 'default', a model).
    ``student`` overrides ``config.student``. Without ``out`` the folder is ``runs/recycle-<digest>``.
    ``batch`` (``BatchConfig(teacher_batch=DIR)``): the teacher's missing requests go into batch files in DIR;
    a teacher stage that leaves any raises :class:`~srt_hf.errors.BatchPending` (rerun with the results to go on).
    """
    config = copy.deepcopy(config) if config is not None else RecycleConfig()
    if student is not None:
        config.student = student
    if not isinstance(teacher, Teacher):
        teacher = load_teacher(teacher, model=teacher_model, config=generation)
    run_dir = Path(out) if out is not None else Path("runs") / f"recycle-{_digest(config, teacher, ds._fingerprint)[:10]}"
    if not len(ds):
        raise ConfigError("the dataset has no rows: nothing to recycle (check the input, --split and --limit)")
    paths = RunPaths(run_dir)
    teacher = _with_cache(teacher, paths.cache)  # opens no file yet
    # Closing the run's cache connections (every thread's) when it ends folds the WAL into cache.sqlite: no -wal / -shm.
    with output_lock(run_dir, folder=True, command="srt-hf recycle"), _closing(teacher.cache):
        probed = teacher  # the endpoint teacher whose structured-output probe is kept in the run folder
        if restore_probe(probed, run_dir):
            logger.info("teacher: structured output as probed before (%s)", paths.root / "teacher_probe.json")
        settings = _digest(config, teacher, "")
        # The run (batch folder, cache tags) is this input's content under these settings; the chunk keys leave the
        # input out: each chunk records the digest of its own rows, so an edited input redoes the chunks it changed.
        run_id = hashlib.sha256(f"{__version__}:{ds._fingerprint}:{settings}".encode()).hexdigest()
        key = f"{__version__}:{settings}"
        mode = None
        if batch is not None and batch.enabled:
            mode = BatchMode(batch, teacher, run_dir=run_dir, run_id=run_id)
            mode.start()
            teacher = mode.teacher
        stages = _Stages(config, teacher)
        with quiet_foreign_bars():  # the stage bars say what happens; datasets' own bars would repeat it
            current = ds.map(stages.canonical, batched=True, with_indices=True)
            inputs = row_digests(current, config.chunk_rows)
            try:
                for name, fn, label, status_column in stages.plan():
                    key = hashlib.sha256(f"{key}:{name}".encode()).hexdigest()
                    teacher.cache_tags = {"run": run_id, "stage": name}  # each reply cached says where it belongs
                    redo = _redo_teacher_rows(status_column, config.retry_failed) if status_column else None
                    parts = map_in_chunks(current, fn, paths.work / name, key=key, chunk_rows=config.chunk_rows, desc=label,
                                          inputs=inputs, redo=redo,  # a stage without a teacher status column is the student's
                                          rows_per_call=None if status_column else stages.rows_per_call())
                    if mode is not None and status_column:
                        mode.after_stage(name)
                    inputs = [part_digest(p) for p in parts]
                    current = _from_parts(parts, paths.work / "datasets")
            finally:
                teacher.cache_tags = {}  # a teacher passed in with its own cache leaves this run untagged
                save_probe(probed, run_dir)
            usage = _stage_usage(teacher, run_id, [name for name, _, _, column in stages.plan() if column])
            return _finish(current, run_dir, config, teacher, stages, source, usage)


def _redo_teacher_rows(status_column: str, retry_failed: bool) -> Callable[[Path], str | None]:
    """``redo`` of a teacher stage: a finished chunk is redone when rows wait for a batch reply (``pending``, always)
    or could not reach the teacher (``request_failed``, unless ``retry_failed`` is off)."""

    def redo(part: Path) -> str | None:
        kinds = column_kinds(part, status_column)
        waiting = kinds.count(PENDING)
        failed = sum(kind in RETRYABLE for kind in kinds) if retry_failed else 0
        why = [f"{n} row{'s' if n != 1 else ''} {what}" for n, what in
               ((failed, f"{RETRYABLE[0]}, asked again"), (waiting, f"{PENDING}, read from the batch results")) if n]
        return "; ".join(why) or None

    return redo


def _stage_usage(teacher: Teacher, run_id: str, stages: list[str]) -> dict[str, Any]:
    """Per teacher stage: replies, prompt and completion tokens, by where they came from (batch or online)."""
    found = teacher.cache.usage(run_id) if teacher.cache is not None else {}
    empty = {"replies": 0, "prompt_tokens": 0, "completion_tokens": 0}
    return {stage: {source: dict(found.get(stage, {}).get(source, empty)) for source in ("batch", "online")} for stage in stages}


class _Stages:
    """The map functions of the stages, sharing one student scorer and one teacher."""

    def __init__(self, config: RecycleConfig, teacher: Teacher):
        self.config, self.teacher = config, teacher
        self.fmt = None
        score = dict(student=config.student, preset=config.preset, template=config.template, max_length=config.max_length,
                     dtype=config.dtype, device=config.device, engine=config.engine, rifd=True)
        self.scorers = {
            prefix: IFDScorer(ScoringConfig(**score, output_prefix=prefix, **_mapping(cols)))
            for prefix, cols in (("original_", ORIGINAL), ("reflected_pair_", REFLECTED_PAIR), ("better_", (*CHOSEN[:2], "better_response")))
        }
        common = dict(retry_parse_failures=config.retry_parse_failures, structured=config.structured, record_layout=True)
        self.instruction = InstructionReflection(teacher, ReflectionConfig(
            **_mapping(ORIGINAL), template=config.instruction_template, template_with_input=config.instruction_template_with_input,
            json_template=config.instruction_json_template, json_template_with_input=config.instruction_json_template_with_input, **common))
        self.response = ResponseReflection(teacher, ReflectionConfig(
            **_mapping(CHOSEN), template=config.response_template, template_with_input=config.response_template_with_input,
            json_template=config.response_json_template, json_template_with_input=config.response_json_template_with_input, **common))

    def rows_per_call(self) -> int | None:
        """Rows a student stage scores in one call (several chunks on a GPU; the teacher's stages go chunk by chunk)."""
        return self.scorers["original_"].rows_per_call()

    def plan(self) -> list[tuple[str, Callable, str, str | None]]:
        """(work folder, map function, progress label, the teacher status column whose failures a rerun retries)."""
        return [
            ("1-score-original", self.score_original, "1/5 student scores the originals", None),
            ("2-reflect-instruction", self.reflect_instruction, "2/5 teacher reflects on instructions", "instruction_reflection_status"),
            ("3-choose-instruction", self.choose_instruction, "3/5 student chooses instructions", None),
            ("4-reflect-response", self.reflect_response, "4/5 teacher reflects on responses", "response_reflection_status"),
            ("5-choose-response", self.choose_response, "5/5 student chooses responses", None),
        ]

    # stage 0
    def canonical(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        if self.fmt is None:
            self.fmt = detect_format(list(batch), self.config)
        out: dict[str, list] = {"row_id": list(indices), "read_status": [], **{c: [] for c in ORIGINAL}}
        for ex in read_batch(batch, self.fmt):
            bad = isinstance(ex, RowProblem)
            out["read_status"].append(make(INVALID, ex) if bad else OK)
            for col, value in zip(ORIGINAL, ("", "", "") if bad else (ex.instruction, ex.input, ex.response)):
                out[col].append(value)
        return out

    # stages 1-4
    def score_original(self, batch: dict[str, list]) -> dict[str, Any]:
        out = self.scorers["original_"](batch)
        _carry_read_problems(batch, out, "original_score_status")
        return out

    def reflect_instruction(self, batch: dict[str, list]) -> dict[str, Any]:
        return self.instruction(batch)

    def choose_instruction(self, batch: dict[str, list]) -> dict[str, Any]:
        ok = [is_ok(s) for s in batch["instruction_reflection_status"]]
        scores = _score_where(self.scorers["reflected_pair_"], batch, ok, "reflection did not succeed")
        out: dict[str, Any] = {**scores, "instruction_choice": [], "instruction_choice_reason": [], **{c: [] for c in CHOSEN}}
        for i in range(len(ok)):
            new, old = scores["reflected_pair_ifd"][i], batch["original_ifd"][i]
            if not ok[i]:
                choice, reason = "original", f"instruction reflection {batch['instruction_reflection_status'][i]}"
            else:
                choice, reason = _compare(new, old, "IFD", higher_wins=True)
            source = REFLECTED_PAIR if choice == "reflected" else ORIGINAL
            out["instruction_choice"].append(choice)
            out["instruction_choice_reason"].append(reason)
            for col, src in zip(CHOSEN, source):
                out[col].append(batch[src][i])
        return out

    def reflect_response(self, batch: dict[str, list]) -> dict[str, Any]:
        out = self.response(batch)
        return {"better_response": out["response_reflected"], "response_reflection_status": out["response_reflection_status"],
                "response_reflection_layout": out["response_reflection_layout"]}

    def choose_response(self, batch: dict[str, list]) -> dict[str, Any]:
        ok = [is_ok(s) for s in batch["response_reflection_status"]]
        scores = _score_where(self.scorers["better_"], batch, ok, "reflection did not succeed")
        renamed = {k.replace("better_", "better_response_", 1): v for k, v in scores.items()}
        out: dict[str, Any] = {**renamed, "response_choice": [], "response_choice_reason": [], **{c: [] for c in FINAL},
                               "final_ifd": [], "final_rifd": [], "final_score_status": []}
        for i in range(len(ok)):
            reflected_first = batch["instruction_choice"][i] == "reflected"
            kept = "reflected_pair_" if reflected_first else "original_"
            old_ifd, old_rifd, old_status = batch[f"{kept}ifd"][i], batch[f"{kept}rifd"][i], batch[f"{kept}score_status"][i]
            if not ok[i]:
                choice, reason = "original", f"response reflection {batch['response_reflection_status'][i]}"
            else:
                choice, reason = _compare(renamed["better_response_rifd"][i], old_rifd, "r-IFD", higher_wins=False)
            out["response_choice"].append(choice)
            out["response_choice_reason"].append(reason)
            out["final_instruction"].append(batch["chosen_instruction"][i])
            out["final_input"].append(batch["chosen_input"][i])
            if choice == "reflected":
                out["final_response"].append(batch["better_response"][i])
                out["final_ifd"].append(renamed["better_response_ifd"][i])
                out["final_rifd"].append(renamed["better_response_rifd"][i])
                out["final_score_status"].append(renamed["better_response_score_status"][i])
            else:
                out["final_response"].append(batch["chosen_response"][i])
                out["final_ifd"].append(old_ifd)
                out["final_rifd"].append(old_rifd)
                out["final_score_status"].append(old_status)
        out["final_ifd"] = np.asarray(out["final_ifd"], dtype=np.float64)
        out["final_rifd"] = np.asarray(out["final_rifd"], dtype=np.float64)
        return out


def _mapping(cols: tuple[str, str, str]) -> dict[str, str]:
    return {"instruction_column": cols[0], "input_column": cols[1], "response_column": cols[2]}


def _carry_read_problems(batch: dict[str, list], out: dict[str, Any], status_column: str) -> None:
    """A row that could not be read keeps its real reason, not 'empty instruction'."""
    for i, status in enumerate(batch["read_status"]):
        if not is_ok(status):
            out[status_column][i] = status


def _score_where(scorer: IFDScorer, batch: dict[str, list], mask: list[bool], why_not: str) -> dict[str, Any]:
    """Score only the rows in ``mask``; the others get NaN and ``skipped: <why_not>``."""
    columns = scorer.config.output_columns()
    out: dict[str, Any] = {c: ([make(SKIPPED, why_not)] * len(mask) if c.endswith("score_status") else np.full(len(mask), np.nan)) for c in columns}
    idx = [i for i, m in enumerate(mask) if m]
    if idx:
        scored = scorer({k: [v[i] for i in idx] for k, v in batch.items()})
        for c in columns:
            for j, i in enumerate(idx):
                out[c][i] = scored[c][j]
    return out


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _compare(new: float | None, old: float | None, name: str, *, higher_wins: bool) -> tuple[str, str]:
    """The student's decision between the original and the reflected version, with its reason."""
    if not _finite(new):
        return "original", f"the reflected version could not be scored ({name} missing)"
    if not _finite(old):
        return "reflected", f"the original could not be scored; the reflected {name} is {new:.4f}"
    wins = new > old if higher_wins else new < old
    sign = (">" if wins else "<=") if higher_wins else ("<" if wins else ">=")
    return ("reflected" if wins else "original"), f"reflected {name} {new:.4f} {sign} original {old:.4f}"


def _with_cache(teacher: Teacher, path: Path) -> Teacher:
    """The teacher with the run folder's response cache, unless it already has one of its own."""
    if teacher.cache_path:
        return teacher
    from .teachers import ResponseCache

    teacher = copy.copy(teacher)
    teacher.cache_path, teacher.cache = str(path), ResponseCache(path)
    return teacher


def _closing(cache) -> contextlib.AbstractContextManager:
    """Close ``cache`` (all its connections) on leaving the block, if there is one."""
    return contextlib.closing(cache) if cache is not None else contextlib.nullcontext()


#: Settings that say how to resume or which exact engine computes, not what to compute: changing them keeps the
#: finished work.
_RESUME_SETTINGS = ("retry_failed", "engine")


def _digest(config: RecycleConfig, teacher: Teacher, extra: str) -> str:
    settings = {k: v for k, v in asdict(config).items() if k not in _RESUME_SETTINGS}
    payload = json.dumps({"config": settings, "teacher": teacher.identity(), "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _from_parts(parts: list[Path], cache_dir: Path):
    from datasets import Dataset

    return Dataset.from_parquet([str(p) for p in parts], cache_dir=str(cache_dir))


def _finish(rows, run_dir: Path, config: RecycleConfig, teacher: Teacher, stages: _Stages, source: str | None,
            usage: dict[str, Any] | None = None) -> RecycleResult:
    from .report import write_report
    from .selection import with_decisions, write_selection_run

    selected, reasons, rule = final_filter(list(rows["final_ifd"]), list(rows["final_rifd"]), list(rows["final_score_status"]), config.top_share)
    table = with_decisions(rows, selected, reasons)
    inst = [kind_of(s) for s in rows["instruction_reflection_status"]]
    resp = [kind_of(s) for s in rows["response_reflection_status"]]
    counts = {
        "input": len(rows),
        "read ok": sum(is_ok(s) for s in rows["read_status"]),
        "instruction reflections ok": inst.count(OK),
        NEW_PAIRS_KEPT: sum(c == "reflected" for c in rows["instruction_choice"]),
        "response reflections ok": resp.count(OK),
        BETTER_ANSWERS_KEPT: sum(c == "reflected" for c in rows["response_choice"]),
        "meta replies rejected": inst.count(REJECTED) + resp.count(REJECTED),
    }
    layouts = _layouts(config, teacher, rows)
    meta = {
        "kind": "recycle",
        "source": {"name": source},
        "teacher": {"model": teacher.scope().get("model"), **teacher.identity().get("generation", {}),
                    **(teacher.placement() if isinstance(teacher, LocalTeacher) else {})},  # a local one: dtype, device
        **({"smoke_test": SMOKE_TEST} if _embedded_teacher(teacher) else {}),
        "reflection_layout": layouts,
        "layouts_sent": _layouts_line(layouts),
        "student": {"model": models.display_name(config.student), "hub_id": models.hub_id(config.student),
                    "dtype": config.dtype, **_engine_used(stages, run_dir)},  # the dtype can change decisions
        "scoring": {"preset": config.preset, "template": stages.scorers["original_"].preset.template},
        "prompts": _prompts_sent(stages, layouts),
        "selection": rule,
        "methods": ["selective-reflection-tuning", "reflection-tuning"],
        "counts": counts,
        "teacher_requests": teacher.stats.as_dict(),
        "teacher_usage": usage or {},
        "status_kinds": {"instruction_reflection": _tally(inst), "response_reflection": _tally(resp)},
        "columns": COLUMN_DOCS,
        # the populations of each score's figures (srt_hf.figures) and the rule's cutoffs on its chart
        "histograms": {
            score: {"before": f"rows.parquet:original_{score}", "also": [f"rows.parquet:final_{score}"],
                    "after": f"selected.parquet:final_{score}", "cutoffs": cutoffs}
            for score, cutoffs in _cutoffs(rule).items()
        },
        "config": asdict(config),
    }
    meta = write_selection_run(run_dir, table, meta, mapping=ColumnMapping(**_mapping(FINAL)))
    write_report(run_dir)  # RUN/report.html: every row, what the teacher changed and why it was kept
    paths = RunPaths(run_dir)
    return RecycleResult(run_dir, _read(paths.rows, paths), _read(paths.selected, paths), _read(paths.sft, paths), meta)


def _engine_used(stages: _Stages, run_dir: Path) -> dict[str, str]:
    """Which student engine scored: as this process's scorers saw it, else (every chunk resumed) as run.json said."""
    for scorer in stages.scorers.values():
        if scorer.engine_used is not None:
            return dict(scorer.engine_used)
    try:
        before = json.loads(RunPaths(run_dir).meta.read_text()).get("student", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {key: before[key] for key in ("engine", "engine_variant") if isinstance(before.get(key), str)}


def _read(path: Path, paths: RunPaths):
    import pyarrow.parquet as pq
    from datasets import Dataset

    if pq.ParquetFile(path).metadata.num_rows == 0:  # datasets cannot read an empty Parquet file
        return Dataset(pq.read_table(path))
    return Dataset.from_parquet(str(path), cache_dir=str(paths.work / "datasets"))


def _cutoffs(rule: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The final filter's cutoffs per score, as the charts draw them: 1 for both scores, and with a top share
    the lowest IFD it kept (the rows above it were kept)."""
    cutoffs = {"ifd": [{"value": 1.0, "label": "rule: IFD < 1"}], "rifd": [{"value": 1.0, "label": "rule: r-IFD < 1"}]}
    lowest = rule.get("lowest_kept_ifd")
    if rule.get("top_share") is not None and lowest is not None:
        cutoffs["ifd"].append({"value": lowest, "label": f"top {rule['top_share']:g} by IFD: lowest kept {lowest:.3f}"})
    return cutoffs


SMOKE_TEST = ("The teacher is the embedded SmolLM2-135M model: this run is a smoke test of the pipeline, not a data "
              "improvement. Its reflections are not expected to be better than the originals; use a strong teacher "
              "(--teacher URL or a large model) to improve data.")


def _embedded_teacher(teacher: Teacher) -> bool:
    return teacher.scope().get("model") == models.display_name(None)


def _layouts(config: RecycleConfig, teacher: Teacher, rows) -> dict[str, Any]:
    """How the teacher was asked, counted from rows.parquet (so a resumed run counts every row): the mode, the
    structured-output mechanism, and per stage the rows per layout sent ("json (json_object)", "markers", …)."""
    counts = {}
    for stage in ("instruction_reflection", "response_reflection"):
        column = f"{stage}_layout"
        values = [v for v in (rows[column] if column in rows.column_names else []) if v]
        counts[stage] = {v: values.count(v) for v in sorted(set(values))}
    return {"mode": config.structured, "structured_output": teacher.transport().get("structured"), "rows": counts}


def _layouts_line(layouts: dict[str, Any]) -> str:
    """One line for the card and the report: per stage, the layouts sent and their rows."""
    parts = []
    for stage, sent in layouts["rows"].items():
        if sent:
            shown = ", ".join(f"{value.replace(LAYOUT_JSON, 'JSON layout', 1) if value.startswith(LAYOUT_JSON) else value} "
                              f"{n}" for value, n in sent.items())
            parts.append(f"{stage.replace('_', ' ')}: {shown}")
    return "; ".join(parts) or f"not asked (--structured {layouts['mode']})"


def _prompts_sent(stages: _Stages, layouts: dict[str, Any]) -> dict[str, str]:
    """The prompt templates the teacher actually received, per stage and layout, named with the layout and the
    number of rows it was sent for (a stage that mixed layouts lists each one)."""
    prompts: dict[str, str] = {}
    for stage, transform in (("instruction reflection", stages.instruction), ("response reflection", stages.response)):
        sent = layouts["rows"].get(stage.replace(" ", "_"), {})
        by_layout: dict[str, int] = {}
        for value, n in sent.items():
            key = LAYOUT_MARKERS if value == LAYOUT_MARKERS else value if value.startswith(LAYOUT_JSON) else LAYOUT_PROBE
            by_layout[key] = by_layout.get(key, 0) + n
        if not by_layout:  # the teacher was asked nothing in this stage: the prompts it would have received
            by_layout = {LAYOUT_JSON if transform.json_templates is not None else LAYOUT_MARKERS: 0}
        for layout, n in by_layout.items():
            json_prompt = layout != LAYOUT_MARKERS
            templates = transform.json_templates if json_prompt else transform.templates
            label = f"{layout.replace(LAYOUT_JSON, 'JSON layout', 1) if layout.startswith(LAYOUT_JSON) else layout}"
            label += f", {n} row{'s' if n != 1 else ''}" if n else ", not sent"
            prompts[f"{stage} [{label}]"] = templates[0]
            prompts[f"{stage} (with input) [{label}]"] = templates[1]
    return prompts


def _tally(kinds: list[str]) -> dict[str, int]:
    return {k: kinds.count(k) for k in sorted(set(kinds))}


def final_filter(ifd: list, rifd: list, status: list, top_share: float | None) -> tuple[list[bool], list[str], dict[str, Any]]:
    """Stage 5: keep ``ifd < 1`` and ``rifd < 1`` (the paper's sRecycled data), then the top share by IFD."""
    from .selection import top_ifd_decisions

    selected, reasons = [False] * len(ifd), [""] * len(ifd)
    eligible = []
    for i, (a, b, s) in enumerate(zip(ifd, rifd, status)):
        if not (_finite(a) and _finite(b)):
            reasons[i] = f"dropped: not scored ({s})"
        elif a >= 1:
            reasons[i] = f"dropped: final ifd >= 1 ({a:.4f})"
        elif b >= 1:
            reasons[i] = f"dropped: final rifd >= 1 ({b:.4f})"
        else:
            eligible.append(i)
    rule: dict[str, Any] = {"rule": "ifd < 1 and rifd < 1", "eligible": len(eligible)}
    if top_share is None:
        for i in eligible:
            selected[i], reasons[i] = True, "kept: final ifd < 1 and rifd < 1"
    else:
        top = top_ifd_decisions([ifd[i] for i in eligible], rate=top_share, max_ifd=None)
        for j, i in enumerate(eligible):
            selected[i], reasons[i] = bool(top.selected[j]), top.reasons[j]
        rule.update({"rule": f"ifd < 1 and rifd < 1, then the top {top_share:g} by IFD", "top_share": top_share, "kept": top.info["kept"],
                     "lowest_kept_ifd": top.info["lowest_kept_ifd"]})
    return selected, reasons, rule
