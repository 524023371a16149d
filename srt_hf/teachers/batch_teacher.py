"""Teacher generation at batch scale: the requests a run still needs go into batch files instead of a server.

    mode = BatchMode(BatchConfig(teacher_batch="batches"), teacher, run_dir=Path("runs/x"), run_id=digest)
    mode.start()                       # --submit openai: check the batches in flight; import every results file
    teacher = mode.teacher             # a BatchTeacher: replies from the cache, the rest recorded as pending
    ...run a teacher stage with it...
    mode.after_stage("2-reflect-instruction")   # anything pending: write the round's file and raise BatchPending

A request missing from the cache is not sent: :class:`BatchTeacher` records its chat-completion body (the same
one :class:`EndpointTeacher` would send, ``response_format`` included) and answers ``pending: …``; the pipeline
redoes pending rows on the next run. A batch error of the last import answers ``request_failed: …`` for this run
(the next round writes the request again). Structured output uses the teacher's known dialect, else OpenAI's
``json_schema``, which OpenAI and vLLM both accept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BatchPending, ConfigError
from ..status import PENDING, REQUEST_FAILED, make
from .base import Completion, Messages, Teacher, TeacherSession
from .batch import BatchFolder, ImportReport
from .cache import cache_key
from .endpoint import EndpointTeacher, request_body
from .structured import DIALECTS, UNSUPPORTED

SUBMITTERS = ("openai",)


@dataclass
class BatchConfig:
    """Batch generation: write the teacher's requests to files (and optionally submit them) instead of asking a server."""

    teacher_batch: str | None = field(default=None, metadata={"help": "Folder for teacher batch files: each teacher stage writes the requests missing from the cache there (OpenAI batch format, for `vllm run-batch` or --submit openai) and stops; rerun the same command with the results in the folder to import them and go on."})
    submit: str | None = field(default=None, metadata={"help": "With --teacher-batch: 'openai' uploads each batch file to the teacher URL's Files/Batches API and creates the batch; a rerun checks it, downloads and imports the results (needs srt-hf[batch])."})
    completion_window: str = field(default="24h", metadata={"help": "With --submit openai: the batch's completion window."})

    def __post_init__(self) -> None:
        if self.submit is not None and self.submit not in SUBMITTERS:
            raise ConfigError(f"--submit {self.submit!r}: use one of {', '.join(SUBMITTERS)}.")
        if self.submit and not self.teacher_batch:
            raise ConfigError("--submit needs --teacher-batch DIR (the folder for the batch files and their results).")

    @property
    def enabled(self) -> bool:
        return bool(self.teacher_batch)


class BatchTeacher(Teacher):
    """An endpoint teacher whose missing replies are collected for a batch file (same identity, same cache)."""

    kind = "batch"

    def __init__(self, inner: EndpointTeacher, mode: BatchMode):
        self.inner, self.mode = inner, mode
        self.config, self.cache_path, self.cache, self.stats = inner.config, inner.cache_path, inner.cache, inner.stats
        self.cache_tags: dict[str, Any] = {}
        self.review_max_length = inner.review_max_length
        dialect = inner.structured_dialect
        self.structured_dialect = dialect if dialect not in (None, UNSUPPORTED) else "json_schema"
        self.tokens_field = "max_completion_tokens" if mode.config.submit == "openai" else inner.tokens_field

    def __reduce__(self):  # a fingerprint of the stage transforms: what decides the replies is the inner teacher
        return self.inner.__reduce__()

    def scope(self) -> dict[str, Any]:
        return self.inner.scope()

    def transport(self) -> dict[str, Any]:
        return {**self.inner.transport(), "structured": self.structured_dialect, "batch": str(self.mode.folder.root)}

    def session(self) -> _BatchSession:
        return _BatchSession(self)

    def body(self, messages: Messages, settings: dict[str, Any], schema: dict | None) -> dict[str, Any]:
        extra = DIALECTS[self.structured_dialect](schema) if schema is not None else None
        return request_body(self.inner.model, messages, settings, tokens_field=self.tokens_field,
                            extra_body=self.inner.extra_body, extra=extra)


