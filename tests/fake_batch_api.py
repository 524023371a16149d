"""A loopback fake of the OpenAI Files and Batches endpoints, for the ``--submit openai`` tests.

    with FakeBatchAPI() as api:
        teacher = EndpointTeacher(api.url + "/v1", model="fake", api_key_env="FAKE_BATCH_KEY")
        ...                                  # srt_hf uploads a file and creates a batch
        api.finish(api.last_batch, fail={0})      # answer every line (line 0 fails with HTTP 500)
        api.finish(api.last_batch, expire_after=1)  # or: answer one line, then the batch expires

Routes: ``POST /v1/files`` (multipart, purpose=batch), ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
``GET /v1/batches/{id}``. Replies come from :func:`chat_reply` (the fault server's reflection texts), so a
batch run and an online run against the fault server get the same answers. Every request's path and
``Authorization`` header is logged.
"""

from __future__ import annotations

import email.parser
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fault_server import json_answer, reflection_answer


def chat_reply(body: dict[str, Any], *, finish_reason: str = "stop") -> dict[str, Any]:
    """The chat.completion object the fault server would answer to ``body`` (JSON layout included)."""
    messages = body.get("messages") or []
    fmt = body.get("response_format") or {}
    schema = fmt.get("json_schema", {}).get("schema") if fmt.get("type") == "json_schema" else None
    text = json_answer(messages, schema) if schema is not None else reflection_answer(messages, body)
    return {"id": "chatcmpl-batch", "object": "chat.completion", "created": 0, "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}


def output_line(request: dict[str, Any], n: int, *, fail: bool = False, finish_reason: str = "stop") -> dict[str, Any]:
    """One results line in the format vLLM's ``run-batch`` and OpenAI's batch output share."""
    if fail:
        body = {"error": {"message": "injected server error", "type": "server_error"}}
        return {"id": f"batch_req_{n}", "custom_id": request["custom_id"],
                "response": {"status_code": 500, "request_id": f"req-{n}", "body": body}, "error": None}
    return {"id": f"batch_req_{n}", "custom_id": request["custom_id"],
            "response": {"status_code": 200, "request_id": f"req-{n}", "body": chat_reply(request["body"], finish_reason=finish_reason)},
            "error": None}


def expired_line(request: dict[str, Any], n: int, ended: str = "expired") -> dict[str, Any]:
    """An error-file line of a request the batch never ran (it expired or was cancelled first)."""
    return {"id": f"batch_req_{n}", "custom_id": request["custom_id"], "response": None,
            "error": {"code": f"batch_{ended}", "message": f"The batch {ended} before this request was executed."}}


class FakeBatchAPI:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> FakeBatchAPI:
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def new_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-{next(self._ids)}"

    @property
    def last_batch(self) -> str:
        return list(self.batches)[-1]

    def requests_of(self, batch_id: str) -> list[dict[str, Any]]:
        content = self.files[self.batches[batch_id]["input_file_id"]].decode()
        return [json.loads(line) for line in content.splitlines() if line.strip()]

    def start(self, batch_id: str) -> None:
        self.batches[batch_id]["status"] = "in_progress"

    def finish(self, batch_id: str, *, fail: set[int] = frozenset(), expire_after: int | None = None,
               ended: str = "expired") -> None:
        """Run the batch: an output file (and an error file for failed or never-run lines); completed, or ``ended``
        (expired or cancelled) after ``expire_after`` lines."""
        requests = self.requests_of(batch_id)
        out, errors = [], []
        for n, request in enumerate(requests):
            if expire_after is not None and n >= expire_after:
                errors.append(expired_line(request, n, ended))
            else:
                (errors if n in fail else out).append(output_line(request, n, fail=n in fail))
        batch = self.batches[batch_id]
        for lines, field in ((out, "output_file_id"), (errors, "error_file_id")):
            if lines:
                file_id = self.new_id("file")
                self.files[file_id] = "".join(json.dumps(line) + "\n" for line in lines).encode()
                batch[field] = file_id
        batch["status"] = ended if expire_after is not None else "completed"
        batch["request_counts"] = {"total": len(requests), "completed": len(out), "failed": len(errors)}


def _handler(api: FakeBatchAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any, raw: bool = False) -> None:
            data = payload if raw else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _log(self) -> None:
            api.log.append({"method": self.command, "path": self.path, "authorization": self.headers.get("Authorization")})

        def do_GET(self) -> None:
            self._log()
            parts = self.path.strip("/").split("/")
            if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content" and parts[2] in api.files:
                self._send(200, api.files[parts[2]], raw=True)
            elif parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in api.batches:
                self._send(200, api.batches[parts[2]])
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            self._log()
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.rstrip("/") == "/v1/files":
                message = email.parser.BytesParser().parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
                fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                          for part in message.get_payload()}
                file_id = api.new_id("file")
                api.files[file_id] = fields["file"]
                self._send(200, {"id": file_id, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()),
                                 "filename": "batch.jsonl", "purpose": fields["purpose"].decode(), "status": "processed"})
            elif self.path.rstrip("/") == "/v1/batches":
                body = json.loads(raw)
                batch_id = api.new_id("batch")
                api.batches[batch_id] = {
                    "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
                    "completion_window": body["completion_window"], "status": "validating", "created_at": int(time.time()),
                    "output_file_id": None, "error_file_id": None, "metadata": body.get("metadata"),
                    "request_counts": {"total": 0, "completed": 0, "failed": 0},
                }
                self._send(200, api.batches[batch_id])
            else:
                self._send(404, {"error": {"message": "not found"}})

    return Handler
