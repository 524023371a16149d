"""DS weight with self-consistency: answers, the vote, w and d, the quantile filter, the base-model loss."""

from __future__ import annotations

import math

import numpy as np
import pytest

from srt_hf.dsweight import (
    AnswerLoss,
    DSWeightConfig,
    ds_distance,
    ds_weight_decisions,
    ds_weight_filter,
    ds_weights,
    extract_last_number,
    self_consistency,
)
from srt_hf.errors import ConfigError, InputError


@pytest.mark.parametrize("text, expected", [
    ("4 + 8 = 12. The answer is 12.", "12"),
    ("It costs 1,250.50 dollars", "1250.5"),
    ("-3 + 11 = 8", "8"),
    ("the temperature is -4", "-4"),
    ("12.0", "12"),
    ("100", "100"),
    ("about .5 of it", "0.5"),
    ("no digits here", None),
    ("", None),
    (None, None),
])
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


def test_self_consistency_majority_ties_and_unanswered():
    vote = self_consistency(["so 4", "5", "it is 4.0", "no idea", "5"])
    assert vote.answers == ["4", "5", "4", None, "5"]
    assert vote.majority == "4" and vote.votes == 2 and vote.answered == 4  # 4 and 5 tie: 4 appeared first
    assert vote.agree == [True, False, True, False, False]
    assert self_consistency(["a", "b"]).majority is None
    lonely = self_consistency(["1", "2", "3", "3"], min_votes=3)
    assert lonely.majority is None and lonely.votes == 2 and lonely.agree == [False] * 4
    assert self_consistency(["x"], extract_answer=lambda t: t.upper()).majority == "X"


def test_w_and_d_formulas():
    w = ds_weights([0.0, 1.0, 2.0, 0.25, 0.4, float("nan")], mean_valid_loss=1.0)
    np.testing.assert_allclose(w[:5], [0.0, 1.0, 0.5, 2.0, 2.0])  # loss 0 -> 0; 1/0.25 = 4 clipped to 2
    assert math.isnan(w[5])
    d = ds_distance([0.0, 1.0, 0.5, 2.0, 1.5, 0.1, float("nan")])
    np.testing.assert_allclose(d[:6], [5.0, 1.0, 2.0, 2.0, 1.5, 5.0])  # w <= 1: min(1/w, 5); w > 1: w
    assert math.isnan(d[6])


def test_decisions_keep_consistent_candidates_below_the_quantile():
    groups = ["q1"] * 4 + ["q2"] * 4 + ["q3"] * 2 + ["q4"] * 2
    answers = ["The answer is 7"] * 3 + ["8"] + ["so 3", "3", "3", "3"] + ["no", "none"] + ["1", "2"]
    losses = [1.0, 2.0, 0.5, 1.0, 1.25, 4.0, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0]
    dec = ds_weight_decisions(groups, answers, losses, 1.0, quantile=0.5)
    cols = dec.columns
    # consistent: rows 0-2 (7) and 4-7 (3); their d: 1, 2, 2, 1.25, 4, 1/0.9=1.111.., 1
    consistent_d = [1.0, 2.0, 2.0, 1.25, 4.0, 1 / 0.9, 1.0]
    assert dec.threshold == pytest.approx(np.quantile(consistent_d, 0.5))  # 1.25
    assert [i for i, s in enumerate(cols["selected"]) if s] == [0, 4, 6, 7]
    assert cols["majority_answer"][:4] == ["7"] * 4 and cols["votes"][0] == 3
    assert cols["selection_reason"][3] == "dropped: disagrees with the majority answer (answer 8, majority 7, 3/4 votes)"
    assert cols["selection_reason"][8] == "dropped: no final numeric answer"
    assert cols["selection_reason"][10] == "dropped: no majority answer (the most common answer has 1/2 votes, 2 needed)"
    plurality = ds_weight_decisions(groups, answers, losses, 1.0, quantile=0.5, min_votes=1).columns
    assert plurality["majority_answer"][10:] == ["1", "1"] and plurality["consistent"][10:] == [True, False]
    assert cols["selection_reason"][5].startswith("dropped: d above the 0.5 quantile")
    assert cols["selection_reason"][0].startswith("kept: majority answer, d within the 0.5 quantile (answer 7, 3/4 votes, d=1.000")
    again = ds_weight_decisions(groups, answers, losses, 1.0, quantile=0.5)
    assert again.columns == cols  # deterministic
    with pytest.raises(InputError):
        ds_weight_decisions(groups, answers, losses, 0.0)


