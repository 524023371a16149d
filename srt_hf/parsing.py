"""Reading a teacher's reflection: the marker layout (docs/ARCHITECTURE.md) and the structured JSON layout.

    parse_instruction_reflection(reply).sections    # {"New Instruction": ..., "New Answer": ...}
    parse_response_reflection(reply).status          # "ok", "parse_failed: no [Better Answer] section", ...
    parse_json_reflection(reply, "instruction")      # the same keys, plus "Review", from one JSON object
    json_schema("response")                          # the JSON Schema a structured request asks for

Both parsers return a :class:`ParsedReflection` whose ``sections`` use the same keys, so the transforms
treat both layouts alike. A status is ``ok``, ``parse_failed: <why>`` or ``placeholder: <what>``.

The marker layout asks for ``[New Instruction] ... [End]`` and so on. It is read line by line:

* a marker counts only where it starts a line, possibly decorated (``**[New Answer]**``,
  ``### [New Answer]:``); ``[End]`` counts where it stands alone on its line or ends a line after a
  space or a sentence mark (so ``s[end]`` or ``x[end]`` never does), or sits between two sections on one
  line (``... [End] [New Answer] ...``). Case and spacing inside the brackets do not matter;
* nothing inside a fenced code block (``` or ~~~) is a marker; a fence that never closes is taken as
  the model's slip, not as code to the end of the reply;
* a reply whose whole layout sits in one fence (```, ```text, ```markdown), perhaps after a line of preface
  ("Here is step 3 in the requested layout:") and with or without the last ``[End]`` inside the fence, is read
  without that fence (only when no marker stands outside it); code fences inside an answer stay as they are;
* a closing tag ``[/New Instruction]``, ``[/New Answer]`` or ``[/Better Answer]`` ends a section as ``[End]`` does;
* a reasoning model's ``<think>`` block is not where the answer is: only what follows ``</think>`` is read;
* once a section is open, only ``[End]`` or another bracketed marker closes it: heading-like lines inside
  an answer ("New instruction: ...", "**Better answer:**") are content. When no section is open, an
  unbracketed heading line ("### New Instruction", "**New Answer:**") opens one, for teachers that drop
  the brackets; such a section also ends at the heading of a section expected later;
* for each section the last usable version wins (a draft the model rewrote loses to the rewrite), and
  bracketed versions win over unbracketed ones. A missing final ``[End]`` is tolerated; placeholders
  ("your instruction", "N/A", empty) count as failures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .status import OK, PARSE_FAILED, PLACEHOLDER, is_ok, make

NEW_INSTRUCTION, NEW_ANSWER, BETTER_ANSWER = "New Instruction", "New Answer", "Better Answer"
REVIEW = "Review"
INSTRUCTION_SECTIONS = (NEW_INSTRUCTION, NEW_ANSWER)
RESPONSE_SECTIONS = (BETTER_ANSWER,)
_MARKER_NAMES = (NEW_INSTRUCTION, NEW_ANSWER, BETTER_ANSWER)

# The structured layout: the paper's order, the review first, then the new texts.
INSTRUCTION_FIELDS = ("review", "new_instruction", "new_answer")
RESPONSE_FIELDS = ("review", "better_answer")
_FIELDS = {"instruction": INSTRUCTION_FIELDS, "response": RESPONSE_FIELDS}
_FIELD_SECTION = {"review": REVIEW, "new_instruction": NEW_INSTRUCTION, "new_answer": NEW_ANSWER,
                  "better_answer": BETTER_ANSWER}
_SECTION_FIELD = {section: name for name, section in _FIELD_SECTION.items()}


@dataclass
class ParsedReflection:
    """The sections found in a teacher reply, and the parse status (``ok`` or the reason it failed)."""

    sections: dict[str, str]
    status: str

    @property
    def ok(self) -> bool:
        return is_ok(self.status)


# -- placeholders and echoes -----------------------------------------------------------------------
_PLACEHOLDER_WORDS = re.compile(
    r"^(?:(?:insert|write|put|add|enter|type)\s+)?(?:(?:your|the|a|an|my)\s+)?"
    r"(?:(?:new|better|improved|rewritten|revised|final)\s+)*"
    r"(?:instruction|answer|response|question|prompt|text|output|content)s?(?:\s+(?:here|goes\s+here|text))?$"
)
_PLACEHOLDER_LITERALS = {"", "n/a", "na", "none", "null", "nil", "todo", "tbd", "tba", "-", "...", "…", "etc",
                         "same as above", "see above"}


def is_placeholder(text: str) -> bool:
    """Template filler rather than content: "your instruction", "N/A", "...", "<answer>", empty."""
    core = re.sub(r"\s+", " ", text).strip().strip("*_`#\"' \t:.").lower()
    if core in _PLACEHOLDER_LITERALS or not re.search(r"\w", core):
        return True
    if _PLACEHOLDER_WORDS.match(core):
        return True
    # A short text wholly wrapped in <...>, (...), [...] or {...} is a slot to fill, e.g. "(the better answer)".
    wrapped = re.fullmatch(r"[<(\[{]([^<>()\[\]{}]*)[>)\]}]", core)
    return bool(wrapped and len(core) <= 80)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def echoes(reply: str, skeleton: str, min_share: float = 0.5) -> bool:
    """Whether a reply repeats the prompt: most of the template's own long lines reappear in it."""
    lines = {_normalise(line) for line in skeleton.splitlines()}
    lines = {line for line in lines if len(line) >= 25}
    if not lines:
        return False
    text = _normalise(reply)
    return sum(line in text for line in lines) >= min_share * len(lines)


