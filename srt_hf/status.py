"""The status vocabulary: every row of every stage says what happened to it as ``kind`` or ``kind: reason``.

    status.make(status.SKIPPED, "empty response")      # 'skipped: empty response'
    status.kind_of("parse_failed: no [New Answer] section")   # 'parse_failed'
    status.is_retryable("request_failed: HTTP 503")    # True: a resumed run asks again

Kinds (docs/ARCHITECTURE.md):

* ``ok`` — the stage did its job for this row;
* ``skipped`` — the row was deliberately not processed (over-length under cherry, nothing to compare);
* ``invalid`` — the row could not be read (a column of the wrong type, a broken conversation);
* ``empty_input`` — nothing to work on (an empty instruction);
* ``request_failed`` — the teacher could not be reached or answered an error after its retries;
* ``parse_failed`` — the teacher's reply held no usable section;
* ``placeholder`` — a section held template filler ("your instruction", "N/A");
* ``truncated`` — the teacher stopped at its token limit, so its reply is incomplete;
* ``rejected`` — the reply was read, but its new text is not usable as one (``rejected: meta reply …``: it talks
  about the text, praises it or restates the task, instead of being a new instruction or answer);
* ``pending`` — the request went into a batch file (``--teacher-batch``) and its reply has not come back yet.

Only ``request_failed`` is retryable: a resumed run asks the teacher again for those rows. ``pending`` rows are
always redone on the next run (their replies are read from the imported results). Every other kind is final for
the same settings and data.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

OK = "ok"
SKIPPED = "skipped"
INVALID = "invalid"
EMPTY_INPUT = "empty_input"
REQUEST_FAILED = "request_failed"
PARSE_FAILED = "parse_failed"
PLACEHOLDER = "placeholder"
TRUNCATED = "truncated"
REJECTED = "rejected"
PENDING = "pending"

KINDS = (OK, SKIPPED, INVALID, EMPTY_INPUT, REQUEST_FAILED, PARSE_FAILED, PLACEHOLDER, TRUNCATED, REJECTED, PENDING)
#: Kinds after which the teacher gave no usable text (what the summary counts as a failed reflection).
TEACHER_FAILURES = (REQUEST_FAILED, PARSE_FAILED, PLACEHOLDER, TRUNCATED, REJECTED)
RETRYABLE = (REQUEST_FAILED,)


def make(kind: str, reason: object = "") -> str:
    """``kind`` or ``kind: reason``; ``kind`` must be one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"unknown status kind {kind!r}; use one of {KINDS}")
    reason = str(reason).strip()
    return f"{kind}: {reason}" if reason else kind


def kind_of(status: str | None) -> str:
    """The kind of a status: the part before the first ``:`` (``ok`` for ``ok``)."""
    return (status or "").split(":", 1)[0].strip()


def reason_of(status: str | None) -> str:
    """The reason of a status: the part after the first ``:`` ("" when there is none)."""
    parts = (status or "").split(":", 1)
    return parts[1].strip() if len(parts) == 2 else ""


def is_ok(status: str | None) -> bool:
    return kind_of(status) == OK


def is_retryable(status: str | None) -> bool:
    """Whether a resumed run should redo the row (the teacher could not be reached last time)."""
    return kind_of(status) in RETRYABLE


def is_pending(status: str | None) -> bool:
    """Whether the row waits for a batch reply (a rerun after the import fills it in)."""
    return kind_of(status) == PENDING


def tally(statuses: Iterable[str | None]) -> dict[str, int]:
    """How many statuses of each kind, kinds in sorted order."""
    counts = Counter(kind_of(s) for s in statuses)
    return {k: counts[k] for k in sorted(counts)}
