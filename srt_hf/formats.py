"""Column mapping: one canonical view (instruction, input, response, chat context) of any common format.

Supported, detected from the column names (or named explicitly in :class:`ColumnMapping`):

* alpaca — ``instruction`` / ``input`` (optional; ``context`` also accepted) / ``output`` (or ``response``);
* prompt/completion — ``prompt`` / ``completion``, as strings or conversational message lists;
* messages — ``messages``: a list of ``{"role", "content"}``;
* ShareGPT — ``conversations``: a list of ``{"from", "value"}``.

Without an explicit mapping, a dataset whose columns fit several formats (rows of mixed formats, e.g. some
``messages`` rows and some alpaca rows) is read per row: a row whose columns of the chosen format are empty
is read in the other format its columns hold. Numbers in text columns become their written form (``4``).

    fmt = detect_format(ds.column_names)
    print(describe(fmt), read_report(ds, fmt))     # which format, and how many rows each format read

Multi-turn conversations: the *last assistant turn* is the response, everything before it is the
context. Presets with a text template (cherry, reflection, superfiltering) see the context as one
instruction: the user message alone for a single turn (after the system message, if any), else a
transcript ``"User: …\\n\\nAssistant: …\\n\\nUser: …"``. The ``chat`` preset renders the context with the
student's chat template.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import InputError

# Descriptions of the canonical and SFT columns, for the dataset card.
COLUMN_DOCS = {
    "prompt": "conversational prompt: a list of {role, content} messages ending with the user turn",
    "completion": "conversational completion: the assistant message to learn",
    "id": "row id from the source dataset (or its position)",
    "instruction": "instruction text",
    "input": "optional input / context of the instruction",
    "output": "response text",
    "response": "response text",
}

_ROLE_ALIASES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system",
}


@dataclass
class ColumnMapping:
    """Which columns hold the data. Leave all unset to detect the format from the column names."""

    instruction_column: str | None = field(default=None, metadata={"help": "Column of the instruction (alpaca-style data)."})
    input_column: str | None = field(default=None, metadata={"help": "Column of the optional input / context."})
    response_column: str | None = field(default=None, metadata={"help": "Column of the response (alpaca-style data)."})
    messages_column: str | None = field(
        default=None, metadata={"help": "Column of a chat conversation (role/content or ShareGPT from/value)."}
    )


@dataclass
class Example:
    """One row in canonical form. ``context`` is the chat history before ``response``."""

    instruction: str
    input: str
    response: str
    context: list[dict[str, str]]


@dataclass(frozen=True)
class _Format:
    kind: str  # "alpaca" | "prompt_completion" | "messages"
    instruction: str | None = None
    input: str | None = None
    response: str | None = None
    messages: str | None = None
    fallbacks: tuple[_Format, ...] = ()  # other formats the columns hold, for rows where this one's are empty

    @property
    def required(self) -> tuple[str, ...]:
        """The columns a row must have (non-null) to be read in this format."""
        return (self.messages,) if self.kind == "messages" else (self.instruction, self.response)  # type: ignore[return-value]


def detect_format(columns: Sequence[str], mapping: ColumnMapping | None = None) -> _Format:
    """Resolve the format, or raise an error naming the missing column and the setting to change."""
    mapping = mapping or ColumnMapping()
    cols = set(columns)

    def require(name: str, setting: str) -> str:
        if name not in cols:
            raise InputError(
                f"the dataset has no column {name!r} (it has {sorted(cols)})",
                column=name,
                fix=f"set `{setting}` (CLI: --{setting.replace('_', '-')}) to the column that holds it",
            )
        return name

    if mapping.messages_column:
        return _Format("messages", messages=require(mapping.messages_column, "messages_column"))
    if mapping.instruction_column or mapping.response_column:
        instruction = require(mapping.instruction_column or "instruction", "instruction_column")
        response = require(mapping.response_column or _first(cols, ("output", "response")) or "output", "response_column")
        input_col = mapping.input_column or _first(cols, ("input", "context"))
        if mapping.input_column:
            require(mapping.input_column, "input_column")
        return _Format("alpaca", instruction=instruction, input=input_col, response=response)
    candidates = _candidates(cols)
    if candidates:
        return _Format(**{**candidates[0].__dict__, "fallbacks": tuple(candidates[1:])})
    raise InputError(
        f"cannot tell the data format from the columns {sorted(cols)}; expected alpaca (instruction/input/output), "
        "prompt/completion, messages or ShareGPT conversations",
        fix="name the columns with instruction_column / input_column / response_column or messages_column "
        "(CLI: --instruction-column, --input-column, --response-column, --messages-column)",
    )


def mapped_text_columns(mapping: ColumnMapping) -> list[str]:
    """The text columns a mapping names (read as text from CSV / JSON files)."""
    return [c for c in (mapping.instruction_column, mapping.input_column, mapping.response_column) if c]


def _candidates(cols: set[str]) -> list[_Format]:
    """Every format the column names fit, in the order of preference."""
    found = []
    if "messages" in cols:
        found.append(_Format("messages", messages="messages"))
    if "conversations" in cols:
        found.append(_Format("messages", messages="conversations"))
    if {"prompt", "completion"} <= cols:
        found.append(_Format("prompt_completion", instruction="prompt", response="completion"))
    if "instruction" in cols and _first(cols, ("output", "response")):
        found.append(_Format("alpaca", instruction="instruction", input=_first(cols, ("input", "context")),
                             response=_first(cols, ("output", "response"))))
    return found


def describe(fmt: _Format) -> str:
    """One line naming the format and its columns (and the formats used for rows without them)."""
    if fmt.kind == "messages":
        text = f"chat messages (column {fmt.messages!r})"
    else:
        columns = ", ".join(f"{role} {col!r}" for role, col in (("instruction", fmt.instruction), ("input", fmt.input),
                                                              ("response", fmt.response)) if col)
        text = f"{'alpaca' if fmt.kind == 'alpaca' else 'prompt/completion'} ({columns})"
    if fmt.fallbacks:
        text += "; rows without those columns are read as " + " or ".join(describe(f) for f in fmt.fallbacks)
    return text


def read_report(ds, fmt: _Format, batch_rows: int = 1000) -> str:
    """How many rows each format read and how many could not be read, e.g. 'alpaca 12, messages 8, unreadable 0'."""
    counts: Counter[str] = Counter()
    columns = [c for c in {fmt.instruction, fmt.input, fmt.response, fmt.messages, *(x for f in fmt.fallbacks for x in
               (f.instruction, f.input, f.response, f.messages))} if c and c in ds.column_names]
    part = ds.select_columns(columns)
    for lo in range(0, len(part), batch_rows):
        batch = part[lo : lo + batch_rows]
        for i in range(len(batch[columns[0]])):
            try:
                counts[_read_row_any({k: v[i] for k, v in batch.items()}, fmt)[1].kind] += 1
            except RowProblem:
                counts["unreadable"] += 1
    names = {"alpaca": "alpaca", "prompt_completion": "prompt/completion", "messages": "messages"}
    return ", ".join(f"{names.get(k, k)} {n}" for k, n in counts.most_common())


def _first(cols: set[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in cols), None)


class RowProblem(Exception):
    """A row that cannot be read; becomes an ``invalid: <reason>`` status, never a dropped row."""


def read_batch(batch: dict[str, list], fmt: _Format) -> list[Example | RowProblem]:
    """Canonical examples of a batch (column dict as given to ``Dataset.map(batched=True)``)."""
    n = len(next(iter(batch.values()))) if batch else 0
    out: list[Example | RowProblem] = []
    for i in range(n):
        try:
            out.append(_read_row_any({k: v[i] for k, v in batch.items()}, fmt)[0])
        except RowProblem as problem:
            out.append(problem)
    return out


def _read_row_any(row: dict[str, Any], fmt: _Format) -> tuple[Example, _Format]:
    """The row in ``fmt``, or in a fallback format when ``fmt``'s columns are empty in it and the fallback's are not."""
    try:
        return _read_row(row, fmt), fmt
    except RowProblem:
        if not fmt.fallbacks or any(row.get(c) is not None for c in fmt.required):
            raise
        for other in fmt.fallbacks:
            if all(row.get(c) is not None for c in other.required):
                return _read_row(row, other), other
        raise


def _text(value: Any, column: str, *, optional: bool = False) -> str:
    if value is None:
        if optional:
            return ""
        raise RowProblem(f"{column!r} is None")
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        value = "".join(str(p.get("text", "")) for p in value)  # multimodal content parts, text only
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # a number in a text column: its written form (4, 0.5, true)
    if not isinstance(value, str):
        raise RowProblem(f"{column!r} is not a string ({type(value).__name__})")
    return value


def _read_row(row: dict[str, Any], fmt: _Format) -> Example:
    if fmt.kind == "alpaca":
        instruction = _text(row[fmt.instruction], fmt.instruction)
        input_text = _text(row.get(fmt.input), fmt.input, optional=True) if fmt.input else ""
        response = _text(row[fmt.response], fmt.response)
        return Example(instruction, input_text, response, [{"role": "user", "content": user_content(instruction, input_text)}])
    if fmt.kind == "prompt_completion":
        prompt, completion = row[fmt.instruction], row[fmt.response]
        if isinstance(prompt, list):
            context = _messages(prompt, fmt.instruction)
            turns = _messages(completion, fmt.response) if isinstance(completion, list) else None
            response = "".join(t["content"] for t in turns if t["role"] == "assistant") if turns else _text(completion, fmt.response)
            return _from_context(context, response, fmt.instruction)
        instruction = _text(prompt, fmt.instruction)
        response = _text(completion, fmt.response)
        return Example(instruction, "", response, [{"role": "user", "content": instruction}])
    messages = _messages(row[fmt.messages], fmt.messages)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise RowProblem(f"{fmt.messages!r} has no assistant turn")
    return _from_context(messages[:last], messages[last]["content"], fmt.messages)


def _messages(value: Any, column: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise RowProblem(f"{column!r} is not a list of messages ({type(value).__name__})")
    out = []
    for j, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowProblem(f"{column!r} message {j} is not a dict")
        role = message.get("role", message.get("from"))
        role = _ROLE_ALIASES.get(str(role).lower(), role) if role is not None else None
        if role is None:
            raise RowProblem(f"{column!r} message {j} has no role")
        content = _text(message.get("content", message.get("value")), f"{column}[{j}].content")
        out.append({"role": role, "content": content})
    return out


def _from_context(context: list[dict[str, str]], response: str, column: str) -> Example:
    if not any(m["role"] == "user" for m in context):
        raise RowProblem(f"{column!r} has no user turn before the last assistant turn")
    return Example(flatten_context(context), "", response, context)


def flatten_context(context: list[dict[str, str]]) -> str:
    """The chat history as one instruction for text templates (see the module docstring)."""
    turns = [m for m in context if m["role"] != "system"]
    system = "\n\n".join(m["content"] for m in context if m["role"] == "system")
    if len(turns) == 1:
        return f"{system}\n\n{turns[0]['content']}" if system else turns[0]["content"]
    lines = [f"System: {system}"] if system else []
    lines += [f"{m['role'].capitalize()}: {m['content']}" for m in turns]
    return "\n\n".join(lines)


def user_content(instruction: str, input: str) -> str:
    """One user message from an instruction and its optional input."""
    return f"{instruction}\n\n{input}" if input else instruction


def to_prompt_completion(instruction: str, input: str, response: str) -> dict[str, list[dict[str, str]]]:
    """A conversational prompt/completion record, the SFT format TRL trains completion-only on."""
    return {
        "prompt": [{"role": "user", "content": user_content(instruction, input)}],
        "completion": [{"role": "assistant", "content": response}],
    }


def prompt_completion_dataset(ds):
    """``ds`` as conversational ``prompt`` / ``completion`` columns only (the chat context is the prompt).

    A dataset already in that format is returned as its two columns; an unreadable row is an InputError naming it.
    """
    if {"prompt", "completion"} <= set(ds.column_names) and len(ds) and isinstance(ds[0]["prompt"], list):
        return ds.select_columns(["prompt", "completion"])
    fmt = detect_format(ds.column_names)

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        prompts, completions = [], []
        for i, example in zip(indices, read_batch(batch, fmt)):
            if isinstance(example, RowProblem):
                raise InputError(f"cannot train on this row: {example}", row=i, fix="fix or drop the row in the data")
            prompts.append(example.context)
            completions.append([{"role": "assistant", "content": example.response}])
        return {"prompt": prompts, "completion": completions}

    return ds.map(convert, batched=True, with_indices=True, remove_columns=ds.column_names, desc="prompt/completion")
