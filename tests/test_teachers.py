"""Teachers: retries per fault kind, Retry-After, the concurrency bound, failover, the response cache,
pickling, and the local teacher. Servers are fault servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fault_server import FaultServer, free_port

from srt_hf.errors import ConfigError, TeacherError
from srt_hf.teachers import EndpointTeacher, GenerationConfig, LocalTeacher, load_teacher, parse_retry_after

FAST = dict(backoff_base=0.01, backoff_max=0.05, timeout=2.0, max_retries=3)


def convs(n: int, tag: str = "q") -> list[list[dict]]:
    return [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]


@pytest.fixture
def server():
    with FaultServer() as s:
        yield s


# -- retries ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["500", "503", "429", "malformed", "drop", "slow:1.5"])
def test_each_fault_kind_is_retried(server, fault):
    config = GenerationConfig(**{**FAST, "timeout": 0.5})
    teacher = EndpointTeacher(server.url, model="m", config=config)
    server.faults.extend([fault, fault])
    [completion] = teacher.generate(convs(1))
    assert completion.status == "ok" and completion.text
    assert completion.attempts == 3 and server.requests == 3
    assert teacher.stats.as_dict() == {"requests_sent": 3, "retried": 2, "failed": 0, "cache_hits": 0, "completed": 1, "truncated": 0, "prompt_tokens": 1, "completion_tokens": 1, "oversized": 0}


def test_retries_run_out_into_a_status(server):
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
    server.failure_rate = 1.0
    [completion] = teacher.generate(convs(1))
    assert completion.status == "request_failed: HTTP 500"
    assert completion.text is None and completion.attempts == 4 and server.requests == 4
    assert teacher.stats.failed == 1 and teacher.stats.retried == 3


def test_client_errors_are_not_retried(server):
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
    server.faults.append("400")
    [completion] = teacher.generate(convs(1))
    assert completion.status == "request_failed: HTTP 400 (injected 400)"
    assert completion.attempts == 1 and server.requests == 1


@pytest.mark.parametrize("code, setting", [("401", "--teacher-api-key-env"), ("403", "--teacher-api-key-env"), ("404", "--teacher-model")])
def test_credential_and_model_errors_stop_the_run(server, code, setting):
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
    server.faults.append(code)
    with pytest.raises(TeacherError) as err:
        teacher.generate(convs(3))
    assert f"HTTP {code} (injected {code})" in str(err.value) and setting in str(err.value)  # the server's words, the fix
    assert server.requests <= 3  # no retries


def test_dead_server_trips_the_breaker_quickly():
    config = GenerationConfig(backoff_base=0.05, backoff_max=0.2, max_retries=5, breaker_failures=6)
    teacher = EndpointTeacher(f"http://127.0.0.1:{free_port()}", model="m", config=config)
    t0 = time.monotonic()
    with pytest.raises(TeacherError, match="failed 6 requests in a row .last: connection failed"):
        teacher.generate(convs(2))
    assert time.monotonic() - t0 < 5.0


def test_timeout_is_ours(server, caplog):
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**{**FAST, "timeout": 0.3, "max_retries": 1}))
    server.faults.extend(["slow:2", "slow:2"])
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="srt_hf"):
        [completion] = teacher.generate(convs(1))
    assert completion.status == "request_failed: timeout after 0.3s"
    assert time.monotonic() - t0 < 1.5  # two 0.3 s attempts, not the server's 2 s
    assert "timeout after 0.3s; retrying (attempt 2 of 2)\n" in caplog.text  # nothing answered: not a queue, no hint


@pytest.mark.parametrize("header", ["1", "date"])
def test_retry_after_is_honoured(server, header):
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
    value = email.utils.formatdate(time.time() + 2, usegmt=True) if header == "date" else header
    server.faults.append(f"429:{value}")
    [completion] = teacher.generate(convs(1))
    first, retry = server.log
    assert completion.ok and completion.attempts == 2
    if header == "date":  # the retry came no earlier than the date the server named
        assert retry["wall"] >= email.utils.parsedate_to_datetime(value).timestamp() - 0.05
        assert retry["time"] - first["time"] >= 0.3
    else:
        assert retry["time"] - first["time"] >= 0.99


def test_retry_after_beyond_the_limit_fails_at_once(server):
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**{**FAST, "max_retry_after": 10}))
    server.faults.append("429:3600")
    [completion] = teacher.generate(convs(1))
    assert completion.status.startswith("request_failed: rate limited") and "max_retry_after" in completion.status
    assert server.requests == 1


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("  0.5 ") == 0.5
    assert 8 <= parse_retry_after(email.utils.formatdate(time.time() + 10, usegmt=True)) <= 10
    assert parse_retry_after(email.utils.formatdate(time.time() - 100, usegmt=True)) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# -- concurrency -----------------------------------------------------------------------------------
def test_concurrency_bound_is_never_exceeded(server):
    server.latency, server.jitter = 0.03, 0.01
    server.failure_rate = 0.2
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**{**FAST, "max_concurrency": 4, "max_retries": 8}))
    completions = teacher.generate(convs(40))
    assert all(c.ok for c in completions)
    assert server.max_in_flight == 4


def test_timeouts_while_others_are_answered_halve_the_concurrency(server, caplog):
    """A server that queues what it cannot run at once (llama.cpp with one slot, Ollama): the wait counts against the
    timeout. srt_hf halves its requests in flight, for the rest of the run; a server answering nothing is left alone."""
    server.faults.extend(["ok"] + ["slow:1"] * 7)
    settings = {**FAST, "timeout": 0.4, "max_concurrency": 8}
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**settings))
    with caplog.at_level("WARNING", logger="srt_hf"):
        assert all(c.ok for c in teacher.generate(convs(8)))
    assert teacher.concurrency == 4 and "4 requests at once from now on (--max-concurrency 8)" in caplog.text
    assert "retrying (attempt 2 of 4) (the server queues what it cannot run at once: raise --timeout" in caplog.text
    time.sleep(1)  # the server's threads of the abandoned requests finish
    server.reset_counts()
    server.latency = 0.05
    assert all(c.ok for c in teacher.generate(convs(12, "again")))
    assert server.max_in_flight == 4
    server.faults.extend(["slow:1"] * 4)
    silent = EndpointTeacher(server.url, model="m", config=GenerationConfig(**{**settings, "max_retries": 1, "max_concurrency": 2}))
    silent.generate(convs(2, "silent"))
    assert silent.concurrency == 2  # nothing was answered: not a queue


def test_a_stop_on_timeouts_names_the_timeout(server):
    server.faults.extend(["slow:1"] * 4)
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**{**FAST, "timeout": 0.3, "breaker_failures": 2}))
    with pytest.raises(TeacherError, match=r"last: timeout after 0.3s.*is up but slower than that needs a longer --timeout "
                                           r"\(now 0.3 s\)"):
        teacher.generate(convs(1))


def test_a_hanging_second_url_is_not_taken_for_a_queue(server):
    """Timeouts on one URL while another answers say nothing about the first one queueing: no halving."""
    with FaultServer(faults=["slow:1"] * 20) as hanging:
        teacher = EndpointTeacher([server.url, hanging.url], model="m",
                                  config=GenerationConfig(**{**FAST, "timeout": 0.3, "max_concurrency": 8}))
        assert all(c.ok for c in teacher.generate(convs(8)))
    assert teacher.concurrency == 8 and hanging.requests >= 1


def test_requests_complete_independently(server):
    """A slow request does not hold back the others (no fixed batches)."""
    server.latency = 0.02
    server.faults.append("slow:1.5")  # whichever request reaches the server first
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**{**FAST, "max_concurrency": 2}))
    timings: list[tuple[float, float]] = []  # (finished, duration)

    async def run():
        async with teacher.session() as session:
            async def one(messages):
                started = time.monotonic()
                completion = await session.complete(messages)
                timings.append((time.monotonic(), time.monotonic() - started))
                return completion

            return await asyncio.gather(*(one(m) for m in convs(16)))

    asyncio.run(run())
    timings.sort()
    assert len(timings) == 16
    assert timings[-1][1] >= 1.5  # the slow request finished last ...
    assert all(duration < 1.5 for _, duration in timings[:-1])  # ... the 15 others went through the other slot


# -- several base URLs -----------------------------------------------------------------------------
def test_failover_when_a_url_is_down(server):
    down = f"http://127.0.0.1:{free_port()}"
    teacher = EndpointTeacher([down, server.url], model="m", config=GenerationConfig(**{**FAST, "backoff_base": 5.0, "backoff_max": 10.0}))
    completions = teacher.generate(convs(10))
    assert all(c.ok for c in completions)
    assert server.requests == 10
    assert teacher.stats.retried >= 1  # the first requests met the refused URL ...
    retried = teacher.stats.retried
    again = teacher.generate(convs(10, "again"))
    assert all(c.ok and c.attempts == 1 for c in again)  # ... which is then left alone for a while
    assert teacher.stats.retried == retried


def test_load_is_spread_over_urls():
    with FaultServer(latency=0.02) as a, FaultServer(latency=0.02) as b:
        teacher = EndpointTeacher(f"{a.url},{b.url}", model="m", config=GenerationConfig(**{**FAST, "max_concurrency": 4}))
        assert all(c.ok for c in teacher.generate(convs(40)))
        assert a.requests + b.requests == 40
        assert min(a.requests, b.requests) >= 10


def test_all_urls_down_gives_statuses_not_errors():
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    teacher = EndpointTeacher(urls, model="m", config=GenerationConfig(**{**FAST, "max_retries": 2}))
    completions = teacher.generate(convs(3))
    assert [c.status for c in completions] == ["request_failed: connection failed"] * 3
    assert teacher.stats.failed == 3


def test_concurrent_failures_do_not_escalate_the_pause():
    """Sixteen requests refused at once count as one outage, not sixteen consecutive ones."""
    teacher = EndpointTeacher(f"http://127.0.0.1:{free_port()}", model="m",
                              config=GenerationConfig(backoff_base=0.05, backoff_max=20.0, max_retries=1, breaker_failures=100))
    t0 = time.monotonic()
    completions = teacher.generate(convs(16))
    assert all(c.status == "request_failed: connection failed" and c.attempts == 2 for c in completions)
    assert time.monotonic() - t0 < 5.0


# -- cache -----------------------------------------------------------------------------------------
def test_cache_hit_on_rerun(server, tmp_path):
    cache = tmp_path / "cache.sqlite"
    first = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST), cache_path=cache)
    texts = [c.text for c in first.generate(convs(5))]
    assert server.requests == 5
    second = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST), cache_path=cache)
    again = second.generate(convs(5))
    assert server.requests == 5  # nothing asked twice
    assert [c.text for c in again] == texts and all(c.cached and c.attempts == 0 for c in again)
    assert second.stats.cache_hits == 5 and second.stats.requests_sent == 0


def test_cache_key_follows_model_and_settings(server, tmp_path):
    cache = tmp_path / "cache.sqlite"
    EndpointTeacher(server.url, model="m", cache_path=cache).generate(convs(1))
    EndpointTeacher(server.url, model="m", cache_path=cache, config=GenerationConfig(temperature=0.5)).generate(convs(1))
    EndpointTeacher(server.url, model="other", cache_path=cache).generate(convs(1))
    EndpointTeacher(server.url, model="m", cache_path=cache).generate([[{"role": "user", "content": "q 0 "}]])
    assert server.requests == 4
    # the URL is not part of the key when the model is named: another server, same model, same answer
    with FaultServer() as other:
        EndpointTeacher(other.url, model="m", cache_path=cache).generate(convs(1))
        assert other.requests == 0


def test_only_successes_are_cached(server, tmp_path):
    cache = tmp_path / "cache.sqlite"
    server.failure_rate = 1.0
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**{**FAST, "max_retries": 0}), cache_path=cache)
    assert not teacher.generate(convs(1))[0].ok
    server.failure_rate = 0.0
    assert teacher.generate(convs(1))[0].ok and server.requests == 2


def test_identical_requests_in_flight_are_sent_once(server):
    server.latency = 0.05
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
    completions = teacher.generate(convs(1) * 3)
    assert server.requests == 1
    assert len({c.text for c in completions}) == 1 and all(c.ok for c in completions)


def test_cache_survives_a_new_process(server, tmp_path):
    cache = tmp_path / "cache.sqlite"
    script = textwrap.dedent(f"""
        from srt_hf.teachers import EndpointTeacher
        t = EndpointTeacher({server.url!r}, model="m", cache_path={str(cache)!r})
        print(sum(c.ok for c in t.generate([[{{"role": "user", "content": f"p {{i}}"}}] for i in range(4)])))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "4", out.stderr[-2000:]
    assert server.requests == 4
    teacher = EndpointTeacher(server.url, model="m", cache_path=cache)
    again = teacher.generate([[{"role": "user", "content": f"p {i}"}] for i in range(4)])
    assert all(c.cached for c in again) and server.requests == 4