def _contains_phrase(text: str, phrase: str) -> bool:
    return bool(phrase) and re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def _prompt_failure(
    answer: str, parsed: ParsedReflection, skeleton: str | None, label: Callable[[str], str]
) -> ParsedReflection | None:
    """A failure when the reply repeats the prompt (``skeleton``: the template rendered with empty fields).

    ``parse_failed`` when the reply echoes the template and its sections are missing or were copied from it
    (a reply that merely reuses the template's questions as headings, with sections of its own, passes);
    ``placeholder`` when a text of three words or more is a phrase of the template ("the answer to the
    improved instruction"). ``label`` names a section in the reason.
    """
    if skeleton is None:
        return None
    template_text = _normalise(skeleton)
    texts = {k: v for k, v in parsed.sections.items() if k != REVIEW}
    copied = {k: _contains_phrase(template_text, _normalise(v)) for k, v in texts.items()}
    if echoes(answer, skeleton) and (not parsed.ok or all(copied.values())):
        return ParsedReflection({}, make(PARSE_FAILED, "reply echoes the prompt"))
    for name, text in texts.items():
        if parsed.ok and copied[name] and len(text.split()) >= 3:
            return ParsedReflection({}, make(PLACEHOLDER, f"{label(name)} copies the prompt: {text[:40]!r}"))
    return None


# -- reasoning blocks and code fences --------------------------------------------------------------
_THINK_OPEN = re.compile(r"\A\s*<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think\s*>", re.IGNORECASE)
_LATER_THINK = re.compile(r"^[ \t]*<think>.*?</think\s*>", re.IGNORECASE | re.DOTALL | re.MULTILINE)
_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})")


def _lines(text: str) -> list[tuple[int, str]]:
    """(offset, line without its newline) for every line of ``text``."""
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        out.append((pos, line.rstrip("\r\n")))
        pos += len(line)
    return out


def _code_lines(lines: list[tuple[int, str]]) -> set[int]:
    """Indices of the lines inside closed fenced code blocks, fences included."""
    inside: set[int] = set()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i][1])
        if not m:
            i += 1
            continue
        fence = m.group("fence")
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j][1])), None)
        if end is None:  # never closed: a slip, so the lines after it are read as text
            i += 1
            continue
        inside.update(range(i, end + 1))
        i = end + 1
    return inside


def _outside_code(text: str, matches: Iterable[re.Match]) -> list[re.Match]:
    """The matches that do not lie in a fenced code block of ``text``."""
    lines = _lines(text)
    code = _code_lines(lines)
    starts = [offset for offset, _ in lines]

    def line_of(pos: int) -> int:
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo

    return [m for m in matches if not lines or line_of(m.start()) not in code]


def strip_reasoning(reply: str) -> tuple[str, str | None]:
    """(the part of a reply after its reasoning, why nothing is left or None).

    A reply that opens with ``<think>`` is read after the first ``</think>``; so is one that holds only a
    closing ``</think>`` (its opening tag was in the prompt). Tags inside fenced code do not count.
    """
    opened = _THINK_OPEN.match(reply)
    closes = _outside_code(reply, _THINK_CLOSE.finditer(reply))
    # Interleaved reasoning: later closed blocks that start a line are dropped as well.
    if closes:
        answer = _LATER_THINK.sub("", reply[closes[0].end():])
        return answer, None if answer.strip() else "nothing follows the </think> block"
    if opened:
        return "", "the <think> block never closes"
    return reply, None


