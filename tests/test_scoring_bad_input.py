"""Bad input: every row comes back with a documented status, or the run stops with an error naming the fix."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset

from srt_hf import IFDScorer, InputError
from srt_hf.student.engines import span_losses
from srt_hf.student.spans import Span

GOOD = {"instruction": "Name a primary colour.", "input": "", "output": "Red."}


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return IFDScorer(student=str(tiny_model_dir), preset="reflection")


def score(scorer, rows):
    out = Dataset.from_list(rows).map(scorer, batched=True)
    assert len(out) == len(rows)  # nothing is ever dropped
    return out[:]


def test_missing_column_is_an_error_naming_column_and_fix(scorer):
    with pytest.raises(InputError, match=r"response_column.*--response-column"):
        Dataset.from_list([{"instruction": "x", "answer": "y"}]).map(scorer, batched=True)


@pytest.mark.parametrize(
    "row, status",
    [
        ({"instruction": None, "input": "", "output": "x"}, "invalid: 'instruction' is None"),
        ({"instruction": "x", "input": "", "output": None}, "invalid: 'output' is None"),
        ({"instruction": "   ", "input": "", "output": "x"}, "invalid: empty instruction"),
        ({"instruction": "x", "input": "", "output": ""}, "skipped: empty response"),
        ({"instruction": "x", "input": {"a": 5}, "output": "y"}, "invalid: 'input' is not a string (dict)"),
    ],
)
def test_bad_values_get_a_status(scorer, row, status):
    rows = [GOOD, dict(row.items()), GOOD]
    result = scorer({k: [r[k] for r in rows] for k in rows[0]})
    assert result["score_status"] == ["ok", status, "ok"]
    assert math.isnan(result["ifd"][1]) and result["ifd"][0] == result["ifd"][2]


def test_over_length_rows(tiny_model_dir):
    long_row = {"instruction": "Summarise.", "input": "", "output": "word " * 200}
    reflection = IFDScorer(student=str(tiny_model_dir), preset="reflection", max_length=64, rifd=False)
    out = score(reflection, [long_row, GOOD])
    assert out["score_status"] == ["ok", "ok"]  # truncated and scored, as the reference does
    with_rifd = IFDScorer(student=str(tiny_model_dir), preset="reflection", max_length=64)
    out = score(with_rifd, [long_row])  # the reverse prompt holds the whole response: nothing of Q fits
    assert out["score_status"][0] == "skipped: no token to score for loss_Q_cond, loss_Q_direct (truncated to max_length 64)"
    assert out["ifd"][0] > 0
    cherry = IFDScorer(student=str(tiny_model_dir), preset="cherry", max_length=64)
    out = score(cherry, [long_row, GOOD])
    assert out["score_status"][0] == "skipped: prompt + response longer than max_length (64 tokens)"
    assert math.isnan(out["ifd"][0]) and out["loss_A_cond"][0] > 0  # losses are still reported
    long_prompt = {"instruction": "Summarise. " * 100, "input": "", "output": "Short."}
    out = score(reflection, [long_prompt])
    assert out["score_status"][0].startswith("skipped: no token to score for loss_A_cond")


def test_a_one_token_answer_says_why_it_has_no_direct_loss(scorer):
    """'4' is one token: the direct pass (the response alone) has nothing before it to predict it from."""
    out = score(scorer, [{"instruction": "What is 2+2?", "input": "", "output": "4"}, GOOD])
    assert out["score_status"] == ["skipped: no token to score for loss_A_direct (the text is a single token, and a text's "
                                   "first token is never scored: nothing comes before it)", "ok"]
    assert not math.isnan(out["loss_A_cond"][0])  # the conditioned loss is there


def test_response_inside_the_prompt_is_labelled_at_its_last_occurrence(scorer):
    row = {"instruction": "Repeat after me: Please repeat this.", "input": "", "output": "Please repeat this."}
    out = score(scorer, [row])
    enc = scorer.tokenizer
    from srt_hf.templates import format_prompt

    prompt = format_prompt("vicuna", row["instruction"], "")
    ids = tuple(enc(prompt + row["output"])["input_ids"])
    expected = span_losses(scorer.model, [Span(ids, len(enc(prompt)["input_ids"]))])[0]
    assert out["loss_A_cond"][0] == pytest.approx(expected, rel=1e-6)


def test_unicode_emoji_and_duplicates(scorer):
    rows = [
        {"instruction": "计算 12 乘以 8。", "input": "", "output": "12 × 8 = 96。"},
        {"instruction": "Reply with an emoji.", "input": "", "output": "🎉🙂"},
        GOOD,
        GOOD,
    ]
    out = score(scorer, rows)
    assert out["score_status"] == ["ok"] * 4
    assert all(math.isfinite(v) for v in out["ifd"] + out["rifd"])
    assert out["ifd"][2] == out["ifd"][3] and out["rifd"][2] == out["rifd"][3]


def test_a_student_that_overflows_says_so_and_gives_no_ratio(tiny_model_dir, tmp_path):
    """Losses that are inf / NaN although tokens were scored come from the arithmetic (float16 here), not the row."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(6e4)  # the final hidden states pass float16's largest number in the head
        model.lm_head.weight.mul_(100)
    model.save_pretrained(tmp_path / "hot")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "hot")
    out = score(IFDScorer(student=str(tmp_path / "hot"), preset="reflection", dtype="float16", engine="plain"), [GOOD])
    status = out["score_status"][0]
    assert status.startswith("skipped: loss_A_cond, ") and " are not finite in float16 (the student's arithmetic overflowed)" in status
    assert status.endswith("score in bfloat16 or float32")
    assert math.isnan(out["ifd"][0]) and math.isnan(out["rifd"][0])


def test_a_student_with_few_positions_cuts_texts_at_its_limit(short_gpt2_dir, caplog):
    """GPT-2's learned position table has no row past ``n_positions``: a preset's longer default is lowered to it
    (one warning), an explicit longer setting is an error naming the fix; DiverseEvol's embedder cuts there too."""
    from srt_hf import ConfigError, Embedder

    long = {"instruction": "Explain " + "very " * 150 + "carefully.", "input": "", "output": "Because " * 150}
    with caplog.at_level("WARNING", logger="srt_hf"):
        out = score(IFDScorer(student=str(short_gpt2_dir), preset="reflection"), [GOOD, long])
    assert "GPT2LMHeadModel holds 128 positions: texts are cut at 128 tokens, not the default 2048 of `max_length` (--max-length)" in caplog.text
    assert out["score_status"][0] == "ok" and math.isfinite(out["ifd"][0])
    assert "truncated to max_length 128" in out["score_status"][1]
    with pytest.raises(ConfigError, match=r"`max_length` \(--max-length\) 4096 is more than the 128 positions GPT2LMHeadModel holds.*128 or less"):
        score(IFDScorer(student=str(short_gpt2_dir), preset="reflection", max_length=4096), [GOOD])
    embedder = Embedder(model=str(short_gpt2_dir), text="alpaca")
    assert embedder.token_limit() == 128 and len(embedder.token_ids(read_example(long))) == 128
    assert Dataset.from_list([long]).map(embedder, batched=True)["embedding_status"] == ["ok"]


def read_example(row: dict):
    from srt_hf.formats import detect_format, read_batch

    batch = {k: [v] for k, v in row.items()}
    return read_batch(batch, detect_format(list(batch)))[0]
