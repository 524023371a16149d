"""The local teacher's small-model guards: no repeated n-grams in a reply, JSON strings nudged to close."""

from __future__ import annotations

import json

import pytest
import torch

from srt_hf.errors import ConfigError
from srt_hf.parsing import json_schema
from srt_hf.teachers import GenerationConfig, LocalTeacher
from srt_hf.teachers.decoding_guards import PENALTY, ReplyRepeatGuard, StringLengthNudge


def step(processor, ids: list[list[int]], vocab: int = 10) -> torch.Tensor:
    return processor(torch.tensor(ids), torch.zeros(len(ids), vocab))


def test_a_reply_cannot_repeat_its_own_ngram_but_may_quote_the_prompt():
    guard = ReplyRepeatGuard(3, prompt_length=4)
    # prompt 1 2 3 1 2 (the trigram 1 2 3 is in the prompt only), then the reply 5 6 7 5 6
    assert not step(guard, [[1, 2, 3, 1]]).any()  # nothing generated yet
    scores = step(guard, [[1, 2, 3, 1, 2]])
    assert not scores.any()  # "1 2 -> 3" is the prompt's, not the reply's
    guard = ReplyRepeatGuard(3, prompt_length=4)  # a new reply: generate only ever appends to the one it guards
    for reply in ([], [5], [5, 6], [5, 6, 7], [5, 6, 7, 5]):
        step(guard, [[1, 2, 3, 1, *reply]])
    scores = step(guard, [[1, 2, 3, 1, 5, 6, 7, 5, 6]])
    assert scores[0, 7] == -PENALTY and (scores[0, :7] == 0).all() and (scores[0, 8:] == 0).all()


def test_the_guard_tracks_rows_apart():
    guard = ReplyRepeatGuard(2, prompt_length=1)
    step(guard, [[0, 4], [0, 5]])
    step(guard, [[0, 4, 4], [0, 5, 6]])
    scores = step(guard, [[0, 4, 4, 4], [0, 5, 6, 5]])
    assert scores[0, 4] == -PENALTY and scores[1, 6] == -PENALTY  # "4 4" again; "5 6" again
    assert scores[0].count_nonzero() == 1 and scores[1].count_nonzero() == 1


class Pieces:
    """A tokenizer stand-in: token id -> its text."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def __len__(self) -> int:
        return len(self.pieces)

    def batch_decode(self, ids):
        return [self.pieces[i[0]] for i in ids]


def test_strings_past_the_soft_length_favour_their_closing_tokens():
    #            0      1           2        3      4     5          6
    tok = Pieces(['{"', 'abcde', '\\"', '"', '."', '"}', 'review":"'])
    nudge = StringLengthNudge(tok, soft_chars=8, prompt_length=0, per_char=0.5)
    closers = [0, 3, 4, 5, 6]  # every piece with a quote and no backslash: the grammar picks among them
    assert not step(nudge, [[0]], vocab=7).any()  # a key has begun: 0 characters
    scores = step(nudge, [[0, 6, 1, 1]], vocab=7)  # inside the value, 10 characters: 2 over
    assert scores[0, closers].eq(1.0).all() and scores[0, [1, 2]].eq(0).all()
    scores = step(nudge, [[0, 6, 1, 1, 2]], vocab=7)  # an escaped quote does not close it: 11 characters
    assert scores[0, 3] == 1.5
    scores = step(nudge, [[0, 6, 1, 1, 2, 3]], vocab=7)  # closed: no nudge outside a string
    assert not scores.any()


def test_guards_are_on_for_the_embedded_model_only_and_key_the_cache():
    embedded, other = LocalTeacher("default"), LocalTeacher("some/model")
    assert embedded.guards() == {"no_repeat_ngram_size": 5, "soft_string_chars": 400}
    assert other.guards() == {"no_repeat_ngram_size": 0, "soft_string_chars": 0}
    assert "no_repeat_ngram_size" in embedded.scope() and "no_repeat_ngram_size" not in other.scope()
    assert LocalTeacher("default", no_repeat_ngram_size=0).fingerprint() != embedded.fingerprint()
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        LocalTeacher("some/model", no_repeat_ngram_size=1)


def test_the_nudge_lets_a_random_model_finish_its_object(tiny_model_dir):
    """A random model under the grammar never closes a string by itself; nudged, its objects complete."""
    config = GenerationConfig(max_new_tokens=160, batch_size=2)
    messages = [[{"role": "user", "content": f"question {i}"}] for i in range(2)]
    schema = json_schema("response", review_max_length=20)
    plain = LocalTeacher(str(tiny_model_dir), config=config, device="cpu").generate(messages, schema=schema)
    nudged = LocalTeacher(str(tiny_model_dir), config=config, device="cpu", soft_string_chars=20).generate(messages, schema=schema)
    assert all(r.status.startswith("truncated: ") for r in plain), [r.text for r in plain]
    assert all(r.ok for r in nudged), [r.text for r in nudged]
    assert all(set(json.loads(r.text)) == {"review", "better_answer"} for r in nudged)
