"""A fault-injecting OpenAI-compatible chat server on 127.0.0.1, for tests and the benchmark.

    with FaultServer(latency=0.2, jitter=0.05, failure_rate=0.1) as server:
        teacher = EndpointTeacher(server.url, model="fake")
        ...
        assert server.max_in_flight <= 16

Only ``POST /v1/chat/completions`` (non-streaming), ``GET /v1/models`` and ``GET /health`` exist.
Each request gets a *fault*: the next one of ``faults`` (a queue consumed in arrival order), else
``failure_kind`` with probability ``failure_rate``, else ``"ok"``. Fault kinds:

* ``ok`` — answer after ``latency ± jitter`` seconds with ``answer(messages, body)``;
* ``500`` / ``503`` / any 3-digit code — that HTTP status with a JSON error body;
* ``429`` or ``429:<retry-after>`` — rate limited, with a ``Retry-After`` header when given (``429ms:<ms>``:
  a ``retry-after-ms`` header instead);
* ``slow:<seconds>`` — answer normally, but only after that many seconds;
* ``malformed`` — status 200 with a body that is not JSON;
* ``drop`` — close the connection without answering;
* ``length`` — answer normally but with finish reason ``length`` (cut off at the token limit);
* ``reset`` — reset the connection (TCP RST) without answering;
* ``huge:<bytes>`` — status 200 with a reply whose text is that many bytes (with a Content-Length header);
  ``stream:<bytes>`` — the same sent chunked, without a Content-Length.

``model_id`` is what ``GET /v1/models`` lists. ``structured`` says how the server treats a JSON-schema
``response_format``: ``"json_schema"`` (default; also ``"tgi"``, ``"json_object"``, ``"guided_json"``) answers
requests in that dialect with a JSON object filling the schema's fields and rejects the others with 400;
``"ignore"`` answers as if it were absent; ``"reject"`` answers 400 to any ``response_format`` (as
``transformers serve`` does). ``kind`` (``"llama-cpp-python"``, ``"llama.cpp"``, ``"llama.cpp-2024"``, ``"vllm"``, ``"sglang"``, ``"tgi"``,
``"openai"``, ``"ollama"``, ``"ollama-0.4"``) instead answers structured requests as that real server does, refusals included (status, content
type and body: see tests/server_kinds.py, which cites where each was read). ``require_max_completion_tokens`` answers 400 to ``max_tokens`` (as newer
OpenAI models do). Every request's headers are logged (``log[i]["headers"]``).

Error faults answer at once unless ``fail_after_latency`` is set. The server counts requests per
prompt (the JSON of the messages) so tests can assert that nothing was asked twice, and tracks the
largest number of requests in flight at once.

Run it standalone (for a benchmark or a manual check)::

    python -m tests.fault_server --port 8123 --latency 0.2 --jitter 0.05 --failure-rate 0.1
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

try:  # tests/ is on sys.path under pytest; `python -m tests.fault_server` imports it as a package
    import server_kinds
except ImportError:  # pragma: no cover
    from tests import server_kinds  # type: ignore[no-redef]

Answer = Callable[[list[dict], dict], "str | None"]


# -- answer functions -----------------------------------------------------------------------------
def _last_user(messages: list[dict]) -> str:
    return next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")


def _tag(messages: list[dict]) -> str:
    """A short digest of the prompt, so each answer is distinct and traceable to its prompt."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:8]


def reflection_answer(messages: list[dict], body: dict) -> str:
    """A well-formed reflection: a better answer for response prompts, a new pair otherwise."""
    prompt, tag = _last_user(messages), _tag(messages)
    if "[better answer]" in prompt.lower():
        return (
            "The answer is short and skips the reasoning.\n\n[Better Answer]\n"
            f"A complete, well-organised answer (ref {tag}). Endless detail is not needed.\n[End]"
        )
    return (
        "The instruction is vague and the answer lacks detail.\n\n"
        f"[New Instruction]\nExplain the topic step by step, with one example (ref {tag}).\n[End]\n\n"
        f"[New Answer]\nStep one sets the scene; step two gives the example (ref {tag}).\n[End]"
    )


def garbage_answer(messages: list[dict], body: dict) -> str:
    return "lorem ipsum dolor sit amet, no markers at all"


def other_language_answer(messages: list[dict], body: dict) -> str:
    return "Voici une réponse en français, sans les marqueurs demandés."


def echo_answer(messages: list[dict], body: dict) -> str:
    return _last_user(messages)


def empty_answer(messages: list[dict], body: dict) -> str:
    return ""


def null_answer(messages: list[dict], body: dict) -> None:
    return None


ANSWERS: dict[str, Answer] = {
    "reflection": reflection_answer, "garbage": garbage_answer, "french": other_language_answer,
    "echo": echo_answer, "empty": empty_answer, "null": null_answer,
}


