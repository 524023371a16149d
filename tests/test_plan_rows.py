"""`plan_rows` (texts tokenized in one batch call) plans exactly as `plan_row` row by row, for every preset."""

from __future__ import annotations

import json

import pytest

from srt_hf.formats import detect_format, read_batch
from srt_hf.student.plan import Encoder, plan_row, plan_rows
from srt_hf.templates import get_preset


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    """The embedded model's tokenizer and chat template (the GPU kit's copy where the model cannot travel)."""
    from srt_hf.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def alpaca(demo_path):
    rows = [json.loads(line) for line in demo_path.read_text().splitlines() if line.strip()]
    rows += [{"instruction": "Repeat: ok ok", "input": "", "output": "ok ok"},  # the target occurs twice
             {"instruction": "Say nothing", "input": "", "output": ""},          # a skipped row
             {"instruction": "Write a loop", "input": "in JS", "output": "for (;;) {\n    break;\n}"}]
    batch = {k: [r.get(k, "") for r in rows] for k in ("instruction", "input", "output")}
    return read_batch(batch, detect_format(list(batch)))


@pytest.fixture(scope="module")
def chats():
    messages = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                 {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                 {"role": "assistant", "content": "6"}]]
    batch = {"messages": messages}
    return read_batch(batch, detect_format(list(batch)))


def one_by_one(examples, tokenizer, preset, max_length, rifd, chat=False):
    enc = Encoder(tokenizer, chat=chat)
    return [plan_row(ex, enc, preset, max_length, rifd) for ex in examples]


@pytest.mark.parametrize("name,template,max_length", [
    ("reflection", "vicuna", 2048), ("reflection", "alpaca", 2048), ("reflection", "vicuna", 48),
    ("cherry", None, 512), ("cherry", None, 40), ("superfiltering", None, 1024),
])
def test_plan_rows_equals_plan_row_per_row(name, template, max_length, tokenizer, alpaca):
    preset = get_preset(name, template)
    rifd = name == "reflection"
    expected = one_by_one(alpaca, tokenizer, preset, max_length, rifd)
    got = plan_rows(alpaca, Encoder(tokenizer), preset, max_length, rifd)
    assert got == expected
    assert any(isinstance(p, str) for p in got)  # the empty response's status came through too
    if max_length < 64:
        assert any(p.cut for p in got if not isinstance(p, str))  # truncation was exercised


def test_plan_rows_chat_preset(tokenizer, chats):
    preset = get_preset("chat")
    expected = one_by_one(chats, tokenizer, preset, 2048, True, chat=True)
    got = plan_rows(chats, Encoder(tokenizer, chat=True), preset, 2048, True)
    assert got == expected and all(not isinstance(p, str) for p in got)


def test_one_tokenizer_call_for_the_whole_batch(tokenizer, alpaca):
    calls = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, text, **kwargs):
            calls.append(text)
            return self.inner(text, **kwargs)

    enc = Encoder(Counting(tokenizer))
    calls.clear()  # the Encoder's own probes
    plan_rows(alpaca, enc, get_preset("reflection", "vicuna"), 2048, True)
    assert len(calls) == 1 and isinstance(calls[0], list) and len(calls[0]) > 3 * len(alpaca)
