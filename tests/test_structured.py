"""Structured reflections: the JSON layout where the teacher can enforce a schema, the marker layout where it cannot."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from fault_server import FaultServer

from srt_hf.errors import ConfigError
from srt_hf.parsing import json_schema
from srt_hf.reflection import InstructionReflection, ResponseReflection
from srt_hf.teachers import EndpointTeacher, GenerationConfig, LocalTeacher

FAST = GenerationConfig(backoff_base=0.01, backoff_max=0.05, timeout=5.0, max_retries=2)
ROWS = [{"instruction": f"Describe item-{i}.", "input": "", "output": f"item-{i}."} for i in range(4)]


def dataset() -> Dataset:
    return Dataset.from_list(ROWS)


def test_a_structured_server_answers_json_review_first():
    with FaultServer() as server:
        transform = InstructionReflection(EndpointTeacher(server.url, model="m", config=FAST))
        out = dataset().map(transform, batched=True)
    assert out["instruction_reflection_status"] == ["ok"] * 4
    assert all(v.startswith("Explain the topic step by step") for v in out["instruction_reflected"])
    assert server.requests == 4 and transform.counts["layout_json"] == 4
    body = server.log[0]["body"]
    assert body["response_format"]["json_schema"]["schema"] == json_schema("instruction")
    assert list(json_schema("instruction")["properties"]) == ["review", "new_instruction", "new_answer"]  # the paper's order
    assert "JSON" in body["messages"][0]["content"] and "[New Instruction]" not in body["messages"][0]["content"]


def test_a_server_without_response_format_falls_back_to_markers():
    """transformers serve answers 400 to response_format: detected on the first request, then markers for all."""
    with FaultServer(structured="reject") as server:
        transform = ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST))
        out = dataset().map(transform, batched=True)
        marker_requests = [e for e in server.log if "response_format" not in e["body"] and "guided_json" not in e["body"]]
    assert out["response_reflection_status"] == ["ok"] * 4
    assert transform.counts["layout_markers"] == 4 and "layout_json" not in transform.counts
    assert transform.teacher.structured_dialect == "unsupported"
    # on the first row only: one probe per dialect, then the same JSON prompt without one (is any request answered?)
    assert len(marker_requests) == 1 + 4 and server.requests == 4 + 1 + 4
    assert "[Better Answer]" not in marker_requests[0]["body"]["messages"][0]["content"]
    assert "[Better Answer]" in marker_requests[1]["body"]["messages"][0]["content"]


def test_structured_json_stops_when_the_teacher_cannot():
    with FaultServer(structured="reject") as server:
        transform = ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="json")
        with pytest.raises(ConfigError, match="--structured json"):
            dataset().map(transform, batched=True)


def test_structured_off_and_own_marker_prompts_use_markers():
    with FaultServer() as server:
        off = ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off")
        own = ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST),
                                 template="Improve: {{ instruction }} / {{ response }}\n[Better Answer]\n…\n[End]")
        dataset().map(off, batched=True)
        dataset().map(own, batched=True)
    assert off.json_templates is None and own.json_templates is None
    assert not any("response_format" in e["body"] for e in server.log)


def test_local_teacher_follows_the_schema(tiny_model_dir):
    teacher = LocalTeacher(str(tiny_model_dir), config=GenerationConfig(max_new_tokens=12, batch_size=2), device="cpu")
    messages = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    replies = teacher.generate(messages, schema=json_schema("response"))
    # a random model under the grammar can only write the object's opening: keys in order, nothing else
    assert all(r.text.startswith('{"review":"') for r in replies), [r.text for r in replies]
    finished = [r for r in replies if r.ok]
    assert all(set(json.loads(r.text)) == {"review", "better_answer"} for r in finished)
    assert all(r.ok or r.status.startswith("truncated: ") for r in replies)


def test_without_llguidance_the_error_names_the_extra(monkeypatch):
    import re
    import sys
    from pathlib import Path

    from srt_hf.teachers import structured

    monkeypatch.setitem(sys.modules, "llguidance", None)  # import llguidance -> ImportError
    with pytest.raises(ConfigError, match=re.escape('pip install "srt-hf[structured]"')):
        structured._llguidance()
    assert not structured.available_locally()
    # every `srt-hf[extra]` the code, recipes and README name is an extra of pyproject.toml
    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    extras = set(re.findall(r"^(\w+) = \[", pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0], re.M))
    texts = [p.read_text() for p in [*root.glob("srt_hf/**/*.py"), *root.glob("recipes/**/*"), root / "README.md"] if p.is_file()]
    named = {e for t in texts for group in re.findall(r"srt-hf\[([\w,]+)\]", t) for e in group.split(",")}
    assert {"structured", "peft", "liger"} <= named and named <= extras


def test_the_grammar_on_a_thread_pool_masks_as_row_by_row(tiny_model_dir, monkeypatch):
    """Many cores: the rows' masks come from llguidance's pool; they equal the one-row-at-a-time masks."""
    import torch

    from srt_hf.models import load_tokenizer
    from srt_hf.teachers.structured import JSONGrammar

    tokenizer, schema = load_tokenizer(tiny_model_dir), json_schema("instruction", review_max_length=50)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    serial = JSONGrammar(tokenizer, schema, batch_size=8, prompt_length=2)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    pooled = JSONGrammar(tokenizer, schema, batch_size=8, prompt_length=2)
    assert serial._executor is None and pooled._executor is not None
    ids = torch.zeros(8, 2, dtype=torch.long)
    for step in range(12):
        a = serial(ids, torch.zeros(8, len(tokenizer)))
        b = pooled(ids, torch.zeros(8, len(tokenizer)))
        assert torch.equal(a, b), step
        ids = torch.cat([ids, (a + torch.arange(len(tokenizer)) * 1e-6).argmax(-1, keepdim=True)], 1)  # allowed tokens
    assert (a[0] > float("-inf")).sum() < len(tokenizer)  # the grammar is masking something


@pytest.mark.parametrize("vocab", [70, 96, 130])  # inside the last mask word, on its edge, past the mask (padded vocab)
def test_the_token_bitmask_masks_as_llguidance_does(vocab):
    """srt_hf's plain-op mask (no torch.compile) leaves exactly the tokens llguidance's packed bits allow."""
    import torch

    from srt_hf.teachers.structured import apply_token_bitmask

    generator = torch.Generator().manual_seed(vocab)
    mask = torch.randint(-(2**31), 2**31 - 1, (3, 3), dtype=torch.int32, generator=generator)  # bits for 96 tokens
    scores = torch.randn(3, vocab, generator=generator)
    ours = scores.clone()
    apply_token_bitmask(ours, mask)
    for row in range(3):
        for token in range(vocab):
            allowed = token < 96 and (int(mask[row, token // 32]) >> (token % 32)) & 1
            assert ours[row, token] == (scores[row, token] if allowed else float("-inf"))
