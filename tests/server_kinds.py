"""How real OpenAI-compatible servers answer a ``response_format`` they do not speak (for ``FaultServer(kind=…)``).

Each kind names the structured-output dialects it obeys (srt_hf's names: ``json_schema``, ``tgi``, ``json_object``,
``guided_json``) and the status, content type and body it sends for the others. What each server really does,
and where it was read:

* ``llama-cpp-python`` (``python -m llama_cpp.server``): its request model allows ``response_format.type`` "text"
  or "json_object" (with an optional ``schema``), and its route error handler turns the validation error into
  **HTTP 500** with ``{"error": {"message": "1 validation error: {'type': 'literal_error', 'loc': ('body',
  'response_format', 'type'), 'msg': "Input should be 'text' or 'json_object'" …", "type": "internal_server_error",
  "param": null, "code": null}}``. Seen against the real server (llama-cpp-python 0.3.36, issue 21); the ``json_object`` + ``schema`` dialect is
  abetlen/llama-cpp-python PR #1122 ("Add json schema mode"). Extra body fields such as ``guided_json`` are ignored.
* ``llama.cpp`` (``llama-server``, C++, current builds): ``response_format`` "json_schema" (its ``json_schema.schema``)
  and "json_object" (with an optional ``schema``) are obeyed; any other type is **HTTP 400** ``{"error": {"code":
  400, "message": "response_format type must be one of \\"text\\" or \\"json_object\\", but got: json", "type":
  "invalid_request_error"}}`` (tools/server/server-common.cpp throws ``std::invalid_argument``, which server.cpp
  answers with 400). Seen against the real server (built from the llama.cpp vendored in llama-cpp-python 0.3.36,
  on the embedded GGUF); extra body fields such as ``guided_json`` are ignored.
* ``llama.cpp-2024`` (``llama-server`` builds of 2024, before json_schema): **HTTP 500** ``{"error": {"code": 500, "message":
  "response_format type must be one of \\"text\\" or \\"json_object\\", but got: json_schema", "type":
  "server_error"}}`` (ggml-org/llama.cpp issue #9522; ikawrakow/ik_llama.cpp issue #778); ``json_object`` takes a
  ``schema`` field.
* ``vllm``: the chat request is a pydantic model whose ``response_format.type`` is a Literal ("text",
  "json_object", "json_schema", "structural_tag"); a request that fails validation gets **HTTP 400** with vLLM's
  ``ErrorResponse`` (vllm/entrypoints/openai/api_server.py, its ``RequestValidationError`` handler;
  vllm/exceptions.py ``VLLMValidationError``: "HTTP status code to return (default: 400)"). ``guided_json`` is the
  older guided-decoding field.
* ``sglang``: ``ResponseFormat.type: Literal["text", "json_object", "json_schema"]``
  (python/sglang/srt/entrypoints/openai/protocol.py); python/sglang/srt/entrypoints/http_server.py "Override[s]
  FastAPI's default 422 validation error with 400": **HTTP 400**, ``{"object": "error", "message": "<pydantic
  errors>", "type": "Bad Request", "code": 400}``.
* ``tgi`` (text-generation-inference before json_schema support): ``response_format`` is a serde enum tagged by
  ``type`` ("json" or "regex" with a ``value``); axum's JSON extractor refuses anything else with **HTTP 422** and a
  plain-text body "Failed to deserialize the JSON body into the target type: response_format: …"
  (huggingface/text-generation-inference issue #2899, huggingface/huggingface_hub issue #2744; json_schema came
  later: text-generation-inference PR #3276).
* ``openai``: **HTTP 400** ``{"error": {"message": "Invalid value: 'json'. Supported values are: 'json_object',
  'json_schema', and 'text'.", "type": "invalid_request_error", "param": "response_format.type", "code":
  "invalid_value"}}`` (as quoted in epuerta9/deep-research-py issue #19); an unknown top-level field gets 400
  "Unrecognized request argument supplied".
* ``ollama`` (its OpenAI-compatible ``/v1/chat/completions``, 0.5 and later): refuses nothing. Go's JSON decoding
  drops unknown fields (``guided_json``, TGI's ``value``), and ``openai/openai.go`` maps only ``response_format.type``
  "json_schema" (to the schema) and "json_object" (to JSON mode, without a schema); any other type is ignored.
* ``ollama-0.4`` (before structured outputs, Ollama 0.5): the same, but only "json_object" is mapped (JSON mode).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

_TYPE_OF = {"json_schema": "json_schema", "tgi": "json", "json_object": "json_object"}


def dialect_of(body: dict) -> str | None:
    """Which srt_hf dialect a request body uses (None: no structured output asked)."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        return {"json_schema": "json_schema", "json": "tgi", "json_object": "json_object"}.get(fmt.get("type"), "other")
    return "guided_json" if "guided_json" in body else None


@dataclass(frozen=True)
class ServerKind:
    """A server's structured-output behaviour: the dialects it obeys, and its answer to the others."""

    obeys: tuple[str, ...]
    # (dialect, body) -> (status, content type, body); None: it refuses nothing, what it does not obey it ignores
    refuse: Callable[[str, dict], tuple[int, str, str]] | None = None
    ignores: tuple[str, ...] = ()  # dialects it accepts without enforcing (extra fields dropped)


