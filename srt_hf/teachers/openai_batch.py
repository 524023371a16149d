"""``--submit openai``: send a run's batch files to an OpenAI-compatible Files + Batches API and fetch the results.

    path = folder.write_round(...); batch_id = submit(mode, path)   # upload (purpose=batch), create the batch
    sync(mode)       # on a rerun: check each batch; download output and error files of finished ones into the folder

It talks through the official ``openai`` client (``pip install "srt-hf[batch]"``): it knows the multipart upload,
the Batch objects and their states, and retries its own management calls, which are a handful per run (the
generation itself happens on the provider's side). The API root is the teacher's first URL, the key the one the
teacher's credential rules give that host (``OPENAI_API_KEY`` for api.openai.com, ``--teacher-api-key-env``);
it is passed to the client in memory and written nowhere.

State lives in ``RUN/batches.json`` (atomic writes), one entry per request file: the uploaded file id, the batch
id, the last status seen, whether its results were downloaded. It is written after every step, so a run killed
between upload, creation and download resumes at the step it missed. A batch that expired or was cancelled
gives what it finished; the requests it never ran stay missing from the cache, so the stage writes them into the
next round's file, which is submitted again. A batch that failed validation stops the run with its errors.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Protocol

from ..durable import atomic_path, write_text_atomic
from ..errors import BatchPending, ConfigError, TeacherError
from .credentials import host_of
from .http import api_root


class BatchMode(Protocol):
    """What this module reads of ``batch_teacher.BatchMode`` (a protocol, so the two modules do not import each other)."""

    config: Any  # BatchConfig: completion_window
    inner: Any  # the EndpointTeacher: base_urls, the client's settings
    folder: Any  # BatchFolder: root
    run_dir: Path

STATE = "batches.json"
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
ENDED = ("completed", "expired", "cancelled")


def _client(mode: BatchMode):
    try:
        import openai
    except ImportError:
        raise ConfigError('--submit openai needs the openai client: pip install "srt-hf[batch]"') from None
    teacher = mode.inner
    base = api_root(teacher.base_urls[0]) + "/v1"
    headers = teacher.credentials.headers_for(base + "/batches")
    authorization = headers.pop("authorization", "")
    if not authorization.lower().startswith("bearer "):
        raise ConfigError(f"--submit openai needs an API key for {host_of(base)}: export OPENAI_API_KEY (api.openai.com) or "
                          "name the variable that holds it with --teacher-api-key-env.")
    return openai.OpenAI(api_key=authorization[7:], base_url=base, default_headers=headers, max_retries=3, timeout=300)


@contextlib.contextmanager
def _api_errors(mode: BatchMode) -> Iterator[None]:
    """The client's errors (refused key, unknown model, no connection) as a TeacherError naming the API and the fix."""
    import openai

    try:
        yield
    except openai.APIStatusError as err:
        raise TeacherError(f"the batch API at {mode.inner.base_urls[0]} answered HTTP {err.status_code}: {err.message}. "
                           "Check the key (--teacher-api-key-env) and the URL (--teacher); finished work is kept, rerun the "
                           "same command to resume") from None
    except openai.APIError as err:
        raise TeacherError(f"the batch API at {mode.inner.base_urls[0]} could not be reached ({err.message}); check --teacher "
                           "and the network, then rerun the same command (finished work is kept)") from None


def _state_path(mode: BatchMode) -> Path:
    return mode.run_dir / STATE


def load_state(mode: BatchMode) -> dict[str, Any]:
    path = _state_path(mode)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"batches": {}}


def _save(mode: BatchMode, state: dict[str, Any]) -> None:
    write_text_atomic(_state_path(mode), json.dumps(state, indent=1, sort_keys=True))


def finished(mode: BatchMode, name: str) -> bool:
    """Whether the batch of request file ``name`` ended (its results, if any, were downloaded)."""
    return bool(load_state(mode)["batches"].get(name, {}).get("done"))


def submit(mode: BatchMode, path: Path) -> str:
    """Upload ``path`` and create its batch (each step recorded); returns the batch id. Idempotent per file."""
    state = load_state(mode)
    entry = state["batches"].setdefault(path.name, {"file": path.name})
    if entry.get("done"):  # a new round always has a new name: an ended batch is never sent twice
        return entry["batch_id"]
    client = _client(mode)
    with _api_errors(mode):
        _advance(mode, client, state, entry)
    return entry["batch_id"]


def _advance(mode: BatchMode, client, state: dict[str, Any], entry: dict[str, Any]) -> None:
    """Upload and create, whichever the recorded state still lacks."""
    if not entry.get("input_file_id"):
        with open(mode.folder.root / entry["file"], "rb") as f:
            entry["input_file_id"] = client.files.create(file=f, purpose="batch").id
        _save(mode, state)
    if not entry.get("batch_id"):
        batch = client.batches.create(input_file_id=entry["input_file_id"], endpoint="/v1/chat/completions",
                                      completion_window=mode.config.completion_window,
                                      metadata={"srt_hf_file": entry["file"]})
        entry.update(batch_id=batch.id, status=batch.status)
        _save(mode, state)


def sync(mode: BatchMode) -> None:
    """Check every batch not done: finish a killed submission, download ended ones; stop while any still runs."""
    state = load_state(mode)
    open_entries = [e for e in state["batches"].values() if not e.get("done")]
    if not open_entries:
        return
    client = _client(mode)
    with _api_errors(mode):
        running = _check(mode, client, state, open_entries)
    if running:
        raise BatchPending("teacher batches still running: " + "; ".join(running)
                           + ". Rerun the same command later: it downloads the results, imports them and goes on.")


def _check(mode: BatchMode, client, state: dict[str, Any], open_entries: list[dict[str, Any]]) -> list[str]:
    """Advance every open batch; returns the ones still running (a failed one raises)."""
    running = []
    for entry in open_entries:
        _advance(mode, client, state, entry)
        batch = client.batches.retrieve(entry["batch_id"])
        counts = batch.request_counts.model_dump() if getattr(batch, "request_counts", None) else {}
        entry.update(status=batch.status, request_counts=counts)
        if batch.status in RUNNING:
            running.append(f"{entry['batch_id']} ({entry['file']}): {batch.status}, "
                           f"{counts.get('completed', 0)} of {counts.get('total', '?')} done")
        elif batch.status in ENDED:
            stem = Path(entry["file"]).stem
            for file_id, suffix in ((batch.output_file_id, "output"), (batch.error_file_id, "errors")):
                if file_id:
                    _download(client, file_id, mode.folder.root / f"{stem}.{suffix}.jsonl")
            entry["done"] = True
        elif batch.status == "failed":
            entry["done"] = True
            _save(mode, state)
            errors = [f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
                      for e in (batch.errors.data if batch.errors and batch.errors.data else [])]
            raise TeacherError(f"the batch {entry['batch_id']} of {entry['file']} failed validation: "
                               f"{'; '.join(errors[:5]) or 'no reason given'}. Fix the setting it names and rerun the same "
                               "command: the requests are written and submitted again")
        _save(mode, state)
    return running


def _download(client, file_id: str, path: Path) -> None:
    """The file's content, written atomically (a killed download leaves nothing half-written)."""
    content = client.files.content(file_id)
    with atomic_path(path) as tmp:
        tmp.write_bytes(content.read())
