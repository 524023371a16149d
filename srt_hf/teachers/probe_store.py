"""The structured-output probe's outcome, kept in the run folder so that a resumed run asks no probe.

    restore_probe(teacher, run_dir)   # before the teacher stages: the dialect found last time, the ones refused
    save_probe(teacher, run_dir)      # after them (also when a stage stopped): RUN/teacher_probe.json

The file holds one entry per teacher (its base URLs and model, :meth:`EndpointTeacher.probe_key`): the dialect
found (or ``"unsupported"``) and what each dialect tried got ("refused: <the server's words>" or "ignored"), with
``refusals_answered``: its refusals were kept only once the server answered (entries without it come from an older
srt_hf, whose refusals are asked again).
A teacher that never probes (a local model) has nothing to keep. The file is never uploaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..durable import write_text_atomic

logger = logging.getLogger(__name__)

PROBE_FILE = "teacher_probe.json"


def _entries(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("%s cannot be read (%s); the teacher's structured output is probed again", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def restore_probe(teacher: Any, run_dir: Path) -> bool:
    """Give ``teacher`` the outcome stored for it in ``run_dir``; whether there was one."""
    if not hasattr(teacher, "probe_key"):
        return False
    state = _entries(run_dir).get(teacher.probe_key())
    if not isinstance(state, dict):
        return False
    teacher.restore_probe(state)
    return True


def save_probe(teacher: Any, run_dir: Path) -> None:
    """Store ``teacher``'s outcome in ``run_dir`` (nothing when it never probed)."""
    if not hasattr(teacher, "probe_key"):
        return
    state = teacher.probe_state()
    if state.get("dialect") is None and not state.get("tried"):
        return
    entries = _entries(run_dir)
    key = teacher.probe_key()
    if entries.get(key) == state:
        return
    entries[key] = state
    write_text_atomic(Path(run_dir) / PROBE_FILE, json.dumps(entries, indent=2, ensure_ascii=False) + "\n")


__all__ = ["PROBE_FILE", "restore_probe", "save_probe"]