# -- identity, pickling, tokens ----------------------------------------------------------------------
def test_identity_and_fingerprint():
    a = EndpointTeacher("http://127.0.0.1:1", model="m")
    assert a.fingerprint() == EndpointTeacher("http://127.0.0.1:2/v1", model="m").fingerprint()  # URLs do not count
    assert a.fingerprint() != EndpointTeacher("http://127.0.0.1:1", model="n").fingerprint()
    assert a.fingerprint() != EndpointTeacher("http://127.0.0.1:1", model="m", config=GenerationConfig(seed=1)).fingerprint()
    assert a.fingerprint() == EndpointTeacher("http://127.0.0.1:1", model="m", config=GenerationConfig(timeout=5)).fingerprint()
    assert a.identity()["generation"] == {"temperature": 0.0, "max_new_tokens": 1024, "top_p": 1.0, "seed": 0}
    # without a model name, the server decides: its address becomes part of the identity
    assert EndpointTeacher("http://127.0.0.1:1").fingerprint() != EndpointTeacher("http://127.0.0.1:2").fingerprint()


def test_pickle_holds_no_client_and_no_token(server):
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST), token="hf_not_a_real_token_123")
    assert teacher.generate(convs(1))[0].ok
    assert server.log[-1]["authorization"] == "Bearer hf_not_a_real_token_123"
    blob = pickle.dumps(teacher)
    assert b"hf_not_a_real_token_123" not in blob
    assert b"AsyncInferenceClient" not in blob and b"httpx" not in blob
    clone = pickle.loads(blob)
    assert clone.fingerprint() == teacher.fingerprint()
    assert clone.generate(convs(1, "clone"))[0].ok
    assert server.log[-1]["authorization"] == "Bearer hf_not_a_real_token_123"  # same process: token kept


