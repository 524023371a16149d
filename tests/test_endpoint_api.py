"""The endpoint teacher on a real user's path: credentials by host, OpenAI-compatible details, the served model's
identity, truncation and structured-output dialects, against loopback servers that record what they receive."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fault_server import FaultServer

from srt_hf.errors import ConfigError
from srt_hf.teachers import EndpointTeacher, GenerationConfig
from srt_hf.teachers.base import StructuredOutputUnsupported
from srt_hf.teachers.credentials import Credentials, is_hf_host, parse_header
from srt_hf.teachers.factory import endpoint_options, load_teacher
from srt_hf.teachers.http import retry_after

FAST = dict(backoff_base=0.01, backoff_max=0.05, timeout=5.0, max_retries=2)
HF_SECRET = "hf_user_token_that_must_stay_home_1234"
KEY = "sk-vllm-key-for-this-server-only-5678"
SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["review", "better_answer"],
    "properties": {"review": {"type": "string"}, "better_answer": {"type": "string"}},
}


def convs(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"question {i}"}] for i in range(n)]


@pytest.fixture
def hf_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    return HF_SECRET


# -- credentials ---------------------------------------------------------------------------------
def test_hf_token_never_reaches_another_host(hf_token):
    with FaultServer() as server:
        EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST)).generate(convs(2))
        EndpointTeacher(server.url, config=GenerationConfig(**FAST)).generate(convs(1))  # asks /v1/models too
    sent = [entry["headers"] for entry in server.log] + [entry["headers"] for entry in server.get_log]
    assert len(sent) == 4 and all("authorization" not in h for h in sent)
    assert all(HF_SECRET not in str(h) for h in sent)


def test_configured_key_and_headers_go_to_their_host(hf_token, monkeypatch):
    monkeypatch.setenv("MY_VLLM_KEY", KEY)
    with FaultServer() as server:
        options = endpoint_options("MY_VLLM_KEY", ["api-key: azure-style-key", "X-Org: team-a"], None)
        teacher = load_teacher(server.url, model="m", config=GenerationConfig(**FAST), **options)
        teacher.generate(convs(2))
    for entry in server.log:
        assert entry["headers"]["authorization"] == f"Bearer {KEY}"
        assert entry["headers"]["api-key"] == "azure-style-key" and entry["headers"]["x-org"] == "team-a"


def test_secrets_stay_out_of_pickles_reprs_identity_cache_and_logs(hf_token, tmp_path, caplog):
    cache = tmp_path / "cache.sqlite"
    with FaultServer(faults=["500"]) as server:
        teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST), cache_path=cache,
                                  api_key=KEY, headers={"api-key": "azure-secret-9"})
        with caplog.at_level(logging.DEBUG):
            teacher.generate(convs(2))
        assert server.log[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    places = {
        "pickle": pickle.dumps(teacher), "repr": repr(teacher).encode(), "identity": repr(teacher.identity()).encode(),
        "fingerprint": teacher.fingerprint().encode(), "transport": repr(teacher.transport()).encode(),
        "cache": b"".join(p.read_bytes() for p in tmp_path.iterdir()), "logs": caplog.text.encode(),
    }
    for secret in (KEY, "azure-secret-9", HF_SECRET):
        assert not [name for name, blob in places.items() if secret.encode() in blob], secret
    assert teacher.transport()["credentials"] == {"api_key": "argument", "headers": ["api-key"]}
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(teacher.credentials)


def test_credentials_by_host(hf_token, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    router = Credentials(["router.huggingface.co"])
    assert router.headers_for("https://router.huggingface.co/v1/chat/completions") == {"authorization": f"Bearer {HF_SECRET}"}
    endpoint = Credentials(["xyz.us-east-1.aws.endpoints.huggingface.cloud"])
    assert endpoint.headers_for("https://xyz.us-east-1.aws.endpoints.huggingface.cloud/v1")["authorization"] == f"Bearer {HF_SECRET}"
    openai = Credentials(["api.openai.com"])
    assert openai.headers_for("https://api.openai.com/v1/chat/completions") == {"authorization": "Bearer sk-openai"}
    assert Credentials(["my-vllm.example.com"]).headers_for("https://my-vllm.example.com/v1") == {}
    assert router.headers_for("https://elsewhere.example/v1") == {}  # a host it was not configured for
    assert not is_hf_host("https://huggingface.co.evil.example/v1") and not is_hf_host("https://my.hf.space")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        Credentials(["x"], api_key_env="NOT_SET_ANYWHERE")
    assert parse_header("API-Key:  v a l ") == ("api-key", "v a l")
    with pytest.raises(ConfigError, match="Name: value"):
        parse_header("no colon here")


class _Redirect(BaseHTTPRequestHandler):
    target = ""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(307)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_redirect_to_another_host_carries_no_key(hf_token):
    """127.0.0.1 redirects to localhost: a different host, so the key stays behind."""
    with FaultServer() as server:
        _Redirect.target = f"http://localhost:{server.port}"
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            teacher = EndpointTeacher(f"http://127.0.0.1:{httpd.server_address[1]}", model="m",
                                      config=GenerationConfig(**FAST), api_key=KEY)
            [completion] = teacher.generate(convs(1))
        finally:
            httpd.shutdown()
    assert completion.ok and len(server.log) == 1 and "authorization" not in server.log[0]["headers"]


# -- OpenAI-compatible details -------------------------------------------------------------------
def test_extra_body_is_passed_through_and_keys_the_cache(tmp_path):
    with FaultServer() as server:
        plain = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST), cache_path=tmp_path / "c.sqlite")
        tuned = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST), cache_path=tmp_path / "c.sqlite",
                                extra_body={"top_k": 20, "repetition_penalty": 1.05})
        plain.generate(convs(1))
        tuned.generate(convs(1))
    assert "top_k" not in server.log[0]["body"]
    assert server.log[1]["body"]["top_k"] == 20 and server.log[1]["body"]["repetition_penalty"] == 1.05
    assert plain.fingerprint() != tuned.fingerprint()  # other settings: asked again, not served from the cache


def test_max_completion_tokens_when_the_server_asks_for_it():
    with FaultServer(require_max_completion_tokens=True) as server:
        teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST, max_new_tokens=77))
        first = teacher.generate(convs(1))
        rest = teacher.generate(convs(3))
    assert all(c.ok for c in first + rest)
    assert server.requests == 5  # one refusal, then four answers
    assert "max_tokens" in server.log[0]["body"]
    assert all(e["body"].get("max_completion_tokens") == 77 and "max_tokens" not in e["body"] for e in server.log[1:])


def test_retry_after_ms_is_honoured():
    assert retry_after({"retry-after-ms": "1500"}) == 1.5 and retry_after({"retry-after": "2"}) == 2.0
    with FaultServer(faults=["429ms:400"]) as server:
        [completion] = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST)).generate(convs(1))
    assert completion.ok and server.requests == 2
    assert server.log[1]["time"] - server.log[0]["time"] >= 0.38


# -- identity ------------------------------------------------------------------------------------
def test_the_served_model_keys_the_cache(tmp_path):
    cache = tmp_path / "cache.sqlite"
    with FaultServer(model_id="model-a") as server:
        port = server.port
        first = EndpointTeacher(server.url, config=GenerationConfig(**FAST), cache_path=cache)
        first.generate(convs(2))
        assert first.scope()["model"] == "model-a" and server.log[0]["body"]["model"] == "model-a"
    with FaultServer(model_id="model-b", port=port) as server:  # another model behind the same URL
        second = EndpointTeacher(server.url, config=GenerationConfig(**FAST), cache_path=cache)
        replies = second.generate(convs(2))
        assert server.requests == 2 and not any(c.cached for c in replies)  # fresh replies, not model-a's
        again = EndpointTeacher(server.url, config=GenerationConfig(**FAST), cache_path=cache).generate(convs(2))
        assert server.requests == 2 and all(c.cached for c in again)
    assert pickle.loads(pickle.dumps(second)).scope()["model"] == "model-b"  # carried, not asked again


# -- truncation ----------------------------------------------------------------------------------
def test_a_reply_cut_at_the_token_limit_is_truncated_and_stays_so(tmp_path):
    cache = tmp_path / "cache.sqlite"
    with FaultServer(faults=["length"]) as server:
        teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST, max_new_tokens=64), cache_path=cache)
        first = teacher.generate(convs(2))
        [cut] = [c for c in first if not c.ok]  # whichever request reached the server first
        assert cut.status == "truncated: the reply stopped at max_new_tokens (64); raise --max-new-tokens" and cut.text
        assert teacher.stats.truncated == 1
        again = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST, max_new_tokens=64),
                                cache_path=cache).generate(convs(2))
    assert all(c.cached for c in again) and [c.status for c in again] == [c.status for c in first]
    assert server.requests == 2


# -- structured output dialects ------------------------------------------------------------------
@pytest.mark.parametrize("dialect, probes", [("json_schema", 0), ("tgi", 1), ("json_object", 2), ("guided_json", 3)])
def test_the_server_dialect_is_found_once(dialect, probes):
    with FaultServer(structured=dialect) as server:
        teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
        replies = teacher.generate(convs(4), schema=SCHEMA)
    assert teacher.structured_dialect == dialect and teacher.transport()["structured"] == dialect
    assert all(c.ok and c.text.startswith('{"review"') for c in replies)
    assert server.requests == 4 + probes  # the rejected dialects are tried on the first request only


@pytest.mark.parametrize("behaviour", ["reject", "ignore"])
def test_a_server_without_structured_output_is_detected(behaviour):
    with FaultServer(structured=behaviour) as server:
        teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
        with pytest.raises(StructuredOutputUnsupported):
            teacher.generate(convs(3), schema=SCHEMA)
        n = server.requests
        with pytest.raises(StructuredOutputUnsupported):
            teacher.generate(convs(3), schema=SCHEMA)
    # one request per dialect, and where all were refused one without a dialect (is any request answered?); remembered
    assert teacher.structured_dialect == "unsupported" and n == (4 + 1 if behaviour == "reject" else 4) and server.requests == n


def test_breaker_defaults_are_stated_in_the_help():
    help_text = GenerationConfig.__dataclass_fields__["breaker_failures"].metadata["help"]
    assert "in a row" in help_text and GenerationConfig().breaker_failures == 10 and GenerationConfig().breaker_seconds == 120


@pytest.mark.parametrize("command", ["recycle", "compare"])
def test_cli_help_states_the_teacher_defaults(command):
    import re

    from srt_hf.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    text = " ".join(sub.format_help().split())
    for flag, default in (("--timeout", "120.0"), ("--max-retries", "5"), ("--backoff-base", "0.5")):
        assert re.search(rf"{flag} \S+ [^-]*\(default: {re.escape(default)}\)", text), (flag, text)
    if command == "recycle":
        assert "resume). (default: 10)" in text and "(default: 120.0)" in text.split("--breaker-seconds")[-1]
        assert "--retry-failed, --no-retry-failed" in text and "(default: --retry-failed)" in text.split("--no-retry-failed")[-1]


def test_time_to_fail_a_dead_url_is_bounded():
    config = GenerationConfig(timeout=0.2, max_retries=3, backoff_base=0.01, backoff_max=0.05, breaker_failures=4)
    with FaultServer(faults=["slow:1"] * 20) as server:
        teacher = EndpointTeacher(server.url, model="m", config=config)
        t0 = time.monotonic()
        with pytest.raises(Exception, match="failed 4 requests in a row"):
            teacher.generate(convs(1))
    assert time.monotonic() - t0 < 3.0
