"""IFD and reverse IFD as a ``Dataset.map`` transform (docs/ARCHITECTURE.md).

    ds = ds.map(IFDScorer(student="default", preset="reflection"), batched=True)

adds ``ifd``, ``rifd`` (when enabled), ``loss_A_cond``, ``loss_A_direct``, ``loss_Q_cond``,
``loss_Q_direct`` and ``score_status`` (``ok`` | ``skipped: <reason>`` | ``invalid: <reason>``).
No row is ever dropped. Scores that cannot be computed are NaN (``datasets`` would let an all-null
first batch turn a float column into a null column, so NaN keeps the schema pinned; the CLI writes them
as null). The model loads lazily in each process and never pickles: the fingerprint ``datasets``
caches on is the srt_hf version plus the configuration digest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import __version__, models
from ..errors import ConfigError
from ..formats import ColumnMapping, Example, RowProblem, detect_format, read_batch
from ..status import INVALID, OK, SKIPPED, make
from ..templates import Preset, get_preset
from .plan import Encoder, RowPlan, plan_rows

DTYPES = ("float32", "bfloat16", "float16")
#: Rows the CLI hands a GPU student at once (several resumable chunks): a GPU engine fed 64 rows a call spends
#: its time on launches and the host, not on the arithmetic.
GPU_ROWS_PER_CALL = 1024
SCORE_COLUMNS = ("ifd", "rifd", "loss_A_cond", "loss_A_direct", "loss_Q_cond", "loss_Q_direct")
STATUS_COLUMN = "score_status"
# Descriptions of the columns IFDScorer adds, for the dataset card.
COLUMN_DOCS = {
    "ifd": "Instruction-Following Difficulty: loss(response | instruction) / loss(response), in the preset's ratio",
    "rifd": "reverse IFD: loss(instruction | response) / loss(instruction), in the preset's ratio",
    "loss_A_cond": "mean token loss of the response given the prompt",
    "loss_A_direct": "mean token loss of the response alone",
    "loss_Q_cond": "mean token loss of the instruction given the reverse prompt",
    "loss_Q_direct": "mean token loss of the instruction alone",
    STATUS_COLUMN: " | ".join((OK, make(SKIPPED, "<reason>"), make(INVALID, "<reason>"))),
}


@dataclass
class ScoringConfig(ColumnMapping):
    """How the student scores a dataset."""

    student: str | None = field(default="default", metadata={"help": "Student model: 'default' (embedded SmolLM2-135M-Instruct), a Hub id, a local directory or a .gguf file."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the student (branch, tag or commit)."})
    preset: str = field(default="reflection", metadata={"help": "Scoring preset: cherry, reflection, superfiltering or chat."})
    template: str | None = field(default=None, metadata={"help": "Prompt template of the preset (reflection: vicuna or alpaca). Default: the preset's."})
    rifd: bool | None = field(default=None, metadata={"help": "Also compute reverse IFD. Default: on for reflection, off otherwise."})
    max_length: int | None = field(default=None, metadata={"help": "Token budget of the conditioned texts. Default: the preset's (cherry 512, reflection 2048, superfiltering 1024, chat: the model's)."})
    dtype: str = field(default="float32", metadata={"help": "Student dtype: float32 (reproduces the references), bfloat16 or float16 (faster on GPUs; see README for their measured tolerance)."})
    device: str | None = field(default=None, metadata={"help": "Device of the student. Default: cuda (cuda:rank under with_rank=True) when available, else cpu."})
    engine: str | None = field(default=None, metadata={"help": "Student engine: gpu, cpu or plain (the batch-size-1 forward). Default: gpu for CUDA students, else cpu, each checked against the plain forward first."})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "Padded tokens per forward pass. Default: 4096 on CPU; on GPU what the free memory holds."})
    share_prefix: bool = field(default=True, metadata={"help": "Run a prompt head shared by a whole batch once and reuse its KV cache."})
    packing: bool | None = field(default=None, metadata={"help": "Pack several texts per row without padding. Default: wherever it is exact for the student (checked once per model); --no-packing forces padded batches."})
    output_prefix: str = field(default="", metadata={"help": "Prefix of the output column names (e.g. 'reflected_')."})

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"Unknown student dtype {self.dtype!r}. Set `dtype` to one of {list(DTYPES)}.")

    def resolved_preset(self) -> Preset:
        return get_preset(self.preset, self.template)

    def rifd_enabled(self) -> bool:
        return self.resolved_preset().rifd_default if self.rifd is None else self.rifd

    def output_columns(self) -> list[str]:
        scores = SCORE_COLUMNS if self.rifd_enabled() else ("ifd", "loss_A_cond", "loss_A_direct")
        return [self.output_prefix + c for c in (*scores, STATUS_COLUMN)]

    def digest(self) -> str:
        """Identifies every setting that changes the output (not device or batch sizes)."""
        state = asdict(self)
        for key in ("device", "engine", "max_batch_tokens", "share_prefix", "packing"):
            state.pop(key)
        state["preset"], state["template"] = self.preset, self.resolved_preset().template
        state["rifd"], state["student_files"] = self.rifd_enabled(), models.local_model_stamp(self.student)
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


class IFDScorer(models.LazyModel):
    """``Dataset.map`` transform: IFD / reverse IFD of every row under a student model.

    ``engine_used``: which engine scored in this process (``{"engine": "cpu", "engine_variant": …}``, for run.json);
    None until a row is scored.
    """

    engine_used: dict[str, str] | None = None

    def __init__(self, config: ScoringConfig | None = None, **kwargs: Any):
        if config is not None and kwargs:
            raise ConfigError("Pass either a ScoringConfig or keyword settings to IFDScorer, not both.")
        self.config = config or ScoringConfig(**kwargs)
        self.preset = self.config.resolved_preset()

    # -- datasets integration -------------------------------------------------------------------
    def __reduce__(self):
        # Pickle (and hence the datasets fingerprint) = class + version + config; never the model.
        return (_rebuild_scorer, (__version__, asdict(self.config)))

    @property
    def features(self):
        """The pinned output features (all float64, status string)."""
        from datasets import Features, Value

        return Features({c: Value("string" if c.endswith(STATUS_COLUMN) else "float64") for c in self.config.output_columns()})

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, Any]:
        self._load(rank)
        fmt = detect_format(list(batch), self.config)
        examples = read_batch(batch, fmt)
        return self.score_examples(examples)

    def rows_per_call(self) -> int | None:
        """Rows to score in one call where the caller chunks the data (``chunks.map_in_chunks``): many on a GPU,
        None (one chunk) on a CPU, where a chunk already keeps the cores busy and bounds the memory."""
        device = self._device or self.config.device or models.prepare_device(None)
        return GPU_ROWS_PER_CALL if str(device).startswith("cuda") else None

    # -- model ----------------------------------------------------------------------------------
    def _model_settings(self):
        return self.config.student, self.config.revision, self.config.dtype, self.config.device

    def _load_pair(self, name, revision, dtype, device):
        return _load_student(name, revision, dtype, device)  # shared by the scorers of one process

    def max_length(self) -> int:
        """Tokens of a conditioned text: the setting, else the preset's, within the student's positions (an explicit
        setting past them is an error; a preset's default is lowered with a warning); for ``chat``, the model's."""
        wanted = self.config.max_length or self.preset.max_length
        if wanted:
            return models.within_positions(self.model, wanted, setting="`max_length` (--max-length)", explicit=bool(self.config.max_length))
        limit = models.position_limit(self.model) or 2048
        return min(limit, self.tokenizer.model_max_length or limit)

    # -- scoring --------------------------------------------------------------------------------
    def score_examples(self, examples: list[Example | RowProblem]) -> dict[str, Any]:
        """Score canonical examples; returns the output columns (numpy float64 arrays + statuses)."""
        from .base import Budget
        from .engines import pick_engine, run_engine  # torch loads only when a model is scored: `--help` stays fast

        encoder = Encoder(self.tokenizer, chat=self.preset.name == "chat")
        L, rifd = self.max_length(), self.config.rifd_enabled()
        plans = plan_rows(examples, encoder, self.preset, L, rifd)
        spans = [span for p in plans if isinstance(p, RowPlan) for span in p.spans()]
        engine = pick_engine(self.model, self.config.engine, self.config.share_prefix, self.config.packing)
        losses = iter(run_engine(engine, spans, Budget(max_batch_tokens=self.config.max_batch_tokens)))
        if spans and self.engine_used is None:
            self.engine_used = {"engine": engine.name, "engine_variant": engine.describe()}
        out = {c: np.full(len(examples), np.nan) for c in SCORE_COLUMNS}
        status = []
        for i, plan in enumerate(plans):
            if isinstance(plan, str):
                status.append(plan)
                continue
            values = {name: next(losses) for name in plan.names()}
            status.append(self._finish(plan, values, out, i))
        prefix = self.config.output_prefix
        columns = {prefix + c: out[c] for c in SCORE_COLUMNS if prefix + c in self.config.output_columns()}
        columns[prefix + STATUS_COLUMN] = status
        return columns

    def _finish(self, plan: RowPlan, values: dict[str, float], out: dict[str, np.ndarray], i: int) -> str:
        ratio = _ratio_fn(self.preset.ratio)
        for name, value in values.items():
            out[f"loss_{name}"][i] = value
        out["ifd"][i] = ratio(values["A_cond"], values["A_direct"])
        if "Q_cond" in values:
            out["rifd"][i] = ratio(values["Q_cond"], values["Q_direct"])
        if self.preset.skip_over_length:
            L = self.max_length()
            reason = None
            if L - plan.prompt_len <= 0:
                reason = f"prompt fills max_length ({L} tokens)"
            elif plan.A_direct.n_scored <= 0 or plan.A_cond.n_scored <= 0:
                reason = f"no response token within max_length ({L} tokens)"
            elif plan.prompt_len + plan.A_direct.n_scored > L:
                reason = f"prompt + response longer than max_length ({L} tokens)"
            if reason:
                out["ifd"][i] = np.nan
                return make(SKIPPED, reason)
        overflow = [name for name, v in values.items() if not math.isfinite(v) and getattr(plan, name).n_scored > 0]
        if overflow:  # tokens were scored, yet the loss is inf / NaN: the student's arithmetic overflowed
            out["ifd"][i] = out["rifd"][i] = np.nan  # no ratio from it (an infinite direct loss would give IFD 0)
            names = ", ".join("loss_" + m for m in overflow)
            return make(SKIPPED, f"{names} {'is' if len(overflow) == 1 else 'are'} not finite in {self.config.dtype} "
                        "(the student's arithmetic overflowed); score in bfloat16 or float32")
        missing = [name for name, v in values.items() if math.isnan(v)]
        if missing:
            why = (f"truncated to max_length {self.max_length()}" if set(missing) & plan.cut else
                   "the text is a single token, and a text's first token is never scored: nothing comes before it")
            return make(SKIPPED, f"no token to score for {', '.join('loss_' + m for m in missing)} ({why})")
        if not math.isfinite(out["ifd"][i]) or ("Q_cond" in values and not math.isfinite(out["rifd"][i])):
            return make(SKIPPED, "a direct loss is zero, the ratio is undefined")
        return OK


def _ratio_fn(kind: str):
    def loss_ratio(cond: float, direct: float) -> float:
        return cond / direct if direct else math.nan

    def perplexity_ratio(cond: float, direct: float) -> float:
        return math.exp(cond - direct) if math.isfinite(cond) and math.isfinite(direct) else math.nan

    return loss_ratio if kind == "loss" else perplexity_ratio


@functools.lru_cache(maxsize=2)
def _load_student(student: str | None, revision: str | None, dtype: str, device: str):
    """(tokenizer, model), shared by the scorers of one process that use the same student."""
    kwargs = {"revision": revision} if revision else {}
    return models.load_tokenizer(student, **kwargs), models.load_causal_lm(student, device=device, dtype=dtype, **kwargs)


def _rebuild_scorer(version: str, config: dict) -> IFDScorer:
    return IFDScorer(ScoringConfig(**config))