def test_generate_inside_a_running_loop(server):
    teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))

    async def notebook_cell():
        return teacher.generate(convs(2))

    assert all(c.ok for c in asyncio.run(notebook_cell()))


def test_settings_are_sent(server):
    config = GenerationConfig(temperature=0.3, top_p=0.9, seed=7, max_new_tokens=33)
    EndpointTeacher(server.url, model="m", config=config).generate(convs(1))
    body = server.log[0]["body"]
    assert (body["model"], body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == ("m", 0.3, 0.9, 7, 33)


def test_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match="max_concurrency"):
        GenerationConfig(max_concurrency=0)
    with pytest.raises(ConfigError, match="base_urls"):
        EndpointTeacher("localhost:8000")
    with pytest.raises(ConfigError, match="seeds"):
        EndpointTeacher("http://127.0.0.1:1").settings({"seeds": 1})


def test_load_teacher_picks_the_kind():
    assert isinstance(load_teacher("http://127.0.0.1:1,http://127.0.0.1:2", model="m"), EndpointTeacher)
    assert isinstance(load_teacher("default"), LocalTeacher)
    assert load_teacher("http://127.0.0.1:1, http://127.0.0.1:2/").base_urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]


# -- local teacher ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_teacher_batches_and_caches(tiny_model_dir, tmp_path):
    config = GenerationConfig(max_new_tokens=6, batch_size=2)
    teacher = LocalTeacher(str(tiny_model_dir), config=config, cache_path=tmp_path / "cache.sqlite", device="cpu")
    conversations = convs(3) + [[{"role": "user", "content": "a much longer prompt " * 5}]]
    first = teacher.generate(conversations)
    # a random tiny model never ends by itself: every reply stops at the 6-token limit, text kept
    assert all(c.status.startswith("truncated: the reply stopped at max_new_tokens (6)") and c.text for c in first)
    assert teacher.stats.requests_sent == 4
    assert b"LlamaForCausalLM" not in pickle.dumps(teacher)
    again = LocalTeacher(str(tiny_model_dir), config=config, cache_path=tmp_path / "cache.sqlite", device="cpu")
    assert [c.text for c in again.generate(conversations)] == [c.text for c in first]
    assert again.stats.cache_hits == 4 and again._model is None  # served from the cache: never loaded
    # greedy decoding in a batch equals one prompt alone (left padding is right)
    alone = LocalTeacher(str(tiny_model_dir), config=GenerationConfig(max_new_tokens=6, batch_size=1), device="cpu")
    assert [c.text for c in alone.generate(conversations)] == [c.text for c in first]