def _json(status: int, payload: dict) -> tuple[int, str, str]:
    return status, "application/json", json.dumps(payload)


def _llama_cpp_python(dialect: str, body: dict) -> tuple[int, str, str]:
    got = (body.get("response_format") or {}).get("type")
    # the shape llama-cpp-python 0.3.36 sent here (pydantic's error list, then a traceback line)
    message = (f"1 validation error:\n  {{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': "
               f"\"Input should be 'text' or 'json_object'\", 'input': '{got}'}}\n\n  File \"llama_cpp/server/app.py\", "
               "in create_chat_completion\n    POST /v1/chat/completions")
    return _json(500, {"error": {"message": message, "type": "internal_server_error", "param": None, "code": None}})


def _llama_cpp(dialect: str, body: dict) -> tuple[int, str, str]:
    got = (body.get("response_format") or {}).get("type")
    message = f'response_format type must be one of "text" or "json_object", but got: {got}'
    return _json(400, {"error": {"code": 400, "message": message, "type": "invalid_request_error"}})


def _llama_cpp_2024(dialect: str, body: dict) -> tuple[int, str, str]:
    got = (body.get("response_format") or {}).get("type")
    message = f'response_format type must be one of "text" or "json_object", but got: {got}'
    return _json(500, {"error": {"code": 500, "message": message, "type": "server_error"}})


def _vllm(dialect: str, body: dict) -> tuple[int, str, str]:
    got = (body.get("response_format") or {}).get("type")
    message = ("1 validation error for ChatCompletionRequest\nresponse_format.type\n  Input should be 'text', "
               f"'json_object', 'json_schema' or 'structural_tag' [type=literal_error, input_value='{got}']")
    return _json(400, {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400})


def _sglang(dialect: str, body: dict) -> tuple[int, str, str]:
    got = (body.get("response_format") or {}).get("type")
    message = (f"1 validation error: {{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': "
               f"\"Input should be 'text', 'json_object' or 'json_schema'\", 'input': '{got}'}}")
    return _json(400, {"object": "error", "message": message, "type": "Bad Request", "param": None, "code": 400})


def _tgi(dialect: str, body: dict) -> tuple[int, str, str]:
    got = (body.get("response_format") or {}).get("type")
    text = (f"Failed to deserialize the JSON body into the target type: response_format: unknown variant `{got}`, "
            "expected `json` or `regex` at line 1 column 412")
    return 422, "text/plain; charset=utf-8", text


def _openai(dialect: str, body: dict) -> tuple[int, str, str]:
    if dialect == "guided_json":
        return _json(400, {"error": {"message": "Unrecognized request argument supplied: guided_json",
                                     "type": "invalid_request_error", "param": None, "code": None}})
    got = (body.get("response_format") or {}).get("type")
    message = f"Invalid value: '{got}'. Supported values are: 'json_object', 'json_schema', and 'text'."
    return _json(400, {"error": {"message": message, "type": "invalid_request_error", "param": "response_format.type",
                                 "code": "invalid_value"}})


KINDS: dict[str, ServerKind] = {
    "llama-cpp-python": ServerKind(obeys=("json_object",), refuse=_llama_cpp_python, ignores=("guided_json",)),
    "llama.cpp": ServerKind(obeys=("json_schema", "json_object"), refuse=_llama_cpp, ignores=("guided_json",)),
    "llama.cpp-2024": ServerKind(obeys=("json_object",), refuse=_llama_cpp_2024, ignores=("guided_json",)),
    "vllm": ServerKind(obeys=("json_schema", "guided_json"), refuse=_vllm),
    "sglang": ServerKind(obeys=("json_schema",), refuse=_sglang, ignores=("guided_json",)),
    "tgi": ServerKind(obeys=("tgi",), refuse=_tgi, ignores=("guided_json",)),
    "openai": ServerKind(obeys=("json_schema",), refuse=_openai, ignores=("json_object",)),  # JSON mode: no schema
    "ollama": ServerKind(obeys=("json_schema", "json_object")),  # json_object: JSON mode, the prompt names the fields
    "ollama-0.4": ServerKind(obeys=("json_object",)),
}
#: the dialect srt_hf should settle on with each kind (its first one obeyed, in srt_hf's order)
EXPECTED_DIALECT = {"llama-cpp-python": "json_object", "llama.cpp": "json_schema", "llama.cpp-2024": "json_object",
                    "vllm": "json_schema",
                    "sglang": "json_schema", "tgi": "tgi", "openai": "json_schema", "ollama": "json_schema",
                    "ollama-0.4": "json_object"}


def answer_of(kind: str, body: dict) -> tuple[str, tuple[int, str, str] | None]:
    """("obey" | "ignore" | "plain", None) or ("refuse", (status, content type, body)) for a request body."""
    server = KINDS[kind]
    dialect = dialect_of(body)
    if dialect is None:
        return "plain", None
    if dialect in server.obeys:
        return "obey", None
    if dialect in server.ignores or server.refuse is None:
        return "ignore", None
    return "refuse", server.refuse(dialect, body)
