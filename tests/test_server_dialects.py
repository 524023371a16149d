"""The structured-output probe against the ways real servers refuse a dialect (tests/server_kinds.py cites them).

A refusal (a 4xx, or a 5xx whose body names the request's fields) moves the probe to the next dialect, is
remembered, and is never counted by the circuit breaker; a server that is down is; a fatal stop quotes the
server's own words.
"""

from __future__ import annotations

import json

import pytest
from fault_server import FaultServer
from server_kinds import EXPECTED_DIALECT, KINDS, answer_of

from srt_hf.errors import ConfigError, TeacherError
from srt_hf.reflection import LAYOUT_JSON, LAYOUT_PROBE, ResponseReflection
from srt_hf.status import OK
from srt_hf.teachers import EndpointTeacher, GenerationConfig
from srt_hf.teachers.probe_store import PROBE_FILE, restore_probe, save_probe
from srt_hf.teachers.structured import DIALECTS, UNSUPPORTED

ROWS = {
    "instruction": ["Name the largest planet.", "Give a synonym for 'quick'.", "What does HTTP stand for?"],
    "input": ["", "", ""],
    "output": ["Jupiter.", "Fast.", "HyperText Transfer Protocol."],
}


def _teacher(url: str, **settings) -> EndpointTeacher:
    # breaker_failures=1: a single counted failure would stop the run, so a refusal must never count
    config = GenerationConfig(**{"max_retries": 3, "breaker_failures": 1, "timeout": 10, "backoff_base": 0.0, **settings})
    return EndpointTeacher(url, model="m", config=config)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_server_kind_gets_its_own_dialect_without_tripping_the_breaker(kind):
    with FaultServer(kind=kind) as server:
        teacher = _teacher(server.url)
        transform = ResponseReflection(teacher, structured="auto", record_layout=True)
        out = transform(dict(ROWS))
    expected = EXPECTED_DIALECT[kind]
    assert teacher.structured_dialect == expected
    assert out["response_reflection_status"] == [OK] * 3
    assert out["response_reflection_layout"] == [f"{LAYOUT_JSON} ({expected})"] * 3
    before = list(DIALECTS)[: list(DIALECTS).index(expected)]
    ignored = [d for d in before if answer_of(kind, DIALECTS[d]({"type": "object"}))[0] == "ignore"]
    # every dialect before the right one was asked once, refused (with the server's own words) or ignored (a reply
    # that is no JSON object), and remembered
    assert [dialect for dialect, _ in server.refusals] == [d for d in before if d not in ignored]
    for dialect in before:
        outcome = teacher.dialect_outcomes[dialect]
        if dialect in ignored:
            assert outcome == "ignored"
        else:
            assert outcome.startswith("refused: HTTP ") and ("response_format" in outcome or "Invalid value" in outcome)
    assert teacher.stats.retried == 0


def test_a_5xx_that_names_no_field_is_the_server_being_down_not_a_refusal():
    # llama-cpp-python's first answer is a plain 500 (no field named): retried, then the probe goes on as usual
    with FaultServer(kind="llama-cpp-python", faults=["500"]) as server:
        teacher = _teacher(server.url, breaker_failures=5)
        out = ResponseReflection(teacher, structured="auto")(dict(ROWS))
    assert teacher.structured_dialect == "json_object"
    assert out["response_reflection_status"] == [OK] * 3
    assert teacher.stats.retried == 1  # the plain 500 was retried; the two refusals were not


def test_a_server_that_is_down_stops_with_the_breaker_quoting_its_words():
    with FaultServer(faults=["503"] * 10) as server:
        teacher = _teacher(server.url, breaker_failures=2, max_retries=5)
        with pytest.raises(TeacherError) as caught:
            ResponseReflection(teacher, structured="off")(dict(ROWS))
    message = str(caught.value)
    assert "last: HTTP 503" in message and '"injected 503"' in message
    assert teacher.dialect_outcomes == {}


def test_a_proxy_that_refuses_every_request_has_said_nothing_about_dialects():
    # LiteLLM's proxy without its database answers every request with 400 "No connected db." (a wrong key too): the
    # probe's refusals are forgotten once the same request without a dialect is refused, and the breaker stops the run
    with FaultServer(faults=["400"] * 100) as server:
        teacher = _teacher(server.url, breaker_failures=3)
        with pytest.raises(TeacherError, match=r"failed 3 requests in a row \(last: HTTP 400.*injected 400.*; check what "
                                               r"the server says about the request \(the model: --teacher-model"):
            ResponseReflection(teacher, structured="auto")(dict(ROWS))
    assert teacher.structured_dialect is None and teacher.dialect_outcomes == {}


