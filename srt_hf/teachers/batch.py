"""Teacher batch files: the requests a run writes, the results it reads back, matched by ``custom_id``.

    folder = BatchFolder(Path("batches"), run_id="3f2a…")
    name = folder.write_round("2-reflect-instruction", {key: body, ...})     # the OpenAI batch input format
    report = folder.import_results(cache)            # every results file in the folder -> the response cache

A request file ``<stage>-round<k>.jsonl`` holds one line per request in the OpenAI Batch API input format
(``custom_id`` = the response-cache key, ``method``, ``url``, ``body`` = the chat-completion body), which
``vllm run-batch`` reads too. Beside it, ``<stage>-round<k>.manifest.json`` records the run it belongs to and
the SHA-256 of every body, so results are only taken for requests this run wrote, unchanged.

Every other ``*.jsonl`` in the folder is read as results, in the output format OpenAI's Batch API and
``vllm run-batch`` share: ``{"custom_id", "response": {"status_code", "body": <chat.completion>}, "error"}``
(OpenAI's error files have the same shape). A reply is stored in the cache (finish reason ``length`` stays
``truncated``); a line with an ``error`` or a non-200 status becomes a ``request_failed`` for this run (the
request is written again in the next round); a line that only says the batch expired or was cancelled before
the request ran is not an answer, so the request is simply asked again. ``imported.json`` lists the results
files already imported (by content digest): a killed import leaves it unwritten, and the rerun imports again
(filling the cache twice with the same reply is harmless).

Results are write-once per request: a reply for a ``custom_id`` that already has another imported reply (a second
download such as ``results (1).jsonl``, or a results file edited after its import) stops the import before anything
of that file is stored, naming both files and lines; the same reply twice is fine. A request file whose manifest
is missing is named as such, not read as a results file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..durable import write_text_atomic
from ..errors import SrtHfError
from .http import _MalformedReply, parse_reply

CHAT_URL = "/v1/chat/completions"
LEDGER = "imported.json"
_ROUND = re.compile(r"^(?P<stage>.+)-round(?P<round>\d+)$")
#: error codes of lines a batch never ran (OpenAI): not failures, the request is asked again
NOT_RUN = ("batch_expired", "batch_cancelled")


class BatchFileError(SrtHfError):
    """A batch file that does not belong to this run, or cannot be read; names the file, the line and the fix."""


def body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def request_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """One line of a batch input file (OpenAI's format, which ``vllm run-batch`` reads)."""
    return {"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": body}


@dataclass
class Result:
    """One line of a results file: a reply (``text``), a failure (``error``), or a request never run (``not_run``)."""

    custom_id: str
    file: str
    line: int
    text: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    not_run: bool = False


def read_results(path: Path) -> Iterator[Result]:
    """The lines of an OpenAI or vLLM batch output (or error) file."""
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as err:
                raise BatchFileError(f"{path}, line {n}: not JSON ({err}); a results file holds one JSON object per "
                                     "line: remove the broken line or download the file again") from None
            if isinstance(obj, dict) and {"custom_id", "body"} <= obj.keys() and ("url" in obj or "method" in obj):
                manifest = path.with_name(f"{path.stem}.manifest.json")
                raise BatchFileError(
                    f"{path}, line {n}: a request line written by srt_hf, not a result: the manifest {manifest.name} of "
                    "this request file is missing. Put the manifest back, or delete the request file (and its results) "
                    "and rerun to export the requests again")
            if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str) or not ("response" in obj or "error" in obj):
                raise BatchFileError(f"{path}, line {n}: not a batch result (needs custom_id and response or error); only "
                                     "request files written by srt_hf and results files may be in the batch folder")
            yield _result(obj, path.name, n)


def _result(obj: dict[str, Any], file: str, n: int) -> Result:
    result = Result(obj["custom_id"], file, n)
    error, response = obj.get("error"), obj.get("response") or {}
    body = response.get("body") if isinstance(response, dict) else None
    status = response.get("status_code") if isinstance(response, dict) else None
    if error:
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(error)
        result.not_run = code in NOT_RUN
        result.error = f"batch error{f' {code}' if code else ''}: {message or 'no message'}"
    elif status is not None and status != 200:
        message = ((body or {}).get("error") or {}).get("message") if isinstance(body, dict) else None
        result.error = f"batch HTTP {status}: {message or str(body)[:200]}"
    else:
        try:
            reply = parse_reply(body)
        except _MalformedReply as err:
            result.error = f"batch reply malformed: {err}"
        else:
            result.text, result.finish_reason, result.usage = reply.text, reply.finish_reason, reply.usage
    return result


