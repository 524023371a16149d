"""Teacher reflection (docs/ARCHITECTURE.md): prompts and the two ``Dataset.map`` transforms (parsing: srt_hf.parsing).

    ds = ds.map(InstructionReflection(teacher), batched=True)   # + instruction_reflected, input_reflected,
                                                                 #   response_reflected, instruction_reflection_status
    ds = ds.map(ResponseReflection(teacher), batched=True)      # + response_reflected, response_reflection_status

Rows are read through :mod:`srt_hf.formats`, so any supported format and the ``ColumnMapping`` settings
work. Every row comes out; a row whose reflection failed keeps its original text in the reflected
columns (so they never hold None) and says why in its status:

* ``ok`` — the teacher's reflection was parsed;
* ``parse_failed: <why>`` — no usable section (missing marker, empty reply, reply echoes the prompt);
* ``placeholder: <section>`` — a section holds template filler ("your instruction", "N/A", "...");
* ``rejected: meta reply …`` — a new text talks about the text instead of being one (see :mod:`srt_hf.meta_replies`);
* ``request_failed: <reason>`` — the teacher could not be reached after its retries (see teachers.py);
* ``empty_input: <what>`` — nothing to reflect on (empty instruction);
* ``invalid: <reason>`` — the row could not be read (the reflected columns are "");
* ``pending: <where>`` — the request (or its retry) went into a batch file; the next run fills it in.

A parse failure, placeholder or meta reply is retried once as a new request (``seed + 1``, and
``retry_temperature`` when the teacher is greedy, since a greedy retry would repeat itself): the second reply
is used when it is usable, else the row keeps its original and its status (the second reply's) ends with
``(after retry)``. A meta reply to the JSON probe is not used: the row is asked in the marker layout.
Statuses are made and read through :mod:`srt_hf.status`.

``transform.counts`` counts the status kinds of the rows it has reflected in this process, and
``parse_retries`` (rows asked once more, whatever their first reply lacked); the teacher's own counters are in
``transform.teacher.stats``.

Both transforms pickle as (class, srt_hf version, config, prompt texts, teacher identity, teacher
settings), never a client or a model, so ``datasets`` fingerprints are stable and change with the prompt,
the teacher model or its generation settings.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, progress
from .errors import ConfigError
from .formats import ColumnMapping, Example, RowProblem, detect_format, read_batch
from .meta_replies import first_meta_reason
from .parsing import (
    BETTER_ANSWER,
    NEW_ANSWER,
    NEW_INSTRUCTION,
    ParsedReflection,
    echoes,
    is_placeholder,
    json_schema,
    parse_instruction_reflection,
    parse_json_reflection,
    parse_reflection,
    parse_response_reflection,
)
from .status import EMPTY_INPUT, INVALID, OK, REJECTED, is_ok, is_pending, kind_of, make
from .teachers import Teacher, TeacherSession, run_sync
from .teachers.base import StructuredOutputUnsupported, gather_or_cancel
from .teachers.structured import UNSUPPORTED

PROMPTS_DIR = Path(__file__).parent / "prompts"


# -- prompts ---------------------------------------------------------------------------------------
def builtin_template(name: str) -> str:
    """The text of a shipped template, e.g. ``instruction_reflection`` or ``response_reflection_input``."""
    path = PROMPTS_DIR / f"{name}.jinja"
    if not path.is_file():
        raise ConfigError(f"No built-in prompt {name!r}; shipped: {sorted(p.stem for p in PROMPTS_DIR.glob('*.jinja'))}.")
    return path.read_text(encoding="utf-8")


def load_template(value: str, setting: str) -> str:
    """Template text from a file path or the text itself (anything with ``{{`` or a newline)."""
    if "{{" in value or "\n" in value:
        return value
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise ConfigError(
        f"`{setting}` = {value!r} is neither an existing template file nor Jinja template text; "
        "pass a path to a .jinja file or the template itself (it sees {{ instruction }}, {{ input }} and {{ response }})."
    )


def _compile(text: str, setting: str):
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    try:
        return env.from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(f"`{setting}` is not a valid Jinja template: {err} (line {err.lineno}).") from None


def _skeleton(template, setting: str) -> str:
    import jinja2

    try:
        return template.render(instruction="", input="", response="")
    except jinja2.TemplateError as err:
        raise ConfigError(f"`{setting}` cannot be rendered: {err}; it may use instruction, input and response only.") from None


# -- transforms ------------------------------------------------------------------------------------
@dataclass
class ReflectionConfig(ColumnMapping):
    """How a reflection transform prompts the teacher and names its columns."""

    template: str | None = field(default=None, metadata={"help": "Prompt template (Jinja text or a .jinja file) for rows without input; it sees instruction, input and response. Default: the built-in one."})
    template_with_input: str | None = field(default=None, metadata={"help": "Prompt template for rows with an input. Default: `template` when given, else the built-in one."})
    output_prefix: str = field(default="", metadata={"help": "Prefix of the output column names."})
    structured: str = field(default="auto", metadata={"help": "auto: the teacher answers a JSON object (review first, then the new texts) where it can enforce a schema, else the marker layout; json: JSON only (stop if the teacher cannot); off: the marker layout."})
    json_template: str | None = field(default=None, metadata={"help": "Prompt template of the JSON layout for rows without input. Default: the built-in one."})
    json_template_with_input: str | None = field(default=None, metadata={"help": "Prompt template of the JSON layout for rows with input. Default: `json_template` when given, else the built-in one."})
    retry_parse_failures: bool = field(default=True, metadata={"help": "Ask once more when a reply cannot be parsed, holds a placeholder or is a meta reply (commentary about the text instead of a new one)."})
    retry_temperature: float = field(default=0.7, metadata={"help": "Temperature of that retry when the teacher is greedy (a greedy retry would repeat the same reply)."})
    keep_raw_reply: bool = field(default=False, metadata={"help": "Also output the teacher's last raw reply (column <kind>_reflection_raw)."})
    record_layout: bool = field(default=False, metadata={"help": "Also output how each row was asked (column <kind>_reflection_layout: 'json (<dialect>)', 'markers', or 'markers, reply to the JSON probe'; empty when the teacher was not asked)."})


#: How a row's teacher was asked (the values of ``<kind>_reflection_layout``).
LAYOUT_JSON, LAYOUT_MARKERS, LAYOUT_PROBE = "json", "markers", "markers, reply to the JSON probe"


@dataclass
class _RowOutcome:
    values: dict[str, str]
    status: str
    raw: str = ""
    retried: bool = False
    layout: str = ""  # LAYOUT_JSON (with the dialect), LAYOUT_MARKERS or LAYOUT_PROBE (empty: not asked)


class _Reflection:
    """Shared machinery of the two transforms: prompts, one async request per row, parse, retry."""

    kind = ""
    sections: tuple[str, ...] = ()
    value_columns: tuple[str, ...] = ()

    def __init__(self, teacher: Teacher, config: ReflectionConfig | None = None, **kwargs: Any):
        if config is not None and kwargs:
            raise ConfigError(f"Pass either a ReflectionConfig or keyword settings to {type(self).__name__}, not both.")
        if not isinstance(teacher, Teacher):
            raise ConfigError(f"{type(self).__name__} needs a teacher (EndpointTeacher or LocalTeacher), got {type(teacher).__name__}; see srt_hf.teachers.load_teacher.")
        self.teacher = teacher
        self.config = config or ReflectionConfig(**kwargs)
        if self.config.structured not in ("auto", "json", "off"):
            raise ConfigError(f"`structured` = {self.config.structured!r}: use auto, json or off (CLI: --structured).")
        self.templates = self._resolve_templates()
        self.json_templates = self._resolve_json_templates()
        self._compiled = self._compiled_json = None
        self._templates()  # a broken template fails here, not in the middle of a map
        self._templates(json=True)
        self.counts: collections.Counter[str] = collections.Counter()

    def _resolve_templates(self) -> tuple[str, str]:
        cfg = self.config
        return self._resolve_pair(cfg.template, cfg.template_with_input, "template", "")

    def _resolve_json_templates(self) -> tuple[str, str] | None:
        """The JSON-layout prompts, or None when the marker layout is the only one (off, or own marker prompts)."""
        cfg = self.config
        if cfg.structured == "off" or (cfg.structured == "auto" and cfg.template and not cfg.json_template):
            return None  # the user's own marker prompt wins over the built-in JSON one
        return self._resolve_pair(cfg.json_template, cfg.json_template_with_input, "json_template", "_json")

    def _resolve_pair(self, plain: str | None, with_input: str | None, setting: str, suffix: str) -> tuple[str, str]:
        """(prompt, prompt with input): the user's texts or files, else the built-in ones of this layout."""
        first = load_template(plain, setting) if plain else builtin_template(f"{self.kind}_reflection{suffix}")
        if with_input:
            return first, load_template(with_input, f"{setting}_with_input")
        return first, first if plain else builtin_template(f"{self.kind}_reflection_input{suffix}")

    # -- datasets integration -------------------------------------------------------------------
    def __reduce__(self):
        # The pickle, hence the datasets fingerprint: class, version, config, prompt texts, teacher identity
        # and the teacher's own (client-free) pickle.
        templates = (self.templates, self.json_templates)
        return (_rebuild, (type(self), __version__, asdict(self.config), templates, self.teacher.identity(), self.teacher))

    @property
    def status_column(self) -> str:
        return f"{self.config.output_prefix}{self.kind}_reflection_status"

    def output_columns(self) -> list[str]:
        columns = [self.config.output_prefix + c for c in self.value_columns] + [self.status_column]
        if self.config.keep_raw_reply:
            columns.append(f"{self.config.output_prefix}{self.kind}_reflection_raw")
        if self.config.record_layout:
            columns.append(self.layout_column)
        return columns

    @property
    def layout_column(self) -> str:
        return f"{self.config.output_prefix}{self.kind}_reflection_layout"

    @property
    def features(self):
        """The pinned output features: every column is a string (never null)."""
        from datasets import Features, Value

        return Features({c: Value("string") for c in self.output_columns()})

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, list[str]]:
        self.teacher.bind_rank(rank)
        fmt = detect_format(list(batch), self.config)
        return self.reflect_examples(read_batch(batch, fmt))

    # -- reflection -----------------------------------------------------------------------------
    def reflect_examples(self, examples: Sequence[Example | RowProblem]) -> dict[str, list[str]]:
        """Reflect canonical examples (sync); returns the output columns."""
        return run_sync(lambda: self.areflect_examples(examples))

    async def areflect_examples(self, examples: Sequence[Example | RowProblem]) -> dict[str, list[str]]:
        """Every row's request in flight together (within the teacher's bound); rows finish independently."""
        step = progress.steps(len(examples))  # a chunk's bar moves as each row's reply arrives

        async def reflect(session: TeacherSession, ex: Example | RowProblem) -> _RowOutcome:
            outcome = await self._reflect_row(session, ex)
            step(1)
            return outcome

        async with self.teacher.session() as session:
            outcomes = await gather_or_cancel(reflect(session, ex) for ex in examples)
        self.counts.update(kind_of(o.status) for o in outcomes)
        self.counts.update(f"layout_{o.layout.split(' (')[0]}" for o in outcomes if o.layout)
        self.counts["parse_retries"] += sum(o.retried for o in outcomes)
        prefix = self.config.output_prefix
        columns = {prefix + c: [o.values[c] for o in outcomes] for c in self.value_columns}
        columns[self.status_column] = [o.status for o in outcomes]
        if self.config.keep_raw_reply:
            columns[f"{prefix}{self.kind}_reflection_raw"] = [o.raw for o in outcomes]
        if self.config.record_layout:
            columns[self.layout_column] = [o.layout for o in outcomes]
        return columns

    def render(self, ex: Example, *, json: bool = False) -> list[dict[str, str]]:
        """The chat messages sent to the teacher for one example (in the JSON layout's prompt with ``json``)."""
        template = self._templates(json=json)[1 if ex.input.strip() else 0]
        return [{"role": "user", "content": template.render(instruction=ex.instruction, input=ex.input, response=ex.response).strip()}]

    def _templates(self, *, json: bool = False):
        """(template, template with input, and each rendered with empty fields: the skeletons for echo checks)."""
        if json and self.json_templates is None:
            return None
        if (self._compiled_json if json else self._compiled) is None:
            texts, names = (self.json_templates, ("json_template", "json_template_with_input")) if json else (self.templates, ("template", "template_with_input"))
            plain, with_input = _compile(texts[0], names[0]), _compile(texts[1], names[1])
            compiled = (plain, with_input, _skeleton(plain, names[0]), _skeleton(with_input, names[1]))
            if json:
                self._compiled_json = compiled
            else:
                self._compiled = compiled
        return self._compiled_json if json else self._compiled

    def _use_json(self) -> bool:
        """Whether to ask for the JSON layout: configured, and the teacher not known to lack structured output."""
        return self.json_templates is not None and getattr(self.teacher, "structured_dialect", None) != UNSUPPORTED

    def _parse(self, reply: str | None, skeleton: str, json: bool) -> ParsedReflection:
        if json:
            return parse_json_reflection(reply, self.kind, skeleton=skeleton)
        return parse_reflection(reply, self.sections, skeleton=skeleton)

    def _retry_overrides(self) -> dict[str, Any]:
        cfg = self.teacher.config
        return {"seed": cfg.seed + 1, "temperature": self.config.retry_temperature if cfg.temperature == 0 else cfg.temperature}

    async def _reflect_row(self, session: TeacherSession, ex: Example | RowProblem) -> _RowOutcome:
        if isinstance(ex, RowProblem):
            return _RowOutcome(dict.fromkeys(self.value_columns, ""), make(INVALID, ex))
        original = self._original(ex)
        if not ex.instruction.strip():
            return _RowOutcome(original, make(EMPTY_INPUT, "empty instruction"))
        if self._use_json():
            try:
                return await self._ask(session, ex, original, json=True)
            except StructuredOutputUnsupported as err:
                if self.config.structured == "json":
                    raise ConfigError(f"--structured json: {err}; use --structured auto (falls back to the marker layout) or off.") from None
                reused = self._from_probe(err.replies, ex, original)
                if reused is not None:
                    return reused
        return await self._ask(session, ex, original, json=False)

    def _from_probe(self, replies: list[str], ex: Example, original: dict[str, str]) -> _RowOutcome | None:
        """A reply the server gave to a JSON probe while ignoring its format, when it reads in the marker layout
        (or as the JSON object asked for) and is no meta reply: used as this row's reflection instead of asking
        again. None: the row is asked in the marker layout (where a meta reply gets its retry)."""
        skeleton = self._templates(json=True)[3 if ex.input.strip() else 2]
        for reply in replies:
            for json in (False, True):
                outcome = self._read(reply, skeleton, json, original, reply, False, LAYOUT_PROBE)
                if is_ok(outcome.status):
                    return outcome
        return None

    def _read(self, reply: str | None, skeleton: str, json: bool, original: dict[str, str], raw: str, retried: bool,
              layout: str) -> _RowOutcome:
        """A reply's row: its new texts, or the original and why not (parse failure, placeholder, meta reply)."""
        parsed = self._parse(reply, skeleton, json)
        if not parsed.ok:
            return _RowOutcome(original, parsed.status, raw, retried, layout)
        why = first_meta_reason(parsed.sections, self.sections)
        if why:
            return _RowOutcome(original, make(REJECTED, f"meta reply: {why}"), raw, retried, layout)
        return _RowOutcome(self._reflected(parsed.sections), OK, raw, retried, layout)

    async def _ask(self, session: TeacherSession, ex: Example, original: dict[str, str], *, json: bool) -> _RowOutcome:
        """One request in one layout, read; a reply with no usable text (parse failure, placeholder, meta reply)
        is asked once more (``retry_parse_failures``)."""
        messages = self.render(ex, json=json)
        skeleton = self._templates(json=json)[3 if ex.input.strip() else 2]
        schema = json_schema(self.kind, review_max_length=self.teacher.review_max_length) if json else None
        completion = await session.complete(messages, schema=schema)
        dialect = self.teacher.transport().get("structured") if json else None  # known once the first reply is in
        layout = (f"{LAYOUT_JSON} ({dialect})" if dialect else LAYOUT_JSON) if json else LAYOUT_MARKERS
        if not completion.ok:
            return _RowOutcome(original, completion.status, completion.text or "", layout=layout)
        first = self._read(completion.text, skeleton, json, original, completion.text or "", False, layout)
        if is_ok(first.status) or not self.config.retry_parse_failures:
            return first
        retry = await session.complete(messages, self._retry_overrides(), schema=schema)
        if is_pending(retry.status):  # the retry went into a batch file: the row waits for it
            return _RowOutcome(original, retry.status, first.raw, True, layout)
        if not retry.ok:
            return _RowOutcome(original, f"{first.status} (retry {retry.status})", first.raw, True, layout)
        second = self._read(retry.text, skeleton, json, original, retry.text or "", True, layout)
        if not is_ok(second.status):
            second.status = f"{second.status} (after retry)"
        return second

    def _original(self, ex: Example) -> dict[str, str]:
        raise NotImplementedError

    def _reflected(self, sections: dict[str, str]) -> dict[str, str]:
        raise NotImplementedError


class InstructionReflection(_Reflection):
    """``Dataset.map(batched=True)`` transform: the teacher rewrites the instruction and its answer.

    Adds ``instruction_reflected``, ``input_reflected`` ("" on success: the new instruction carries what
    it needs), ``response_reflected`` and ``instruction_reflection_status``.
    """

    kind = "instruction"
    sections = (NEW_INSTRUCTION, NEW_ANSWER)
    value_columns = ("instruction_reflected", "input_reflected", "response_reflected")

    def _original(self, ex: Example) -> dict[str, str]:
        return {"instruction_reflected": ex.instruction, "input_reflected": ex.input, "response_reflected": ex.response}

    def _reflected(self, sections: dict[str, str]) -> dict[str, str]:
        return {"instruction_reflected": sections[NEW_INSTRUCTION], "input_reflected": "", "response_reflected": sections[NEW_ANSWER]}


class ResponseReflection(_Reflection):
    """``Dataset.map(batched=True)`` transform: the teacher writes a better answer to the same instruction.

    Adds ``response_reflected`` and ``response_reflection_status``.
    """

    kind = "response"
    sections = (BETTER_ANSWER,)
    value_columns = ("response_reflected",)

    def _original(self, ex: Example) -> dict[str, str]:
        return {"response_reflected": ex.response}

    def _reflected(self, sections: dict[str, str]) -> dict[str, str]:
        return {"response_reflected": sections[BETTER_ANSWER]}


def _rebuild(cls: type, version: str, config: dict, templates: tuple, identity: dict, teacher: Teacher) -> _Reflection:
    obj = cls.__new__(cls)
    obj.teacher, obj.config = teacher, ReflectionConfig(**config)
    obj.templates = tuple(templates[0])
    obj.json_templates = tuple(templates[1]) if templates[1] is not None else None
    obj._compiled = obj._compiled_json = None
    obj.counts = collections.Counter()
    return obj


__all__ = [
    "BETTER_ANSWER", "NEW_ANSWER", "NEW_INSTRUCTION", "InstructionReflection", "ParsedReflection", "ReflectionConfig",
    "ResponseReflection", "builtin_template", "echoes", "is_placeholder", "parse_instruction_reflection",
    "parse_reflection", "parse_response_reflection",
]