def test_a_local_teacher_never_writes_past_its_positions(short_gpt2_dir):
    """A prompt whose reply would run past the teacher's 128 positions fails with the fix named, before decoding;
    a shorter prompt of the same batch is answered all the same."""
    teacher = LocalTeacher(str(short_gpt2_dir), config=GenerationConfig(max_new_tokens=60, batch_size=2), device="cpu")
    short, long = teacher.generate(convs(1) + [[{"role": "user", "content": "a much longer prompt " * 20}]])
    assert short.text and short.status.startswith("truncated")
    assert long.text is None and long.status.startswith("request_failed: ValueError: prompt (")
    assert "+ max_new_tokens (60) > the 128 positions GPT2LMHeadModel holds: lower --max-new-tokens" in long.status
    assert teacher.stats.failed == 1
    huge = teacher.generate([[{"role": "user", "content": "a much longer prompt " * 40}]])[0]
    assert "fills the 128 positions GPT2LMHeadModel holds: the row is too long for this teacher" in huge.status


@pytest.mark.slow
def test_local_teacher_sampling_is_seeded(tiny_model_dir):
    sampled = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=3)
    a = LocalTeacher(str(tiny_model_dir), config=sampled, device="cpu").generate(convs(2))
    b = LocalTeacher(str(tiny_model_dir), config=sampled, device="cpu").generate(convs(2))
    assert [c.text for c in a] == [c.text for c in b]
    teacher = LocalTeacher(str(tiny_model_dir), config=sampled, device="cpu")
    assert teacher.identity()["model"] == str(tiny_model_dir) and teacher.identity()["files"]
