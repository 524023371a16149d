"""DS weight with self-consistency: answers, the vote, w and d, the threshold, the base-model loss.

The defaults follow the reference code (rubickkcibur/IWSI); the expected kept sets below are worked out
by hand from its rules, and a plain restatement of those rules checks many generated cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from srt_hf.dsweight import (
    ANSWER_TEMPLATE,
    SRT_HF_VARIANT,
    AnswerLoss,
    DSWeightConfig,
    ds_distance,
    ds_weight_decisions,
    ds_weight_filter,
    ds_weights,
    extract_answer_is,
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


@pytest.mark.parametrize("text, expected", [
    ("4 + 8 = 12. The answer is 12.", "12"),
    ("The answer is 3 + 4 = 7 apples.", "7"),  # after the last "=" of what follows "the answer is"
    ("The answer is 12. Check: 2 + 2 = 4", "4"),  # the "=" rule applies inside that tail too
    ("THE ANSWER IS 1,250.75 dollars", "1250"),  # any case; commas dropped; int(float(x))
    ("the answer is 7.9", "7"),  # truncated, not rounded
    ("the answer is -4", "4"),  # no sign is read
    ("10 - 4 leaves 6", "10"),  # no marker, no "=": the first number of the text
    ("we know x = 5 and then 9", "5"),  # no marker: after the last "="
    ("The answer is 5. Later: the answer is unknown.", None),  # only the last marker counts
    ("The answer is 8 =", None),  # nothing after the "="
    ("the answer is " + "9" * 31, None),  # longer than 30 characters
    ("", None),
    (None, None),
])
def test_extract_answer_is(text, expected):
    assert extract_answer_is(text) == expected


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


# Candidates written for these tests: (question, answer text, base-model loss). With mean_valid_loss = 1,
# w = min(1 / loss, 2) and d = min(1 / loss, 2) below loss 1, min(loss, 5) above.
CASES = [
    ("q1", "3 + 4 = 7. The answer is 7.", 1.0),    # 0  d 1.0
    ("q1", "The answer is 7.0", 0.8),              # 1  d 1.25
    ("q1", "The answer is 7.9", 0.9),              # 2  d 1.111; the reference reads 7 (int), the last number is 7.9
    ("q1", "The answer is 8.", 1.0),               # 3  disagrees
    ("q2", "The answer is 12.", 1.25),             # 4  d 1.25; a lone answer: a majority only for plurality
    ("q2", "The answer is 15.", 1.0),              # 5  disagrees (the tie goes to the first answer)
    ("q3", "Half of 10 is 5, and 5 + 1 = 6", 0.0), # 6  loss 0: w = 0, outside the reference's pool
    ("q3", "The answer is 6", 4.0),                # 7  d 4.0
    ("q3", "6 apples, so the answer is 6.", 2.0),  # 8  d 2.0
    ("q4", "no number here", 1.0),                 # 9  no answer
    ("q4", "The answer is unknown", 1.0),          # 10 no answer
    ("q5", "The answer is 2", 0.5),                # 11 d 2.0, a lone answer
]
VARIANT_RULES = {"min_votes": 2, "threshold_rule": "quantile", "zero_weight_in_pool": True, "extract_answer": extract_last_number}


def _decide(**kwargs):
    groups, texts, losses = zip(*CASES)
    return ds_weight_decisions(groups, texts, losses, 1.0, **kwargs)


def test_defaults_keep_what_the_reference_rules_keep():
    # Pool: the consistent candidates with w > 0: 0, 1, 2, 4, 7, 8, 11 with d 1, 1.25, 1.111, 1.25, 4, 2, 2.
    # th = sorted(d)[int(7 * 0.79) = 5] = 2.0; d < th keeps 0, 1, 2, 4 and drops 8 and 11, tied at th.
    dec = _decide()
    cols = dec.columns
    assert dec.threshold == 2.0
    assert [i for i, s in enumerate(cols["selected"]) if s] == [0, 1, 2, 4]
    assert cols["answer"][:3] == ["7", "7", "7"] and cols["majority_answer"][4] == "12" and cols["votes"][4] == 1
    assert cols["consistent"] == [True, True, True, False, True, False, True, True, True, False, False, True]
    reasons = cols["selection_reason"]
    assert reasons[8] == "dropped: d beyond the 0.79 threshold of consistent candidates (d=2.000 >= 2.000)"
    assert reasons[11] == reasons[8]
    assert reasons[6] == "dropped: weight 0, left out of the d pool (loss 0)"
    assert reasons[9] == reasons[10] == "dropped: no final numeric answer"
    assert reasons[5] == "dropped: disagrees with the majority answer (answer 15, majority 12, 1/2 votes)"
    assert reasons[4] == "kept: majority answer, d within the 0.79 threshold (answer 12, 1/2 votes, d=1.250 < 2.000)"
    # quantile 1 puts the rank past the end of the pool: every pool member is kept
    assert [i for i, s in enumerate(_decide(quantile=1.0).selected) if s] == [0, 1, 2, 4, 7, 8, 11]


def test_the_srt_hf_variant_differs_on_every_rule():
    # last number: 7.9 is its own answer (q1: 7 with 2 votes); min_votes 2: no majority for q2 and q5;
    # w = 0 enters the pool as d = 5: pool 0, 1, 6, 7, 8 with d 1, 1.25, 5, 4, 2;
    # np.quantile(d, 0.79) = 4 + 0.16 * (5 - 4) = 4.16 and d <= 4.16 keeps 0, 1, 7, 8.
    dec = _decide(**VARIANT_RULES)
    assert dec.threshold == pytest.approx(4.16)
    assert [i for i, s in enumerate(dec.selected) if s] == [0, 1, 7, 8]
    assert dec.columns["answer"][2] == "7.9" and dec.columns["majority_answer"][4] is None
    assert dec.columns["selection_reason"][6] == "dropped: d beyond the 0.79 threshold of consistent candidates (d=5.000 > 4.160)"
    # each rule alone moves the kept set away from the reference's
    for change in ({"min_votes": 2}, {"threshold_rule": "quantile"}, {"zero_weight_in_pool": True},
                   {"extract_answer": extract_last_number}):
        assert _decide(**change).selected != _decide().selected, change


def reference_kept(groups, texts, losses, mean_valid_loss, q=0.79):
    """The reference's K-Mixed rules, restated plainly: plurality vote on int answers, w, d, rank threshold."""
    import re

    def final(text):
        tail = text.lower().split("the answer is")[-1].strip()
        tail = tail.split("=")[-1].strip() if "=" in tail else tail
        m = re.search(r"\d+\.?\d*", tail.replace(",", ""))
        return None if not tail or m is None or len(m.group()) > 30 else int(float(m.group()))

    weight = {}
    for g in dict.fromkeys(groups):
        rows = [i for i in range(len(texts)) if groups[i] == g]
        by_answer = {}
        for i in rows:
            if final(texts[i]) is not None:
                by_answer.setdefault(final(texts[i]), []).append(i)
        best = max(by_answer.values(), key=len) if by_answer else []  # max keeps the first of equal lengths
        for i in best:
            weight[i] = 0.0 if losses[i] == 0 else min(2.0, max(0.0, mean_valid_loss / losses[i]))
    d = {i: (w if w > 1 else min(1 / w, 5)) for i, w in weight.items() if w > 0}
    if not d:
        return set()
    th = sorted(d.values())[int(len(d) * q)] if int(len(d) * q) < len(d) else math.inf
    return {i for i, v in d.items() if v < th}