# -- the marker layout -----------------------------------------------------------------------------
_NAMES = r"new[ \t]+instruction|new[ \t]+answer|better[ \t]+answer"
_LEAD = r"[ \t]*(?:>[ \t]*)*(?:\#{1,6}[ \t]*)?(?:(?:[-+]|\d{1,2}[.)])[ \t]+)?"  # indent, quote, heading, bullet
# "[New Answer]", "**[New Answer]**", "### [New Answer]:", "**[New Answer]:**" at the start of a (virtual) line.
_BRACKETED = re.compile(
    rf"{_LEAD}(?P<deco>[*_`]{{0,3}})[ \t]*\[[ \t]*(?P<name>{_NAMES})[ \t]*\]"
    r"(?:[ \t]*(?P=deco)[ \t]*:|[ \t]*:[ \t]*(?P=deco)|[ \t]*(?P=deco))?",
    re.IGNORECASE,
)
# "### New Answer", "**New Answer:**", "New Answer:" on a line of its own or opening it.
_LOOSE = re.compile(
    rf"{_LEAD}(?P<deco>[*_]{{0,3}})[ \t]*(?P<name>{_NAMES})[ \t]*"
    r"(?::[ \t]*(?P=deco)|(?P=deco)[ \t]*:|(?P=deco)[ \t]*$)",
    re.IGNORECASE,
)
# "[End]", or a closing tag "[/New Answer]"
_END_TAG = rf"\[[ \t]*(?:end|/[ \t]*(?:{_NAMES}))[ \t]*\]"
_END_ALONE = re.compile(rf"[ \t>#*_`]*{_END_TAG}[ \t*_`.]*$", re.IGNORECASE)
# "[End]" after a space or a sentence mark, never glued to code such as s[end] or f(x)[end].
_END_INLINE = re.compile(rf"(?:^|(?<=[\s.!?:;,]))[*_]{{0,3}}[ \t]*{_END_TAG}[ \t]*[*_]{{0,3}}", re.IGNORECASE)
# A fence that may wrap the whole layout: no language, or a plain-text one.
_LAYOUT_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?:text|markdown|md|plaintext|plain|txt)?[ \t]*$",
                           re.IGNORECASE)


@dataclass
class _Event:
    kind: str  # "open" (bracketed marker), "loose" (unbracketed heading) or "end"
    name: str
    start: int  # where the text before it stops
    end: int  # where the text after it starts


def _section_name(raw: str) -> str:
    key = re.sub(r"\s+", " ", raw).strip().lower()
    return next(name for name in _MARKER_NAMES if name.lower() == key)


def _line_events(line: str, offset: int) -> list[_Event]:
    """The markers on one line that is not code."""
    if _END_ALONE.fullmatch(line):
        return [_Event("end", "", offset, offset + len(line))]
    events: list[_Event] = []
    pos = 0
    m = _BRACKETED.match(line)
    if m:
        events.append(_Event("open", _section_name(m.group("name")), offset, offset + m.end()))
        pos = m.end()
    else:
        m = _LOOSE.match(line)
        if m:
            events.append(_Event("loose", _section_name(m.group("name")), offset, offset + m.end()))
            pos = m.end()
    # An [End] counts where it ends the line or where a bracketed marker follows it on the same line.
    for end in _END_INLINE.finditer(line, pos):
        rest = line[end.end():]
        if not rest.strip(" \t*_`."):
            events.append(_Event("end", "", offset + end.start(), offset + len(line)))
            break
        nxt = _BRACKETED.match(rest)
        if nxt:
            events.append(_Event("end", "", offset + end.start(), offset + end.end()))
            start = offset + end.end()
            events.append(_Event("open", _section_name(nxt.group("name")), start, start + nxt.end()))
    return events


def _unwrap_layout_fence(text: str) -> str:
    """The reply without the fence around its whole layout, when no marker stands outside fenced code.

    The opening fence is the first plain fence (```, ```text, ```markdown) before the first marker; its closing
    one is the last bare fence after it, so code fences inside an answer keep their pairs. A fence that never
    closes loses only its opening line.
    """
    lines = _lines(text)
    code = _code_lines(lines)
    if any(i not in code and _BRACKETED.match(line) for i, (_, line) in enumerate(lines)):
        return text  # the layout is readable as it is
    first = next((i for i, (_, line) in enumerate(lines) if _BRACKETED.match(line)), None)
    if first is None:
        return text
    opening = next((i for i in range(first - 1, -1, -1) if _LAYOUT_FENCE.match(lines[i][1])), None)
    if opening is None:
        return text
    fence = _LAYOUT_FENCE.match(lines[opening][1]).group("fence")
    closing_line = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
    closing = next((j for j in range(len(lines) - 1, first, -1) if closing_line.match(lines[j][1])), None)
    drop = {opening, closing}
    return "\n".join(line for i, (_, line) in enumerate(lines) if i not in drop)