def json_answer(messages: list[dict], schema: dict) -> str:
    """A reply that fills a JSON schema's string fields, review first (what a structured server returns)."""
    tag = _tag(messages)
    texts = {
        "review": "The answer is short and skips the reasoning.",
        "new_instruction": f"Explain the topic step by step, with one example (ref {tag}).",
        "new_answer": f"Step one sets the scene; step two gives the example (ref {tag}).",
        "better_answer": f"A complete, well-organised answer (ref {tag}). Endless detail is not needed.",
    }
    return json.dumps({name: texts.get(name, f"{name} (ref {tag})") for name in schema.get("properties", {})})


_DIALECT_SCHEMA = {
    "json_schema": lambda b: (b.get("response_format") or {}).get("json_schema", {}).get("schema")
    if (b.get("response_format") or {}).get("type") == "json_schema" else None,
    "tgi": lambda b: (b.get("response_format") or {}).get("value") if (b.get("response_format") or {}).get("type") == "json" else None,
    "json_object": lambda b: (b.get("response_format") or {}).get("schema")
    if (b.get("response_format") or {}).get("type") == "json_object" else None,
    "guided_json": lambda b: b.get("guided_json"),
}


def _schema_of(server: FaultServer, body: dict) -> dict | None:
    if server.kind is not None:
        dialect = server_kinds.dialect_of(body)
        obeyed = dialect in server_kinds.KINDS[server.kind].obeys
        return _DIALECT_SCHEMA[dialect](body) if obeyed else None
    read = _DIALECT_SCHEMA.get(server.structured)
    return read(body) if read else None


def _refusal(server: FaultServer, body: dict) -> str | None:
    """Why the server answers 400 to this body (None: it does not)."""
    if server.require_max_completion_tokens and "max_tokens" in body:
        return "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    asks = "response_format" in body or "guided_json" in body
    if asks and server.kind is not None:
        return None  # the server kind answers for itself (see do_POST)
    if asks and (server.structured == "reject" or server.structured in _DIALECT_SCHEMA and _schema_of(server, body) is None):
        return "response_format is not supported"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- server ---------------------------------------------------------------------------------------
