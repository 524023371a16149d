"""The `srt-hf` command line that made a run, secrets redacted: run.json's ``command`` and the card's "reproduce".

    with recording(["recycle", "demo", "--teacher-header", "api-key: s3cret", "--out", "runs/demo"]):
        current()   # {"argv": ["srt-hf", "recycle", …, "api-key: REDACTED", …], "text": "srt-hf recycle demo …"}

:func:`srt_hf.cli.main` records its argv while a command runs; a run folder written meanwhile stores it. Called
from Python (no CLI), :func:`current` is None and nothing is recorded. Redacted: the value of any option whose
name says it carries a secret (``--teacher-header`` keeps the header's name, ``--*api-key*``, ``--*token``,
``--*secret*``, ``--*password*``; an ``…-env`` option keeps a plain variable name), and anywhere in the line,
Hugging Face / OpenAI-style tokens, ``Bearer …`` values, the password of a URL and, in a JSON option
(``--teacher-extra-body``), the values of secret-looking keys.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
import shlex
from collections.abc import Iterator, Sequence
from typing import Any

REDACTED = "REDACTED"
PROGRAM = "srt-hf"

_current: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("srt_hf_argv", default=None)
_SECRET_WORDS = {"secret", "password", "passwd", "credential", "credentials", "authorization", "auth", "header",
                 "headers", "apikey"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKENS = (
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer|token)(\s+|=|:\s*)[^\s'\"]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^@/\s]+@"), rf"\1:{REDACTED}@"),
)


def is_secret_option(name: str) -> bool:
    """Whether the option ``name`` (``--teacher-api-key-env``, ``--hub_token``…) carries a secret value."""
    words = [w for w in re.split(r"[-_]+", name.lstrip("-").lower()) if w]
    pairs = {f"{a}{b}" for a, b in zip(words, words[1:])}
    return bool(_SECRET_WORDS & set(words)) or "apikey" in pairs or (bool(words) and words[-1] == "token")


def redact_value(option: str, value: str) -> str:
    """``value`` of ``option`` with its secret part replaced by REDACTED."""
    name = option.lstrip("-").lower()
    if not is_secret_option(option):
        return _redact_json(value) if value.lstrip().startswith("{") else redact_text(value)
    if name.endswith(("-env", "_env")) and _ENV_NAME.fullmatch(value):
        return value  # the name of an environment variable, not its value
    if "header" in name and ":" in value:
        return f"{value.split(':', 1)[0]}: {REDACTED}"
    return REDACTED


def redact_text(text: str) -> str:
    """``text`` with token-like strings, ``Bearer …`` values and URL passwords replaced by REDACTED."""
    for pattern, repl in _TOKENS:
        text = pattern.sub(repl, text)
    return text


def _redact_json(value: str) -> str:
    """A JSON object (``--teacher-extra-body``) with the values of secret-looking keys redacted, at any depth."""
    try:
        data = json.loads(value)
    except ValueError:
        return redact_text(value)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: REDACTED if is_secret_option(str(k)) else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return redact_text(node) if isinstance(node, str) else node

    return json.dumps(walk(data), ensure_ascii=False)


def redact(argv: Sequence[str]) -> list[str]:
    """``argv`` with every secret value redacted (``--opt value`` and ``--opt=value`` alike)."""
    out: list[str] = []
    pending: str | None = None  # the secret-carrying option whose value comes next
    for arg in map(str, argv):
        if pending is not None and not (arg.startswith("--") and len(arg) > 2):
            out.append(redact_value(pending, arg))
            pending = None
            continue
        pending = None
        if arg.startswith("--") and "=" in arg:
            option, value = arg.split("=", 1)
            out.append(f"{option}={redact_value(option, value)}")
        elif arg.startswith("--") and is_secret_option(arg):
            out.append(arg)
            pending = arg
        else:
            out.append(_redact_json(arg) if arg.lstrip().startswith("{") else redact_text(arg))
    return out


@contextlib.contextmanager
def recording(argv: Sequence[str]) -> Iterator[None]:
    """While the block runs, :func:`current` returns ``argv`` (redacted)."""
    token = _current.set(redact(argv))
    try:
        yield
    finally:
        _current.reset(token)


def current() -> dict[str, Any] | None:
    """The running `srt-hf` command: ``{"argv": [...], "text": "srt-hf …"}`` (secrets redacted), or None."""
    argv = _current.get()
    if argv is None:
        return None
    full = [PROGRAM, *argv]
    return {"argv": full, "text": shlex.join(full)}
