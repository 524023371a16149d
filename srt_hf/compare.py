"""Pairwise comparison of two models by a judge model, the papers' evaluation, resumable in a folder.

    result = compare("outputs/smollm2-srt", "default", "runs/compare", CompareConfig(judge="http://127.0.0.1:8000/v1"))
    print_summary(result)          # win / tie / loss table; result.as_dict() is summary.json

Both models answer every test prompt (a local model — Hub id, folder, LoRA adapter folder, ``default`` — or
an OpenAI-compatible URL), then the judge scores each pair twice, A first and B first, and the two
verdicts give the prompt's outcome (the rule is in :mod:`srt_hf.judge`). Models and judge all go through
the teacher machinery (:func:`srt_hf.teachers.load_teacher`): every reply is cached in ``OUT/cache.sqlite``
the moment it arrives, server faults are retried with backoff, and a rerun of the same command asks only
what is missing (``request_failed`` rows are asked again; other statuses are final).

    OUT/
      compare.parquet   one row per prompt: both answers, both verdicts (text, scores, result), outcome, status
      summary.json      the settings and the counts (overall and per category)
      comparison.png    bar chart of the outcomes
      cache.sqlite      every answer and verdict (not uploaded)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, judge, models
from .durable import atomic_path, write_text_atomic
from .errors import ConfigError, InputError
from .locks import LOCK_NAME, output_lock
from .status import EMPTY_INPUT, OK, REQUEST_FAILED, is_ok, kind_of, make, reason_of

BUILTIN = "builtin"
BUILTIN_PROMPTS = Path(__file__).parent / "data" / "compare_prompts.jsonl"
TABLE, SUMMARY, CHART, CACHE = "compare.parquet", "summary.json", "comparison.png", "cache.sqlite"
LOCK = LOCK_NAME  # held by the run (srt_hf.locks), removed when it ends
NOT_UPLOADED = (CACHE, CACHE + "-wal", CACHE + "-shm", LOCK)
_FILE_LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class CompareConfig:
    """How ``srt-hf compare`` asks the two models and the judge."""

    judge: str = field(
        default="default",
        metadata={"help": "Judge: an OpenAI-compatible URL (comma-separated for several) or a local model. 'default' is the "
                          "embedded SmolLM2-135M, which runs anywhere but is far too small to judge: a smoke test only."},
    )
    judge_model: str | None = field(default=None, metadata={"help": "Model name the judge server serves (vLLM, transformers serve)."})
    prompts: str = field(default=BUILTIN, metadata={"help": "Test prompts: 'builtin' (40 prompts: writing, reasoning, maths, coding, "
                                                            "knowledge) or a JSONL/JSON/Parquet/CSV file with a `prompt` (or "
                                                            "`instruction` + `input`) column and optional `id`, `category`."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    model_a_name: str | None = field(default=None, metadata={"help": "Served model name when MODEL_A is a URL."})
    model_b_name: str | None = field(default=None, metadata={"help": "Served model name when MODEL_B is a URL."})
    model_a_label: str | None = field(default=None, metadata={"help": "How MODEL_A is named in the table, chart and card (default: as given)."})
    model_b_label: str | None = field(default=None, metadata={"help": "How MODEL_B is named in the table, chart and card (default: as given)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Most tokens each model may write per answer."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the two models (0: greedy)."})
    judge_max_new_tokens: int = field(default=512, metadata={"help": "Most tokens the judge may write per verdict."})
    structured: str = field(
        default="auto",
        metadata={"help": "Verdicts as JSON under a schema: auto (where the judge server or local llguidance can enforce one, "
                          "else the plain layout), json (required), off (always the plain layout)."},
    )
    judge_template: str | None = field(
        default=None, metadata={"help": "Judge prompt: a .jinja file using {{ question }}, {{ answer_1 }}, {{ answer_2 }}. Default: built in."}
    )
    dtype: str = field(default="auto", metadata={"help": "dtype of local models (auto, float32, bfloat16, float16)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call of a local model."})
    max_concurrency: int = field(default=16, metadata={"help": "Most requests in flight at once per server."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds one server request may take before it is retried."})
    max_retries: int = field(default=5, metadata={"help": "Retries of a failed server request before it counts as failed."})
    backoff_base: float = field(default=0.5, metadata={"help": "Backoff before retry k is uniform in [0, backoff_base * 2**k] seconds."})
    seed: int = field(default=0, metadata={"help": "Sampling seed sent with each request."})

    def __post_init__(self) -> None:
        if self.structured not in ("auto", "json", "off"):
            raise ConfigError(f"`structured` = {self.structured!r}: use auto, json or off")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"`limit` = {self.limit} must be a positive number of prompts (or unset for all)")

    def generation(self, *, for_judge: bool):
        from .teachers import GenerationConfig

        return GenerationConfig(
            temperature=0.0 if for_judge else self.temperature,
            max_new_tokens=self.judge_max_new_tokens if for_judge else self.max_new_tokens,
            seed=self.seed, timeout=self.timeout, max_retries=self.max_retries, backoff_base=self.backoff_base,
            max_concurrency=self.max_concurrency, batch_size=self.batch_size,
        )


@dataclass
class ComparisonResult:
    """What a comparison found; ``as_dict()`` is ``summary.json``."""

    out: Path
    model_a: str
    model_b: str
    judge: str
    prompts: str
    counts: dict[str, int]
    by_category: dict[str, dict[str, int]]
    statuses: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    @property
    def judged(self) -> int:
        return sum(self.counts.get(k, 0) for k in judge.OUTCOMES)

    @property
    def winning_score(self) -> float | None:
        return judge.winning_score(self.counts)

    def rate(self, outcome: str) -> float | None:
        return self.counts.get(outcome, 0) / self.judged if self.judged else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_a": self.model_a, "model_b": self.model_b, "judge": self.judge, "prompts": self.prompts,
            "counts": self.counts, "judged": self.judged, "winning_score": self.winning_score,
            "rates": {k: self.rate(k) for k in judge.OUTCOMES}, "by_category": self.by_category,
            "statuses": self.statuses, "rule": RULE, "settings": self.settings, "files": {"table": TABLE, "chart": CHART},
            "srt_hf_version": __version__, "created": self.created,
        }

    @classmethod
    def load(cls, out: str | os.PathLike) -> ComparisonResult:
        """The result of an earlier comparison from its ``summary.json``."""
        path = Path(out) / SUMMARY
        if not path.is_file():
            raise InputError(f"{Path(out)} holds no {SUMMARY}", fix="run `srt-hf compare` with this --out first")
        data = json.loads(path.read_text())
        return cls(Path(out), data["model_a"], data["model_b"], data["judge"], data["prompts"], data["counts"],
                   data["by_category"], data["statuses"], data.get("settings", {}), data.get("created", ""))


RULE = ("each prompt is judged twice (A first, then B first), 1-10 per answer; win: A wins both orders or wins one "
        "and ties the other; tie: both tie or one each; loss: the reverse of win")


# ----------------------------------------------------------------------------------------------
# Prompts


def load_prompts(source: str = BUILTIN, limit: int | None = None) -> list[dict[str, str]]:
    """``[{"id", "category", "prompt"}]`` from the built-in set or a data file; every row must hold a prompt."""
    if source == BUILTIN:
        path, loader = BUILTIN_PROMPTS, "json"
    else:
        path = Path(source).expanduser()
        loader = _FILE_LOADERS.get(path.suffix.lower())
        if not path.is_file() or loader is None:
            raise ConfigError(f"`prompts` = {source!r}: pass 'builtin' or an existing {'/'.join(_FILE_LOADERS)} file")
    import datasets

    ds = datasets.load_dataset(loader, data_files=str(path), split="train")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    columns = set(ds.column_names)
    if not ({"prompt"} & columns or {"instruction"} & columns):
        raise InputError(f"{path} has no prompt column (it has {sorted(columns)})", column="prompt",
                         fix="name the column holding the test prompts `prompt` (or `instruction`, with an optional `input`)")
    rows = []
    for i, row in enumerate(ds):
        prompt = row.get("prompt") if "prompt" in columns else row.get("instruction")
        if isinstance(prompt, list):  # conversational: the last user message
            prompt = next((m.get("content") for m in reversed(prompt) if isinstance(m, dict) and m.get("role") == "user"), None)
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"{path}: the prompt is a {type(prompt).__name__}, not text", row=i,
                             column="prompt" if "prompt" in columns else "instruction", fix="store each prompt as a string")
        text = (prompt or "").strip()
        if row.get("input"):
            text = f"{text}\n\n{row['input']}".strip()
        rows.append({"id": str(row.get("id") if row.get("id") is not None else i), "category": str(row.get("category") or "all"),
                     "prompt": text})
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise InputError(f"{path}: the id {dup!r} appears more than once", column="id", fix="give every prompt its own id")
    return rows


# ----------------------------------------------------------------------------------------------
# The run


def compare(model_a: str, model_b: str, out: str | os.PathLike, config: CompareConfig | None = None) -> ComparisonResult:
    """Compare ``model_a`` with ``model_b`` on the test prompts; writes ``out`` (see the module docstring).

    One run at a time per ``out``: a second one stops at once, naming the first one's PID.
    """
    config = config or CompareConfig()
    out = Path(out)
    with output_lock(out, folder=True, command="srt-hf compare"):
        return _run(str(model_a), str(model_b), out, config)


def _run(model_a: str, model_b: str, out: Path, config: CompareConfig) -> ComparisonResult:
    prompts = load_prompts(config.prompts, config.limit)
    cache = out / CACHE
    asked = [r for r in prompts if r["prompt"]]
    answers = {}
    for side, name, served in (("a", model_a, config.model_a_name), ("b", model_b, config.model_b_name)):
        teacher = _teacher(name, served, config, cache, for_judge=False)
        replies = _ask(teacher, [[{"role": "user", "content": r["prompt"]}] for r in asked], f"answers of model {side.upper()}")
        answers[side] = dict(zip((r["id"] for r in asked), replies))
        teacher.cache.close()  # each teacher's own connections: once all are closed, no cache.sqlite-wal / -shm stays
        del teacher  # a local model leaves memory before the next one loads

    judge_teacher = _teacher(config.judge, config.judge_model, config, cache, for_judge=True)
    pairs = [r for r in asked if _usable(answers["a"][r["id"]]) and _usable(answers["b"][r["id"]])]
    replies, mode = _verdicts(judge_teacher, pairs, answers, config)
    judge_teacher.cache.close()
    verdicts = {r["id"]: (replies[2 * i], replies[2 * i + 1]) for i, r in enumerate(pairs)}

    records = [_record(r, answers, verdicts) for r in prompts]
    _write_table(records, out / TABLE)
    result = _summarise(records, out, model_a, model_b, config, judge_teacher)
    result.settings["verdict_format"] = mode
    write_text_atomic(out / SUMMARY, json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    write_chart(result)
    return result


def _usable(completion) -> bool:
    """A reply with text: ``ok``, or ``truncated`` (cut at the token limit, still judged or parsed as it is)."""
    return completion is not None and completion.text is not None


def _verdicts(judge_teacher, pairs: list[dict], answers: dict[str, dict], config: CompareConfig) -> tuple[list, str]:
    """Both verdicts of every pair (A first, B first, alternating), and the format used: ``json`` or ``text``."""
    from .teachers.base import StructuredOutputUnsupported

    def conversations(structured: bool) -> list[list[dict]]:
        out = []
        for r in pairs:
            a, b = answers["a"][r["id"]].text or "", answers["b"][r["id"]].text or ""
            out += [judge.judge_messages(r["prompt"], a, b, config.judge_template, structured=structured),
                    judge.judge_messages(r["prompt"], b, a, config.judge_template, structured=structured)]
        return out

    if config.structured != "off" and pairs:
        try:
            return _ask(judge_teacher, conversations(True), "verdicts", schema=judge.VERDICT_SCHEMA), "json"
        except StructuredOutputUnsupported as err:
            if config.structured == "json":
                raise ConfigError(f"the judge cannot answer in a JSON schema ({err}): pass --structured auto or off") from None
    return _ask(judge_teacher, conversations(False), "verdicts"), "text"


def _teacher(name: str, served: str | None, config: CompareConfig, cache: Path, *, for_judge: bool):
    from .teachers import LocalTeacher, load_teacher

    teacher = load_teacher(name, model=served, config=config.generation(for_judge=for_judge), cache_path=cache)
    if isinstance(teacher, LocalTeacher):
        teacher.dtype = config.dtype
    return teacher


def _ask(teacher, conversations: Sequence[list[dict]], desc: str, *, schema: dict | None = None) -> list:
    """Every conversation through the teacher's session (cache, retries, concurrency), with a progress bar.

    ``schema``: the replies must follow it (raises ``StructuredOutputUnsupported`` when the teacher cannot).
    """
    from tqdm.auto import tqdm

    from .teachers import run_sync
    from .teachers.base import gather_or_cancel

    async def run() -> list:
        bar = tqdm(total=len(conversations), desc=desc, unit="reply")

        async def one(messages):
            completion = await session.complete(messages, schema=schema)
            bar.update(1)
            return completion

        try:
            async with teacher.session() as session:
                return await gather_or_cancel(one(m) for m in conversations)
        finally:
            bar.close()

    return run_sync(run) if conversations else []


def _record(row: dict[str, str], answers: dict[str, dict], verdicts: dict[str, tuple]) -> dict[str, Any]:
    rid = row["id"]
    record: dict[str, Any] = {**row}
    for side in ("a", "b"):
        completion = answers[side].get(rid)
        record[f"answer_{side}"] = completion.text if completion is not None else None
        record[f"answer_{side}_status"] = completion.status if completion is not None else make(EMPTY_INPUT, "the prompt is empty")
    results = []
    for order, a_position, pair_index in (("ab", 1, 0), ("ba", 2, 1)):
        completion = verdicts[rid][pair_index] if rid in verdicts else None
        verdict = judge.parse_verdict(completion.text) if _usable(completion) else None
        status = None if completion is None else verdict.status if verdict is not None and (verdict.ok or completion.ok) else completion.status
        a_score = b_score = None
        if verdict is not None and verdict.ok:
            a_score, b_score = (verdict.score_1, verdict.score_2) if a_position == 1 else (verdict.score_2, verdict.score_1)
        result = judge.order_result(verdict, a_position) if verdict is not None else None
        record.update({f"verdict_{order}": completion.text if completion is not None else None, f"verdict_{order}_status": status,
                       f"verdict_{order}_score_a": a_score, f"verdict_{order}_score_b": b_score, f"verdict_{order}_result": result})
        results.append(result)
    record["outcome"] = judge.combine(*results)
    record["status"] = _row_status(record)
    return record


def _row_status(record: dict[str, Any]) -> str:
    """``ok`` when the prompt has an outcome, else the first reason it has none."""
    if record["outcome"] is not None:
        return OK
    if not record["prompt"]:
        return make(EMPTY_INPUT, "the prompt is empty")
    for side in ("a", "b"):
        status = record[f"answer_{side}_status"]
        if record[f"answer_{side}"] is None:
            return make(kind_of(status), f"model {side.upper()} gave no answer: {reason_of(status)}")
    for order, label in (("ab", "A first"), ("ba", "B first")):
        status = record[f"verdict_{order}_status"]
        if status is not None and not is_ok(status):
            return make(kind_of(status), f"judge ({label}): {reason_of(status)}")
    return make(REQUEST_FAILED, "no verdict")


def _write_table(records: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    floats = {k for k in (records[0] if records else {}) if k.endswith(("_score_a", "_score_b"))}
    columns = {k: pa.array([r[k] for r in records], type=pa.float64() if k in floats else pa.string()) for k in (records[0] if records else {})}
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


def _summarise(records, out: Path, model_a: str, model_b: str, config: CompareConfig, judge_teacher) -> ComparisonResult:
    from .status import tally

    def count(rows) -> dict[str, int]:
        counts = {k: sum(r["outcome"] == k for r in rows) for k in judge.OUTCOMES}
        counts["not_judged"] = sum(r["outcome"] is None for r in rows)
        return counts

    categories = sorted({r["category"] for r in records})
    settings = {k: v for k, v in asdict(config).items() if k not in ("judge", "prompts", "model_a_label", "model_b_label")}
    settings.update(model_a_source=model_a, model_b_source=model_b)
    settings["judge_identity"] = judge_teacher.identity()
    prompts = "builtin" if config.prompts == BUILTIN else config.prompts
    return ComparisonResult(
        out=out, model_a=config.model_a_label or models.display_name(model_a),
        model_b=config.model_b_label or models.display_name(model_b),
        judge=config.judge_model or models.display_name(config.judge),
        prompts=f"{prompts} ({len(records)} prompts)", counts=count(records),
        by_category={c: count([r for r in records if r["category"] == c]) for c in categories},
        statuses=tally(r["status"] for r in records), settings=settings,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


# ----------------------------------------------------------------------------------------------
# Reporting


def summary_rows(result: ComparisonResult) -> list[list[object]]:
    """Table rows: one per category, then all prompts: win, tie, loss, not judged, winning score."""
    rows = []
    for name, counts in [*result.by_category.items(), ("all", result.counts)]:
        ws = judge.winning_score(counts)
        rows.append([name, counts.get("win", 0), counts.get("tie", 0), counts.get("loss", 0), counts.get("not_judged", 0),
                     "-" if ws is None else f"{ws:.3f}"])
    return rows


HEADER = ["prompts", "win", "tie", "loss", "not judged", "winning score"]


def print_summary(result: ComparisonResult) -> None:
    from .summary import table

    print(f"\nsrt-hf compare: A = {result.model_a}  vs  B = {result.model_b}\n  judge: {result.judge}; prompts: {result.prompts}\n")
    print(table(HEADER, summary_rows(result)))
    ws = result.winning_score
    print(f"\nwin / tie / loss are A's: A won {result.counts.get('win', 0)} of {result.judged} judged prompts; winning score "
          f"(wins - losses) / judged + 1 = {'-' if ws is None else f'{ws:.3f}'} (1 = even)")
    problems = {k: n for k, n in result.statuses.items() if k != OK}
    if problems:
        print("not judged, by status: " + ", ".join(f"{k} {n}" for k, n in problems.items())
              + f" (details: the `status` column of {result.out / TABLE}; rerun the command to retry request_failed rows)")
    print(f"\nfolder: {result.out} ({TABLE}, {SUMMARY}, {CHART})")


def write_chart(result: ComparisonResult) -> Path:
    from .charts import outcome_bars_png

    rows = {name: (c.get("win", 0), c.get("tie", 0), c.get("loss", 0)) for name, c in [*result.by_category.items(), ("all", result.counts)]}
    path = result.out / CHART
    outcome_bars_png(path, f"A = {_short(result.model_a)} vs B = {_short(result.model_b)}", rows)
    return path


def _short(name: str, n: int = 28) -> str:
    name = name.rstrip("/").split("/")[-1] if "/" in name else name
    return name if len(name) <= n else name[: n - 1] + "…"