class _BatchSession(TeacherSession):
    teacher: BatchTeacher

    async def _fetch(self, messages: Messages, settings: dict[str, Any], schema: dict | None) -> Completion:
        teacher = self.teacher
        key = cache_key(self._scope, messages, settings if schema is None else {**settings, "schema": schema})
        failure = teacher.mode.report.failures.get(key)
        if failure is not None:
            teacher.stats.add(failed=1)
            return Completion(None, make(REQUEST_FAILED, failure))
        stage = teacher.cache_tags.get("stage", "teacher")
        teacher.mode.pending.setdefault(stage, {})[key] = (teacher.body(messages, settings, schema), settings)
        return Completion(None, make(PENDING, f"in the batch file of {stage} (rerun with its results to import them)"))


class BatchMode:
    """One run's batch state: the folder, the import of its results, the requests pending per stage."""

    def __init__(self, config: BatchConfig, teacher: Teacher, *, run_dir: Path, run_id: str):
        if not isinstance(teacher, EndpointTeacher):
            raise ConfigError(f"--teacher-batch writes requests for a teacher server; the teacher {teacher!r} is local. Pass "
                              "--teacher URL --teacher-model NAME (the URL is only contacted with --submit).")
        if not teacher.model:
            raise ConfigError("--teacher-batch needs --teacher-model NAME: the model named in every batch request and in "
                              "the cache key (srt_hf cannot ask a server which model it serves for a batch).")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("--teacher-batch runs in one process; launch it without accelerate (the teacher does no work here).")
        self.config, self.inner, self.run_dir = config, teacher, Path(run_dir)
        self.folder = BatchFolder(Path(config.teacher_batch), run_id)
        self.report = ImportReport()
        self.pending: dict[str, dict[str, tuple[dict, dict]]] = {}
        self.teacher = BatchTeacher(teacher, self)

    def start(self) -> ImportReport:
        """Check submitted batches (``--submit``), then import every new results file into the cache."""
        self.folder.root.mkdir(parents=True, exist_ok=True)
        self.folder.manifests()  # another run's files stop the run before any work
        if self.config.submit:
            from . import openai_batch

            openai_batch.sync(self)
        self.report = self.folder.import_results(self.inner.cache, tags={"run": self.folder.run_id})
        return self.report

    def after_stage(self, stage: str) -> None:
        """If the stage left requests pending, write (or keep) the round's batch file and stop with instructions."""
        pending = self.pending.pop(stage, {})
        if not pending:
            return
        latest = self.folder.latest(stage)
        waiting = latest is not None and set(latest.requests) == set(pending) and not self._answered(latest)
        bodies = {k: body for k, (body, _) in pending.items()}
        settings = {k: settings for k, (_, settings) in pending.items()}
        if waiting and (self.folder.root / latest.name).exists():
            path = self.folder.root / latest.name
        else:  # a new round, or the waiting round's file again (a run killed between its manifest and its lines)
            path = self.folder.write_round(stage, bodies, settings, round=latest.round if waiting else None)
        submitted = None
        if self.config.submit:
            from . import openai_batch

            submitted = openai_batch.submit(self, path)
        raise BatchPending(self._instructions(stage, path, len(pending), waiting, submitted), files=[path])

    def _answered(self, manifest) -> bool:
        if self.folder.answered(manifest):
            return True
        if self.config.submit:
            from . import openai_batch

            return openai_batch.finished(self, manifest.name)
        return False

    def _instructions(self, stage: str, path: Path, n: int, waiting: bool, submitted: str | None) -> str:
        results = path.with_name(f"{path.stem}.results.jsonl")
        head = (f"{n} teacher request{'s' if n != 1 else ''} of stage {stage} "
                f"{'still wait for their results in' if waiting else 'are in'} {path}.")
        if submitted:
            return (f"{head}\nSubmitted to the batch API as {submitted} (recorded in {self.run_dir / 'batches.json'}). "
                    "Rerun the same command later: it checks the batch, downloads its results, imports them and goes on.")
        return (f"{head}\nRun them, e.g. with vLLM:\n"
                f"  vllm run-batch -i {path} -o {results} --model {self.inner.model}\n"
                "or rerun with --submit openai to send them to the teacher URL's Batch API (OpenAI).\n"
                f"Then rerun the same command: it imports every results file in {self.folder.root} and goes on "
                "(stage 4 depends on stage 3's choices, so a full run takes two rounds of batch files).")
