"""Meta replies (a new text about the text, not a text) are told from real ones, and rejected in a reflection."""

from __future__ import annotations

import pytest
from fault_server import FaultServer

from srt_hf.meta_replies import meta_reason
from srt_hf.reflection import ResponseReflection
from srt_hf.status import REJECTED, kind_of
from srt_hf.teachers import EndpointTeacher, GenerationConfig


@pytest.mark.parametrize("text", [
    "This is a high-quality answer to the provided instruction.",
    "The new answer is a great example of how to explain recursion to a beginner.",
    "The response provides a clear overview of the causes of the First World War.",
    "Overall, the answer effectively covers the main steps of making bread.",
    "The instruction is clear and asks for a detailed explanation of photosynthesis.",
    "Write a high-quality answer to the improved instruction.",
    "Here is the improved instruction: describe the water cycle.",
    "Here's a JSON object that provides more details: {",
    "This is the most accurate and helpful edit.",
    "This improvement enhances the quality of the response by adding context.",
    "Your revised question meets all requirements for an effective edit request.",
    "Water boils at 100 degrees Celsius at sea level. This is a very accurate answer, based on the right facts.",
])
def test_commentary_praise_and_the_task_restated_are_meta(text):
    assert meta_reason("New Answer", text)


@pytest.mark.parametrize("text", [
    "The answer is 42.",
    "To find the answer, first check that the input is correct, then divide.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Here is an example of a haiku:\nAn old silent pond / a frog jumps in / splash, silence again.",
    "Step 3: fold the egg whites into the batter.",
    "Rewrite the following response so that it sounds more polite.",
    "Explain why the answer to 0.1 + 0.2 is not exactly 0.3 in floating point.",
    "Ice melting in your hand takes heat from the skin. This is an example of an endothermic process.",
])
def test_real_texts_pass(text):
    assert meta_reason("New Answer", text) is None


def _praise(messages: list[dict], body: dict) -> str:
    return "Review: fine.\n\n[Better Answer]\nThe answer is clear, accurate and well written.\n[End]"


# -- a meta reply is asked once more, as a parse failure is ------------------------------------------
GOOD = "Review: short.\n\n[Better Answer]\n7 is prime: its only divisors are 1 and 7.\n[End]"
ROW = {"instruction": ["Name a prime number."], "input": [""], "output": ["7"]}
FAST = GenerationConfig(max_retries=0, timeout=5)


def _praise_then_good(messages: list[dict], body: dict) -> str:
    """Praise to the first request (seed 0), a real answer to the retry (seed 1)."""
    return GOOD if body.get("seed") == 1 else _praise(messages, body)


def reflect_row(answer, **options):
    """ROW through a ResponseReflection (marker layout) on a fault server answering with ``answer``:
    (output columns, the transform, the server)."""
    with FaultServer(answer=answer, structured="reject") as server:
        transform = ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off", **options)
        out = transform(ROW)
    return out, transform, server


def test_a_meta_reply_is_asked_once_more_and_the_second_reply_is_used():
    out, transform, server = reflect_row(_praise_then_good, keep_raw_reply=True)
    assert server.requests == 2
    first, retry = (e["body"] for e in server.log)
    assert out["response_reflection_status"] == ["ok"]
    assert out["response_reflected"] == ["7 is prime: its only divisors are 1 and 7."]
    assert out["response_reflection_raw"] == [GOOD]
    assert (first["seed"], first["temperature"]) == (0, 0.0) and (retry["seed"], retry["temperature"]) == (1, 0.7)
    assert transform.counts == {"ok": 1, "parse_retries": 1, "layout_markers": 1}


def test_a_meta_reply_twice_is_rejected_after_its_retry():
    out, transform, server = reflect_row(_praise)
    assert server.requests == 2
    status = out["response_reflection_status"][0]
    assert kind_of(status) == REJECTED and status.startswith("rejected: meta reply: ") and status.endswith(" (after retry)")
    assert "talks about the answer" in status
    assert out["response_reflected"] == ["7"]  # the original is kept
    assert transform.counts == {REJECTED: 1, "parse_retries": 1, "layout_markers": 1}  # one row, counted once


def test_a_meta_reply_then_a_parse_failure_says_the_second_reason():
    def praise_then_garbage(messages: list[dict], body: dict) -> str:
        return "no markers at all" if body.get("seed") == 1 else _praise(messages, body)

    out, _, _ = reflect_row(praise_then_garbage)
    assert out["response_reflection_status"] == ["parse_failed: no [Better Answer] section (after retry)"]
    assert out["response_reflected"] == ["7"]