@dataclass
class Manifest:
    """What srt_hf recorded when it wrote a request file."""

    name: str  # the request file's name
    run: str
    stage: str
    round: int
    model: str | None
    requests: dict[str, str]  # custom_id -> body digest
    settings: dict[str, dict[str, Any]]  # custom_id -> generation settings


@dataclass
class ImportReport:
    """What an import found: failures by custom_id (for this run), and counts per results file."""

    failures: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def replies(self) -> int:
        return sum(f["replies"] for f in self.files.values())


class BatchFolder:
    """The batch folder of one run: its request files, their manifests, the results and what was imported."""

    def __init__(self, root: Path, run_id: str):
        self.root, self.run_id = Path(root), run_id

    # -- request files ---------------------------------------------------------------------------
    def manifests(self) -> list[Manifest]:
        """This run's request files, oldest round first; another run's manifest is an error."""
        found = []
        for path in sorted(self.root.glob("*.manifest.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise BatchFileError(f"{path}: unreadable manifest ({err}); delete it and its request file, then rerun") from None
            if data.get("run") != self.run_id:
                raise BatchFileError(
                    f"{path}: the batch folder {self.root} holds requests of another run (other data or other settings: "
                    f"run {data.get('run', '?')[:12]}, this run is {self.run_id[:12]}); their results would not match this "
                    "run's requests. Use a new --teacher-batch folder for this run, or rerun with the settings of that export")
            found.append(Manifest(data["file"], data["run"], data["stage"], int(data["round"]), data.get("model"),
                                  data["requests"], data.get("settings", {})))
        return sorted(found, key=lambda m: (m.stage, m.round))

    def latest(self, stage: str) -> Manifest | None:
        rounds = [m for m in self.manifests() if m.stage == stage]
        return rounds[-1] if rounds else None

    def write_round(self, stage: str, bodies: dict[str, dict[str, Any]], settings: dict[str, dict[str, Any]],
                    *, round: int | None = None) -> Path:
        """Write the manifest, then the request file, of ``stage``'s next round (or of ``round``), both atomically.

        The manifest goes first, so a request file never lies in the folder without one (it would be read as results).
        """
        latest = self.latest(stage)
        k = round if round is not None else (latest.round + 1 if latest else 1)
        path = self.root / f"{stage}-round{k}.jsonl"
        model = next(iter(bodies.values()))["model"] if bodies else None
        manifest = {"format": 1, "file": path.name, "run": self.run_id, "stage": stage, "round": k, "model": model,
                    "requests": {key: body_digest(body) for key, body in bodies.items()}, "settings": settings}
        write_text_atomic(path.with_name(f"{path.stem}.manifest.json"), json.dumps(manifest, indent=1, sort_keys=True))
        lines = "".join(json.dumps(request_line(key, body), ensure_ascii=False) + "\n" for key, body in bodies.items())
        write_text_atomic(path, lines)
        return path

    def check_unchanged(self, manifest: Manifest) -> None:
        """A request file edited after export (another model, other settings) gives results that are not this run's."""
        path = self.root / manifest.name
        if not path.exists():
            return  # deleted after it ran: its results still match the manifest
        with open(path, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                line = json.loads(raw)
                if manifest.requests.get(line.get("custom_id")) != body_digest(line.get("body") or {}):
                    raise BatchFileError(
                        f"{path}, line {n}: the request differs from the one srt_hf wrote (its body or custom_id was "
                        "edited), so its results are not this run's. Delete the file and its results and rerun to "
                        "export the requests again")

    # -- results ---------------------------------------------------------------------------------
    def results_files(self, manifests: list[Manifest]) -> list[Path]:
        own = {m.name for m in manifests}
        return [p for p in sorted(self.root.glob("*.jsonl")) if p.name not in own and not p.name.endswith(".tmp")]

    def ledger(self) -> dict[str, Any]:
        path = self.root / LEDGER
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def answered(self, manifest: Manifest) -> bool:
        """Whether results for this request file were imported."""
        return any(manifest.name in entry.get("for", []) for entry in self.ledger().values())

    def import_results(self, cache, *, tags: dict[str, Any] | None = None) -> ImportReport:
        """Fill ``cache`` from every results file not imported yet; failures of this import are in the report."""
        manifests = self.manifests()
        owner = {key: m for m in manifests for key in m.requests}
        ledger, report = self.ledger(), ImportReport()
        checked: set[str] = set()
        for path in self.results_files(manifests):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if ledger.get(path.name, {}).get("sha256") == digest:
                continue
            counts = {"replies": 0, "failed": 0, "not_run": 0, "prompt_tokens": 0, "completion_tokens": 0}
            answered: set[str] = set()
            results = list(read_results(path))
            stored = _check_write_once(path, results, cache, edited=path.name in ledger)
            for result in results:
                manifest = owner.get(result.custom_id)
                if manifest is None:
                    raise BatchFileError(
                        f"{path}, line {result.line}: custom_id {result.custom_id[:16]}… is not a request of this run's "
                        f"batch files in {self.root} (results of another run, or of other settings?). Remove {path.name} "
                        "from the folder, or import it into the run that wrote its requests")
                if manifest.name not in checked:
                    self.check_unchanged(manifest)
                    checked.add(manifest.name)
                answered.add(manifest.name)
                if result.not_run:
                    counts["not_run"] += 1
                elif result.error is not None:
                    counts["failed"] += 1
                    report.failures[result.custom_id] = f"{result.error} ({path.name}, line {result.line})"
                else:
                    counts["replies"] += 1
                    for k in ("prompt_tokens", "completion_tokens"):
                        counts[k] += result.usage.get(k, 0)
                    meta = {"settings": manifest.settings.get(result.custom_id, {}),
                            "finish": "length" if result.finish_reason == "length" else "stop", "source": "batch",
                            "usage": result.usage, "stage": manifest.stage, "batch_file": manifest.name,
                            "results": f"{path.name}:{result.line}", "body": manifest.requests[result.custom_id],
                            **(tags or {})}
                    if result.custom_id not in stored:  # the same reply imported before keeps its origin
                        cache.put(result.custom_id, result.text or "", meta)
                    report.failures.pop(result.custom_id, None)
            ledger[path.name] = {"sha256": digest, "for": sorted(answered), **counts}
            report.files[path.name] = counts
            write_text_atomic(self.root / LEDGER, json.dumps(ledger, indent=1, sort_keys=True))
        return report


def _reply_digest(text: str | None, finish: str | None) -> str:
    return hashlib.sha256(json.dumps([text or "", "length" if finish == "length" else "stop"]).encode()).hexdigest()


def _check_write_once(path: Path, results: list[Result], cache, *, edited: bool) -> set[str]:
    """Stop before storing anything of ``path`` if it answers a request that already has another imported reply
    (in the cache, from a batch, or earlier in this file); returns the requests whose same reply is already stored."""
    seen: dict[str, tuple[str, str]] = {}  # custom_id -> (reply digest, "file, line N") of this file
    stored: set[str] = set()
    for result in results:
        if result.error is not None:
            continue  # a failure replaces nothing: the request is asked again
        digest = _reply_digest(result.text, result.finish_reason)
        where = f"{path.name}, line {result.line}"
        earlier = seen.get(result.custom_id)
        if earlier is None:
            entry = cache.get_entry(result.custom_id)
            if entry is not None and entry[1].get("source") == "batch":
                origin = str(entry[1].get("results", "?")).rsplit(":", 1)
                earlier = (_reply_digest(entry[0], entry[1].get("finish")),
                           f"{origin[0]}, line {origin[1]}" if len(origin) == 2 else origin[0])
                if earlier[0] == digest:
                    stored.add(result.custom_id)
        if earlier is not None and earlier[0] != digest:
            same_file = earlier[1].split(",")[0] == path.name
            fix = (f"{path.name} was edited after it was imported: put it back as it was, or move it out of the folder"
                   if same_file and edited else f"keep one of the two files and delete the other ({path.name} or "
                   f"{earlier[1].split(',')[0]}), then rerun")
            raise BatchFileError(
                f"{path.parent / where}: custom_id {result.custom_id[:16]}… answers a request that already has another "
                f"reply ({earlier[1]}{', as imported before' if same_file else ''}); a request's reply is written once. "
                f"Fix: {fix}")
        seen.setdefault(result.custom_id, (digest, where))
    return stored


__all__ = ["BatchFileError", "BatchFolder", "ImportReport", "Manifest", "Result", "body_digest", "read_results", "request_line"]