def test_decisions_equal_a_plain_restatement_of_the_reference_rules():
    rng = np.random.default_rng(7)
    phrasing = ["The answer is {}.", "{} + 0 = {}", "so it is {}", "the answer is {}.5", "no idea"]
    for _ in range(60):
        n_groups = int(rng.integers(1, 8))
        groups, texts, losses = [], [], []
        for g in range(n_groups):
            for _ in range(int(rng.integers(1, 6))):
                value = int(rng.integers(0, 3))
                groups.append(f"g{g}")
                texts.append(phrasing[int(rng.integers(0, len(phrasing)))].format(value, value))
                losses.append(float(rng.choice([0.0, 0.25, 0.5, 0.8, 1.0, 1.25, 2.0, 4.0, 8.0])))  # ties and w = 0
        mean_valid = float(rng.choice([0.5, 1.0, 2.0]))
        q = float(rng.choice([0.0, 0.29, 0.5, 0.79, 1.0]))
        got = ds_weight_decisions(groups, texts, losses, mean_valid, quantile=q).selected
        assert {i for i, s in enumerate(got) if s} == reference_kept(groups, texts, losses, mean_valid, q)


def test_srt_hf_variant_keeps_consistent_candidates_at_or_below_the_quantile():
    groups = ["q1"] * 4 + ["q2"] * 4 + ["q3"] * 2 + ["q4"] * 2
    answers = ["The answer is 7"] * 3 + ["8"] + ["so 3", "3", "3", "3"] + ["no", "none"] + ["1", "2"]
    losses = [1.0, 2.0, 0.5, 1.0, 1.25, 4.0, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0]
    dec = ds_weight_decisions(groups, answers, losses, 1.0, quantile=0.5, **VARIANT_RULES)
    cols = dec.columns
    # consistent: rows 0-2 (7) and 4-7 (3); their d: 1, 2, 2, 1.25, 4, 1/0.9=1.111.., 1
    consistent_d = [1.0, 2.0, 2.0, 1.25, 4.0, 1 / 0.9, 1.0]
    assert dec.threshold == pytest.approx(np.quantile(consistent_d, 0.5))  # 1.25
    assert [i for i, s in enumerate(cols["selected"]) if s] == [0, 4, 6, 7]
    assert cols["majority_answer"][:4] == ["7"] * 4 and cols["votes"][0] == 3
    assert cols["selection_reason"][3] == "dropped: disagrees with the majority answer (answer 8, majority 7, 3/4 votes)"
    assert cols["selection_reason"][8] == "dropped: no final numeric answer"
    assert cols["selection_reason"][10] == "dropped: no majority answer (the most common answer has 1/2 votes, 2 needed)"
    plurality = ds_weight_decisions(groups, answers, losses, 1.0, quantile=0.5, **{**VARIANT_RULES, "min_votes": 1}).columns
    assert plurality["majority_answer"][10:] == ["1", "1"] and plurality["consistent"][10:] == [True, False]
    assert cols["selection_reason"][5] == "dropped: d beyond the 0.5 threshold of consistent candidates (d=4.000 > 1.250)"
    assert cols["selection_reason"][0].startswith("kept: majority answer, d within the 0.5 threshold (answer 7, 3/4 votes, d=1.000 <= 1.250")
    again = ds_weight_decisions(groups, answers, losses, 1.0, quantile=0.5, **VARIANT_RULES)
    assert again.columns == cols  # deterministic
    with pytest.raises(InputError):
        ds_weight_decisions(groups, answers, losses, 0.0)