def test_without_retries_a_meta_reply_is_rejected_at_once():
    out, transform, server = reflect_row(_praise_then_good, retry_parse_failures=False)
    assert server.requests == 1
    status = out["response_reflection_status"][0]
    assert kind_of(status) == REJECTED and "after retry" not in status
    assert out["response_reflected"] == ["7"] and transform.counts["parse_retries"] == 0


def test_a_rerun_takes_both_replies_from_the_cache(tmp_path):
    with FaultServer(answer=_praise_then_good, structured="reject") as server:
        teacher = EndpointTeacher(server.url, model="m", config=FAST, cache_path=tmp_path / "cache.sqlite")
        first = ResponseReflection(teacher, structured="off")(ROW)
        assert server.requests == 2  # the retry's key (seed + 1) is its own: it did not get the first reply back
        again = ResponseReflection(teacher, structured="off")(ROW)
        assert server.requests == 2
    assert first == again and again["response_reflection_status"] == ["ok"]


def test_a_meta_reply_to_the_json_probe_is_not_used():
    """The server ignores response_format; its marker reply to the probe is a meta reply: the row is asked again."""
    def json_prompt_praised(messages: list[dict], body: dict) -> str:
        return _praise(messages, body) if "JSON" in messages[-1]["content"] else GOOD

    with FaultServer(answer=json_prompt_praised, structured="ignore") as server:
        transform = ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST), record_layout=True)
        out = transform(ROW)
        marker_requests = [e for e in server.log if "JSON" not in e["body"]["messages"][-1]["content"]]
    assert out["response_reflection_status"] == ["ok"]
    assert out["response_reflected"] == ["7 is prime: its only divisors are 1 and 7."]
    assert out["response_reflection_layout"] == ["markers"]
    assert len(marker_requests) == 1 and transform.counts["parse_retries"] == 0


# -- the retry in a batch file: the row waits for it ---------------------------------------------------
def _answer_round(request_file, reply) -> None:
    """Write the results of a batch file as `vllm run-batch` would, each reply from ``reply(body)``."""
    import json

    lines = []
    for n, line in enumerate(request_file.read_text().splitlines()):
        request = json.loads(line)
        message = {"role": "assistant", "content": reply(request["body"])}
        body = {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": request["body"]["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}
        lines.append({"id": f"batch_req_{n}", "custom_id": request["custom_id"], "error": None,
                      "response": {"status_code": 200, "request_id": f"req-{n}", "body": body}})
    results = request_file.with_name(f"{request_file.stem}.results.jsonl")
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _batch_run(tmp_path):
    """One run of the response stage through batch files: (output columns, the round's file or None, transform)."""
    from srt_hf.errors import BatchPending
    from srt_hf.teachers.batch_teacher import BatchConfig, BatchMode

    teacher = EndpointTeacher("http://127.0.0.1:9/v1", model="fake", config=FAST, cache_path=tmp_path / "cache.sqlite")
    mode = BatchMode(BatchConfig(teacher_batch=str(tmp_path / "batches")), teacher, run_dir=tmp_path, run_id="run-a")
    mode.start()
    transform = ResponseReflection(mode.teacher, structured="off")
    out = transform(ROW)
    try:
        mode.after_stage("teacher")
    except BatchPending as stop:
        return out, stop.files[0], transform
    return out, None, transform


def test_a_retry_that_goes_into_a_batch_file_makes_the_row_wait(tmp_path):
    import json

    out, round1, _ = _batch_run(tmp_path)
    assert kind_of(out["response_reflection_status"][0]) == "pending"
    _answer_round(round1, lambda body: _praise(body["messages"], body))

    out, round2, transform = _batch_run(tmp_path)  # the first reply is a meta reply: its retry goes into round 2
    assert kind_of(out["response_reflection_status"][0]) == "pending" and out["response_reflected"] == ["7"]
    assert transform.counts["parse_retries"] == 1
    assert round2 is not None and round2 != round1
    [retry] = [json.loads(line)["body"] for line in round2.read_text().splitlines()]
    assert (retry["seed"], retry["temperature"]) == (1, 0.7)
    _answer_round(round2, lambda body: GOOD)

    out, nothing, transform = _batch_run(tmp_path)
    assert nothing is None
    assert out["response_reflection_status"] == ["ok"]
    assert out["response_reflected"] == ["7 is prime: its only divisors are 1 and 7."]
    assert transform.counts["parse_retries"] == 1