def _events(text: str) -> list[_Event]:
    lines = _lines(text)
    code = _code_lines(lines)
    return [e for i, (offset, line) in enumerate(lines) if i not in code for e in _line_events(line, offset)]


def _versions(text: str, sections: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
    """For each section name: (bracketed versions, unbracketed versions), in order of appearance."""
    rank = {name: i for i, name in enumerate(sections)}
    found: dict[str, tuple[list[str], list[str]]] = {name: ([], []) for name in _MARKER_NAMES}
    current: _Event | None = None

    def close(at: int) -> None:
        found[current.name][current.kind == "loose"].append(text[current.end:at].strip())

    for event in _events(text):
        # Inside a section, a heading is content, except a loose section's heading of a later section.
        if event.kind == "loose" and current is not None and (
            current.kind == "open" or rank.get(event.name, -1) <= rank.get(current.name, -1)
        ):
            continue
        if current is not None:
            close(event.start)
        current = None if event.kind == "end" else event
    if current is not None:
        close(len(text))
    return found


def _answer_part(reply: str | None) -> tuple[str, ParsedReflection | None]:
    """The reply after its reasoning, or the failure of an empty reply or of one that is only reasoning."""
    if reply is None or not reply.strip():
        return "", ParsedReflection({}, make(PARSE_FAILED, "empty reply"))
    answer, nothing_left = strip_reasoning(reply)
    return answer, ParsedReflection({}, make(PARSE_FAILED, nothing_left)) if nothing_left else None


def parse_reflection(reply: str | None, sections: Sequence[str], *, skeleton: str | None = None) -> ParsedReflection:
    """Find ``sections`` (e.g. ``("New Instruction", "New Answer")``, in the order the prompt asks) in a reply.

    ``skeleton`` (the prompt template rendered with empty fields) catches a reply that repeats the
    prompt: it fails when it echoes the template and its sections are missing or were copied from it.
    """
    unknown = [name for name in sections if name not in _MARKER_NAMES]
    if unknown:
        raise ConfigError(f"Unknown reflection section(s) {unknown}; the markers are {list(_MARKER_NAMES)}.")
    answer, failed = _answer_part(reply)
    if failed:
        return failed
    answer = _unwrap_layout_fence(answer)
    versions = _versions(answer, sections)
    found: dict[str, str] = {}
    parsed = None
    for name in sections:
        bracketed, loose = versions[name]
        candidates = bracketed or loose
        if not candidates:
            parsed = ParsedReflection(found, make(PARSE_FAILED, f"no [{name}] section"))
            break
        usable = [text for text in candidates if not is_placeholder(text)]
        if not usable:
            last = candidates[-1]
            reason = f"[{name}] is {last[:40]!r}" if last else f"[{name}] is empty"
            parsed = ParsedReflection(found, make(PLACEHOLDER, reason))
            break
        found[name] = usable[-1]
    parsed = parsed or ParsedReflection(found, OK)
    return _prompt_failure(answer, parsed, skeleton, lambda name: f"[{name}]") or parsed


def parse_instruction_reflection(reply: str | None, *, skeleton: str | None = None) -> ParsedReflection:
    """The ``[New Instruction]`` and ``[New Answer]`` sections of an instruction reflection."""
    return parse_reflection(reply, INSTRUCTION_SECTIONS, skeleton=skeleton)


def parse_response_reflection(reply: str | None, *, skeleton: str | None = None) -> ParsedReflection:
    """The ``[Better Answer]`` section of a response reflection."""
    return parse_reflection(reply, RESPONSE_SECTIONS, skeleton=skeleton)


# -- the structured (JSON) layout ------------------------------------------------------------------
def fields_of(kind: str) -> tuple[str, ...]:
    """The JSON fields of a reflection kind ("instruction" or "response"), the review first."""
    if kind not in _FIELDS:
        raise ConfigError(f"Unknown reflection kind {kind!r}; use one of {sorted(_FIELDS)}.")
    return _FIELDS[kind]


def json_schema(kind: str, *, review_max_length: int | None = None) -> dict:
    """The JSON Schema of a structured reflection: one object, string fields in the paper's order, all required.

    Only ``type``, ``properties``, ``required`` and ``additionalProperties``, which every backend enforces
    (OpenAI's strict mode, TGI, vLLM, llama.cpp, llguidance); an empty text is caught as a placeholder.
    ``review_max_length`` adds ``maxLength`` to the review, for a grammar-constrained local teacher whose
    review would otherwise eat the token budget (not every server accepts ``maxLength``).
    """
    fields = fields_of(kind)
    properties: dict[str, dict] = {name: {"type": "string"} for name in fields}
    if review_max_length is not None:
        properties["review"]["maxLength"] = review_max_length
    return {"type": "object", "properties": properties, "required": list(fields), "additionalProperties": False}


_OBJECT_START = re.compile(r"\{\s*[\"}]")
_CUT_OFF = "reply is not a complete JSON object"


def _object_end(text: str, start: int) -> int | None:
    """Where the object opening at ``start`` closes (braces outside strings balance), None if it never does."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _json_objects(text: str) -> tuple[list[dict], str | None]:
    """Every top-level JSON object in ``text`` (prose and fences around them ignored), and why there is none."""
    objects: list[dict] = []
    problem = None
    pos = 0
    while m := _OBJECT_START.search(text, pos):
        end = _object_end(text, m.start())
        if end is None:
            problem = _CUT_OFF
            break
        try:
            value = json.loads(text[m.start():end], strict=False)  # raw newlines in strings pass
        except ValueError as err:
            problem = f"reply is not valid JSON ({err.msg})"
            pos = m.start() + 1
            continue
        objects.append(value)
        pos = end
    return objects, problem


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _type_name(value: object) -> str:
    return {list: "a list", dict: "an object", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def parse_json_reflection(reply: str | None, kind: str, *, skeleton: str | None = None) -> ParsedReflection:
    """The sections of a structured reflection: one JSON object with the fields of :func:`json_schema`.

    ``sections`` has the marker parser's keys ("New Instruction", "New Answer" or "Better Answer") plus
    "Review". Tolerates a ```json fence, prose or a ``<think>`` block around the object and keys in
    another case or spelling ("New Answer", "newAnswer"); when the reply holds several objects, the last
    one with every field wins. ``skeleton`` works as in :func:`parse_reflection`.
    """
    fields = fields_of(kind)
    answer, failed = _answer_part(reply)
    if failed:
        return failed
    parsed = _read_object(answer, fields)
    return _prompt_failure(answer, parsed, skeleton, lambda name: repr(_SECTION_FIELD[name])) or parsed


def _read_object(answer: str, fields: tuple[str, ...]) -> ParsedReflection:
    objects, problem = _json_objects(answer)
    objects = [{_key(k): v for k, v in obj.items()} for obj in objects if isinstance(obj, dict)]
    if not objects:
        return ParsedReflection({}, make(PARSE_FAILED, problem or "reply is not a JSON object"))
    wanted = [_key(f) for f in fields]
    complete = [obj for obj in objects if all(k in obj for k in wanted)]
    if not complete and problem == _CUT_OFF:  # a "{}" in the prose before an object that was cut off
        return ParsedReflection({}, make(PARSE_FAILED, problem))
    obj = complete[-1] if complete else objects[-1]
    sections: dict[str, str] = {}
    for name, key in zip(fields, wanted):
        if key not in obj:
            return ParsedReflection(sections, make(PARSE_FAILED, f"no {name!r} field"))
        value = obj[key]
        if not isinstance(value, str):
            return ParsedReflection(sections, make(PARSE_FAILED, f"{name!r} is {_type_name(value)}, not a string"))
        text = value.strip()
        if name != "review" and is_placeholder(text):
            reason = f"{name!r} is {text[:40]!r}" if text else f"{name!r} is empty"
            return ParsedReflection(sections, make(PLACEHOLDER, reason))
        sections[_FIELD_SECTION[name]] = text
    return ParsedReflection(sections, OK)


__all__ = [
    "BETTER_ANSWER", "INSTRUCTION_FIELDS", "INSTRUCTION_SECTIONS", "NEW_ANSWER", "NEW_INSTRUCTION",
    "RESPONSE_FIELDS", "RESPONSE_SECTIONS", "REVIEW", "ParsedReflection", "echoes", "fields_of", "is_placeholder",
    "json_schema", "parse_instruction_reflection", "parse_json_reflection", "parse_reflection",
    "parse_response_reflection", "strip_reasoning",
]