def test_config_checks():
    with pytest.raises(ConfigError, match="question"):
        DSWeightConfig(template="Q: {q} A: {answer}")
    with pytest.raises(ConfigError, match="quantile"):
        DSWeightConfig(quantile=1.5)
    for name in ("loss_tokens", "threshold_rule", "answer_extraction"):
        with pytest.raises(ConfigError, match=name):
            DSWeightConfig(**{name: "nope"})
    reference = DSWeightConfig()
    assert (reference.template, reference.loss_tokens, reference.min_votes, reference.threshold_rule) == (
        "Q: {question}\nA: {eos}{answer}", "text", 1, "rank")
    assert not reference.zero_weight_in_pool and reference.answer_extraction == "answer_is" and reference.max_length == 400
    assert DSWeightConfig(**SRT_HF_VARIANT).digest() != reference.digest()


# ------------------------------------------------------------------------------------------------
# Base-model loss


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return AnswerLoss(model=str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def answer_scorer(tiny_model_dir):
    return AnswerLoss(DSWeightConfig(model=str(tiny_model_dir), device="cpu", **SRT_HF_VARIANT))


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


QUESTIONS = ["What is 2 + 3?", "A box holds 6 eggs. How many eggs are in 9 boxes?"]
ANSWERS = ["2 + 3 = 5. The answer is 5.", "6 × 9 = 54. The answer is 54."]


def test_default_loss_scores_the_whole_reference_text(scorer):
    import torch

    tok = scorer.tokenizer
    losses = scorer(QUESTIONS, ANSWERS)
    for q, a, got in zip(QUESTIONS, ANSWERS, losses):
        text = "Q: " + q + "\n" + "A: " + tok.eos_token + a  # the reference's string
        ids = tok(text)["input_ids"]
        assert list(scorer.span(q, a).ids) == ids and scorer.span(q, a).start == 0
        with torch.no_grad():
            want = scorer.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()  # every token after the first
        assert got == pytest.approx(want, rel=1e-4)
    assert scorer.prefix("Why?") == f"Q: Why?\nA: {tok.eos_token}"
    long = scorer.span("word " * 600, "1")
    assert len(long.ids) == 400  # the reference's model_max_length, cut at the end


def test_answer_loss_is_the_masked_cross_entropy(answer_scorer):
    losses = answer_scorer(QUESTIONS, ANSWERS)
    for q, a, got in zip(QUESTIONS, ANSWERS, losses):
        want = reference_loss(answer_scorer.model, answer_scorer.tokenizer, f"Question: {q}\nAnswer: ", a, True)
        assert got == pytest.approx(want, rel=1e-4)
    span = answer_scorer.span(QUESTIONS[0], ANSWERS[0])
    assert answer_scorer.tokenizer.decode(span.ids[span.start:]) == ANSWERS[0]
    assert answer_scorer.config.template == ANSWER_TEMPLATE


def test_answer_loss_with_the_chat_template(tiny_model_dir):
    chat = AnswerLoss(model=str(tiny_model_dir), device="cpu", template="chat", loss_tokens="answer")
    prefix = chat.prefix("What is 2 + 3?")
    assert prefix.endswith("<|im_start|>assistant\n")
    got = chat(["What is 2 + 3?"], ["The answer is 5."])[0]
    assert got == pytest.approx(reference_loss(chat.model, chat.tokenizer, prefix, "The answer is 5.", False), rel=1e-4)


def test_a_max_length_past_the_models_positions_is_an_error_naming_the_fix(short_gpt2_dir):
    short = AnswerLoss(model=str(short_gpt2_dir), device="cpu")  # the default max_length, 400, past GPT-2's 128 positions
    with pytest.raises(ConfigError, match=r"DS weight `max_length` \(--max-length\) 400 is more than the 128 positions "
                                          r"GPT2LMHeadModel holds\. Fix: set .* to 128 or less"):
        short(["What is 2 + 3?"], ["The answer is 5."])
    fits = AnswerLoss(model=str(short_gpt2_dir), device="cpu", max_length=128)
    assert math.isfinite(fits(["What is 2 + 3? " * 40], ["The answer is 5. " * 40])[0])  # ~400 tokens, cut at 128


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
    pool = sorted(d for d, c, w in zip(table["d"], table["consistent"], table["w"]) if c and w > 0)
    assert dec.threshold == pool[int(len(pool) * 0.79)]
    assert table["selected"] == [c and w > 0 and d < dec.threshold for c, w, d in zip(table["consistent"], table["w"], table["d"])]
    assert dec.mean_valid_loss == pytest.approx(scorer(valid["question"], valid["solution"])[0])
    np.testing.assert_allclose(table["w"], np.clip(dec.mean_valid_loss / np.asarray(table["loss"]), 0, 2))
    with pytest.raises(InputError, match="solution"):
        ds_weight_filter(candidates, valid.rename_column("solution", "gold"), scorer.config, group_column="qid", scorer=scorer)