def test_refusals_are_not_kept_when_the_probe_ends_unanswered():
    # json_schema, tgi and json_object refused, then guided_json times out: nothing says the refusals were about dialects
    with FaultServer(structured="guided_json", faults=["ok"] * 3 + ["slow:3"]) as server:  # refusals take a fault too
        teacher = _teacher(server.url, breaker_failures=5, max_retries=0, timeout=1)
        out = ResponseReflection(teacher, structured="auto")({k: v[:1] for k, v in ROWS.items()})
        assert out["response_reflection_status"][0].startswith("request_failed: timeout")
        assert teacher.structured_dialect is None and teacher.dialect_outcomes == {}
        out = ResponseReflection(teacher, structured="auto")({k: v[1:] for k, v in ROWS.items()})
    assert teacher.structured_dialect == "guided_json" and out["response_reflection_status"] == [OK] * 2
    assert set(teacher.dialect_outcomes) == {"json_schema", "tgi", "json_object"}


def test_a_rate_limited_stop_does_not_blame_the_request():
    with FaultServer(faults=["429"] * 20) as server:
        teacher = _teacher(server.url, breaker_failures=2, max_retries=1)
        with pytest.raises(TeacherError) as caught:
            ResponseReflection(teacher, structured="off")(dict(ROWS))
    assert "rate limited (HTTP 429)" in str(caught.value) and "the server is up and the URL is right" in str(caught.value)


def test_a_fatal_status_quotes_the_server():
    with FaultServer(faults=["401"]) as server:
        with pytest.raises(TeacherError, match='HTTP 401.*injected 401'):
            ResponseReflection(_teacher(server.url), structured="off")(dict(ROWS))


def test_structured_json_stop_quotes_each_refusal():
    with FaultServer(kind="openai") as server:
        teacher = _teacher(server.url)
        teacher.dialect_outcomes["json_schema"] = "ignored"  # as if a previous run had found it ignored
        with pytest.raises(ConfigError) as caught:
            ResponseReflection(teacher, structured="json")(dict(ROWS))
    message = str(caught.value)
    assert "--structured json" in message and "Invalid value: 'json'" in message
    assert "Unrecognized request argument supplied: guided_json" in message


def test_the_probe_outcome_is_kept_and_a_resume_asks_no_probe(tmp_path):
    with FaultServer(kind="llama-cpp-python") as server:
        first = _teacher(server.url)
        ResponseReflection(first, structured="auto")(dict(ROWS))
        save_probe(first, tmp_path)
        assert (tmp_path / PROBE_FILE).is_file()
        asked = len(server.refusals)
        assert asked == 2
        again = _teacher(server.url)
        assert restore_probe(again, tmp_path)
        assert again.structured_dialect == "json_object"
        out = ResponseReflection(again, structured="auto")({k: [v + " (again)" for v in vs] for k, vs in ROWS.items()})
    assert out["response_reflection_status"] == [OK] * 3
    assert len(server.refusals) == asked  # no dialect was asked again
    other = EndpointTeacher(server.url, model="another-model")
    assert not restore_probe(other, tmp_path)  # kept per URL and model


def test_refusals_stored_by_an_older_srt_hf_are_asked_again(tmp_path):
    # an older srt_hf stored "unsupported" on refusals alone (a proxy refusing every request looked just like that)
    with FaultServer(kind="vllm") as server:
        teacher = _teacher(server.url)
        key = teacher.probe_key()
        (tmp_path / PROBE_FILE).write_text(json.dumps({key: {"dialect": UNSUPPORTED, "tried": {
            "json_schema": "refused: HTTP 400 (No connected db.)", "tgi": "ignored"}}}))
        assert restore_probe(teacher, tmp_path)
        assert teacher.structured_dialect == UNSUPPORTED and len(teacher.dialect_outcomes) == 2  # tgi answered: kept
        refused = dict.fromkeys(DIALECTS, "refused: HTTP 400 (No connected db.)")
        (tmp_path / PROBE_FILE).write_text(json.dumps({key: {"dialect": UNSUPPORTED, "tried": refused}}))
        fresh = _teacher(server.url)
        assert restore_probe(fresh, tmp_path) and fresh.structured_dialect is None and fresh.dialect_outcomes == {}
        out = ResponseReflection(fresh, structured="auto")(dict(ROWS))
        save_probe(fresh, tmp_path)
    assert fresh.structured_dialect == "json_schema" and out["response_reflection_status"] == [OK] * 3
    assert json.loads((tmp_path / PROBE_FILE).read_text())[key]["refusals_answered"] is True


def _marker_reply(messages: list[dict], body: dict) -> str:
    return ("Review: the answer is right but bare.\n\n[Better Answer]\nThe largest planet in the Solar System is "
            "Jupiter, a gas giant more than eleven times as wide as the Earth.\n[End]")


def test_a_marker_reply_to_an_ignored_probe_is_used_not_asked_again():
    with FaultServer(structured="ignore", answer=_marker_reply) as server:
        teacher = _teacher(server.url)
        out = ResponseReflection(teacher, structured="auto", record_layout=True)(dict(ROWS))
    assert teacher.structured_dialect == UNSUPPORTED
    assert out["response_reflection_status"] == [OK] * 3
    layouts = out["response_reflection_layout"]
    assert layouts.count(LAYOUT_PROBE) == 1 and layouts.count("markers") == 2
    # the probed row was asked once per dialect and never again in the marker layout; the others once each
    assert server.requests == len(DIALECTS) + 2
    assert sorted(server.per_prompt.values()) == [1, 1, len(DIALECTS)]