class FaultServer:
    """The server; start/stop it, or use it as a context manager."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        failure_rate: float = 0.0,
        failure_kind: str = "500",
        faults: list[str] | None = None,
        answer: Answer | str = "reflection",
        fail_after_latency: bool = False,
        port: int = 0,
        seed: int = 0,
        model_id: str = "fault-model",
        structured: str = "json_schema",
        require_max_completion_tokens: bool = False,
        kind: str | None = None,
    ):
        if kind is not None and kind not in server_kinds.KINDS:
            raise ValueError(f"unknown server kind {kind!r}; use one of {sorted(server_kinds.KINDS)}")
        self.model_id, self.structured, self.kind = model_id, structured, kind
        self.refusals: list[tuple[str | None, int]] = []  # (dialect, status) of each refusal a server kind sent
        self.require_max_completion_tokens = require_max_completion_tokens
        self.get_log: list[dict[str, Any]] = []  # GET requests: path and headers
        self.latency, self.jitter = latency, jitter
        self.failure_rate, self.failure_kind = failure_rate, failure_kind
        self.faults: collections.deque[str] = collections.deque(faults or [])
        self.answer: Answer = ANSWERS[answer] if isinstance(answer, str) else answer
        self.fail_after_latency = fail_after_latency
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.per_prompt: collections.Counter[str] = collections.Counter()
        self.log: list[dict[str, Any]] = []  # one entry per chat request: time, wall, fault, body, authorization
        self.in_flight = self.max_in_flight = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests, self.max_in_flight = 0, 0
            self.per_prompt.clear()
            self.log.clear()

    def stats(self) -> dict[str, Any]:
        """Counters, also served at ``GET /stats`` (for a server in another process)."""
        with self._lock:
            return {
                "requests": self.requests, "max_in_flight": self.max_in_flight, "distinct_prompts": len(self.per_prompt),
                "repeated_prompts": sum(1 for n in self.per_prompt.values() if n > 1),
                "faults": dict(collections.Counter(entry["fault"] for entry in self.log)),
            }

    def repeated_prompts(self) -> dict[str, int]:
        """Prompts asked more than once (the key is the JSON of the messages)."""
        return {k: n for k, n in self.per_prompt.items() if n > 1}

    # -- per-request decisions (called from handler threads) --
    def _admit(self, body: dict, authorization: str | None, headers: dict[str, str] | None = None) -> tuple[str, float]:
        with self._lock:
            self.requests += 1
            key = json.dumps(body.get("messages"), sort_keys=True)
            self.per_prompt[key] += 1
            if self.faults:
                fault = self.faults.popleft()
            elif self.failure_rate and self._rng.random() < self.failure_rate:
                fault = self.failure_kind
            else:
                fault = "ok"
            delay = max(0.0, self.latency + self._rng.uniform(-self.jitter, self.jitter))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.log.append({"time": time.monotonic(), "wall": time.time(), "fault": fault, "body": body,
                             "authorization": authorization, "headers": headers or {}})
        return fault, delay

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real inference servers

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK add ~40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def _send_huge(self, size: int, *, chunked: bool) -> None:
            head = b'{"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "'
            tail = b'"}}]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(head) + size + len(tail)))
            self.end_headers()
            pieces = [head, *([b"x" * 65536] * (size // 65536)), b"x" * (size % 65536), tail]
            for piece in pieces:
                if piece:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")

        def do_GET(self) -> None:
            with server._lock:
                server.get_log.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
            if self.path.rstrip("/") == "/health":
                self._send(200, b'{"status":"ok"}')
            elif self.path.rstrip("/") == "/stats":
                self._send(200, json.dumps(server.stats()).encode())
            elif self.path.rstrip("/") == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": server.model_id, "object": "model"}]}).encode())
            else:
                self._send(404, b'{"error":"not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, b'{"error":"not found"}')
                return
            try:
                body = json.loads(raw)
            except ValueError:
                try:
                    self._send(400, b'{"error":"request body is not JSON"}')
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a client that gave up before sending its body (a cancelled request)
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            refusal = _refusal(server, body)
            if refusal:
                server._admit(body, self.headers.get("Authorization"), headers)
                server._leave()
                self._send(400, json.dumps({"error": {"message": refusal, "type": "invalid_request_error"}}).encode())
                return
            fault, delay = server._admit(body, self.headers.get("Authorization"), headers)
            try:
                self._serve(fault, delay, body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): nothing to answer
            finally:
                server._leave()

        def _serve(self, fault: str, delay: float, body: dict) -> None:
            if fault == "ok" or fault.startswith("slow:") or server.fail_after_latency:
                time.sleep(float(fault.split(":", 1)[1]) if fault.startswith("slow:") else delay)
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "reset":
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                return
            if fault.startswith(("huge:", "stream:")):
                self._send_huge(int(fault.split(":", 1)[1]), chunked=fault.startswith("stream:"))
                return
            if fault == "malformed":
                self._send(200, b'{"choices": [ {"message": oops')
                return
            if fault.startswith("429ms:"):  # OpenAI's and Azure's header, in milliseconds
                self._send(429, b'{"error":"rate limited"}', {"retry-after-ms": fault.split(":", 1)[1]})
                return
            if fault.startswith("429"):
                retry_after = fault.split(":", 1)[1] if ":" in fault else None
                self._send(429, b'{"error":"rate limited"}', {"Retry-After": retry_after} if retry_after else None)
                return
            if re.fullmatch(r"\d{3}", fault):
                self._send(int(fault), json.dumps({"error": f"injected {fault}"}).encode())
                return
            _, refused = server_kinds.answer_of(server.kind, body) if server.kind else ("plain", None)
            if refused is not None:  # the way this kind of server refuses a dialect it does not speak
                status, content_type, text = refused
                with server._lock:
                    server.refusals.append((server_kinds.dialect_of(body), status))
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            text = server.answer(body.get("messages") or [], body)
            schema = _schema_of(server, body)
            if schema is not None and server.answer is reflection_answer:
                text = json_answer(body.get("messages") or [], schema)
            reply = {
                "id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or "fault-model",
                "choices": [{"index": 0, "finish_reason": "length" if fault == "length" else "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            self._send(200, json.dumps(reply).encode())

    return Handler


class SpawnedServer:
    """A fault server in a subprocess (no GIL shared with the client under test); same options."""

    def __init__(self, **options: Any):
        self.options = options
        self.process: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> SpawnedServer:
        args = [sys.executable, "-m", "tests.fault_server"]
        for key, value in self.options.items():
            flag = f"--{key.replace('_', '-')}"
            if isinstance(value, bool):
                args += [flag] if value else []
            else:
                args += [flag, ",".join(value) if isinstance(value, (list, tuple)) else str(value)]
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # "fault server listening on http://127.0.0.1:PORT"
        if "listening on" not in line:
            self.process.kill()
            raise RuntimeError(f"fault server did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1].strip()
        return self

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as reply:
            return json.loads(reply.read())

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process.stdout.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fault-injecting OpenAI-compatible chat server (127.0.0.1).")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--failure-rate", type=float, default=0.0)
    p.add_argument("--failure-kind", default="500")
    p.add_argument("--answer", default="reflection", choices=sorted(ANSWERS))
    p.add_argument("--faults", default="", help="Comma-separated faults for the first requests, e.g. 500,429:2,drop.")
    p.add_argument("--fail-after-latency", action="store_true", help="Error faults wait for the latency too.")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    server = FaultServer(
        latency=args.latency, jitter=args.jitter, failure_rate=args.failure_rate, failure_kind=args.failure_kind,
        answer=args.answer, port=args.port, seed=args.seed, faults=[f for f in args.faults.split(",") if f],
        fail_after_latency=args.fail_after_latency,
    )
    print(f"fault server listening on {server.url}", flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