def test_config_checks():
    with pytest.raises(ConfigError, match="question"):
        DSWeightConfig(template="Q: {q} A: {answer}")
    with pytest.raises(ConfigError, match="quantile"):
        DSWeightConfig(quantile=1.5)


# ------------------------------------------------------------------------------------------------
# Base-model loss


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return AnswerLoss(model=str(tiny_model_dir), device="cpu")


def reference_loss(model, tokenizer, prefix: str, answer: str, add_special: bool) -> float:
    """transformers' loss at batch size 1 with every prefix-only token masked."""
    import torch

    enc = tokenizer(prefix + answer, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    labels = ids.clone()
    for i, (_, end) in enumerate(enc["offset_mapping"]):
        if end <= len(prefix):
            labels[0, i] = -100
    with torch.no_grad():
        return model(ids, labels=labels).loss.item()


def test_answer_loss_is_the_masked_cross_entropy(scorer):
    questions = ["What is 2 + 3?", "A box holds 6 eggs. How many eggs are in 9 boxes?"]
    answers = ["2 + 3 = 5. The answer is 5.", "6 × 9 = 54. The answer is 54."]
    losses = scorer(questions, answers)
    for q, a, got in zip(questions, answers, losses):
        want = reference_loss(scorer.model, scorer.tokenizer, f"Question: {q}\nAnswer: ", a, True)
        assert got == pytest.approx(want, rel=1e-4)
    span = scorer.span(questions[0], answers[0])
    assert scorer.tokenizer.decode(span.ids[span.start:]) == answers[0]


def test_answer_loss_with_the_chat_template(tiny_model_dir):
    chat = AnswerLoss(model=str(tiny_model_dir), device="cpu", template="chat")
    prefix = chat.prefix("What is 2 + 3?")
    assert prefix.endswith("<|im_start|>assistant\n")
    got = chat(["What is 2 + 3?"], ["The answer is 5."])[0]
    assert got == pytest.approx(reference_loss(chat.model, chat.tokenizer, prefix, "The answer is 5.", False), rel=1e-4)


def test_ds_weight_filter_on_datasets(scorer):
    import datasets

    candidates = datasets.Dataset.from_dict({
        "qid": ["a"] * 3 + ["b"] * 3,
        "question": ["What is 2 + 3?"] * 3 + ["What is 10 - 4?"] * 3,
        "response": ["2 + 3 = 5. The answer is 5.", "The answer is 5.", "It is 6.",
                     "10 - 4 = 6. The answer is 6.", "6", "I do not know."],
    })
    valid = datasets.Dataset.from_dict({"question": ["What is 1 + 1?"], "solution": ["1 + 1 = 2. The answer is 2."]})
    table, dec = ds_weight_filter(candidates, valid, scorer.config, group_column="qid", scorer=scorer)
    assert len(table) == 6 and set(table.column_names) >= {"answer", "loss", "w", "d", "selected", "selection_reason"}
    assert table["consistent"] == [True, True, False, True, True, False]
    assert all(r.startswith(("kept: ", "dropped: ")) for r in table["selection_reason"])
    assert 0 < sum(table["selected"]) <= 4 and not table["selected"][2] and not table["selected"][5]
    assert dec.mean_valid_loss == pytest.approx(scorer(valid["question"], valid["solution"])[0])
    np.testing.assert_allclose(table["w"], np.clip(dec.mean_valid_loss / np.asarray(table["loss"]), 0, 2))
    with pytest.raises(InputError, match="solution"):
        ds_weight_filter(candidates, valid.rename_column("solution", "gold"), scorer.config, group_column="qid", scorer=scorer)
