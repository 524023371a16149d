"""k-center greedy equals a brute-force N×N implementation (ties included); the embedder ignores padding."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from srt_hf.diversity import EmbedConfig, Embedder, kcenter_greedy, reference_sq_distances
from srt_hf.errors import ConfigError
from srt_hf.formats import Example


def brute_force_kcenter(X: np.ndarray, k: int, initial=(), start: int = 0) -> list[int]:
    """The textbook algorithm on the full N×N matrix of squared distances (float64, left-to-right sums)."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    D = np.zeros((n, n))
    for j in range(d):
        diff = X[:, None, j] - X[None, :, j]
        D += diff * diff
    pool = list(initial)
    picks: list[int] = []
    if not pool:
        pool, picks = [start], [start]
    while len(picks) < min(k, n - len(initial)):
        nearest = D[:, pool].min(axis=1)
        nearest[pool] = -np.inf
        best = nearest.max()
        j = min(i for i in range(n) if nearest[i] == best)  # ties: the lowest index
        pool.append(j)
        picks.append(j)
    return picks


def random_case(rng: np.random.Generator, kind: str) -> np.ndarray:
    n, d = int(rng.integers(2, 160)), int(rng.integers(1, 24))
    if kind == "lattice":  # small integers: distances are exact and ties are everywhere
        return rng.integers(0, 3, (n, d)).astype(np.float32)
    if kind == "duplicates":  # Gaussian rows, a third of them copies of others (exact ties at any position)
        X = rng.standard_normal((n, d)).astype(np.float32)
        X[rng.integers(0, n, n // 3)] = X[rng.integers(0, n, n // 3)]
        return X
    if kind == "offset":  # far from the origin: ‖x‖² ≫ distances, the hard case for the fast path
        return (rng.standard_normal((n, d)) * 0.01 + 1000).astype(np.float32)
    return rng.standard_normal((n, d))  # float64


@pytest.mark.parametrize("kind", ["lattice", "duplicates", "offset", "float64"])
def test_kcenter_matches_brute_force(kind):
    rng = np.random.default_rng(sum(map(ord, kind)))
    for _ in range(12):
        X = random_case(rng, kind)
        n = len(X)
        k = int(rng.integers(1, n + 2))
        initial = [int(i) for i in rng.choice(n, size=int(rng.integers(0, min(6, n))), replace=False)]
        chunk = int(rng.integers(1, 40))  # chunks that do not divide N
        assert kcenter_greedy(X, k, initial, chunk_rows=chunk) == brute_force_kcenter(X, k, initial)


def test_kcenter_across_many_chunks_float32_equals_float64():
    # N spans several screening and conversion chunks; float32 input takes the float32-screened path,
    # float64 input the plain float64 one: both must reproduce the brute force exactly.
    rng = np.random.default_rng(11)
    X = rng.integers(0, 4, (1300, 5)).astype(np.float32)
    X[700:760] = X[100:160]  # duplicates across chunks
    initial = [3, 999]
    expected = brute_force_kcenter(X, 60, initial)
    assert kcenter_greedy(X, 60, initial) == expected
    assert kcenter_greedy(X.astype(np.float64), 60, initial, chunk_rows=97) == expected
    Y = (rng.standard_normal((1300, 7)) * 0.01 + 50).astype(np.float32)
    assert kcenter_greedy(Y, 40, start=5) == brute_force_kcenter(Y, 40, start=5)


def test_kcenter_ties_go_to_the_lowest_index():
    X = np.array([[0.0], [2.0], [-2.0], [2.0], [0.0]], dtype=np.float32)
    # from row 0, rows 1, 2 and 3 are all at distance 2: row 1 wins; then row 2 (4 from row 1) before row 3 (0)
    assert kcenter_greedy(X, 3) == [0, 1, 2]
    assert kcenter_greedy(X, 2, initial=[4]) == [1, 2]


def test_kcenter_start_initial_and_limits():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 8)).astype(np.float32)
    assert kcenter_greedy(X, 5, start=7)[0] == 7
    assert kcenter_greedy(X, 5, start=7) == brute_force_kcenter(X, 5, start=7)
    assert kcenter_greedy(X, 0) == []
    picks = kcenter_greedy(X, 100, initial=range(40))
    assert sorted(picks) == list(range(40, 50))  # clamped to the rows left; the pool is never picked again
    assert kcenter_greedy(X, 10, initial=[1, 2]) == kcenter_greedy(X, 10, initial=[1, 2])  # reproducible


def test_kcenter_distances_are_the_reference_distances():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 6)).astype(np.float32)
    picks, dists = kcenter_greedy(X, 6, initial=[0, 1], return_distances=True)
    pool = [0, 1]
    for pick, dist in zip(picks, dists):
        expected = min(reference_sq_distances(X[[pick]], X[c])[0] for c in pool)
        assert dist == expected
        pool.append(pick)
    assert dists == sorted(dists, reverse=True)  # greedy: the farthest distance never grows


def test_kcenter_rejects_bad_input():
    X = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ConfigError, match="outside"):
        kcenter_greedy(X, 1, initial=[9])
    with pytest.raises(ConfigError, match="twice"):
        kcenter_greedy(X, 1, initial=[1, 1])
    X[2, 1] = np.nan
    with pytest.raises(ConfigError, match="row 2"):
        kcenter_greedy(X, 1)
    with pytest.raises(ConfigError, match="2-D"):
        kcenter_greedy(np.zeros(4), 1)


# ------------------------------------------------------------------------------------------------
# Embedder

ROWS = {
    "instruction": ["Say hi.", "Explain photosynthesis in one long sentence, please, with detail.", "2+2?"],
    "input": ["", "For a child.", ""],
    "output": ["Hi!", "Plants use light, water and air to make sugar and oxygen in their green leaves.", "4"],
}


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    return Embedder(model=str(tiny_model_dir), device="cpu")


def test_embedding_is_the_mean_last_hidden_state_of_the_training_text(embedder):
    import torch

    out = embedder(ROWS)
    assert out["embedding_status"] == ["ok", "ok", "ok"]
    tok, model = embedder.tokenizer, embedder.model
    for i in range(3):
        messages = [
            {"role": "user", "content": ROWS["instruction"][i] + (f"\n\n{ROWS['input'][i]}" if ROWS["input"][i] else "")},
            {"role": "assistant", "content": ROWS["output"][i]},
        ]
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert tok.pad_token_id in ids  # the text holds the pad token (<|im_end|>): it must still count
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(out["embedding"][i], hidden.mean(0).numpy(), rtol=1e-4, atol=1e-5)


ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")


def test_alpaca_option_embeds_the_reference_text(tiny_model_dir):
    import torch

    alpaca = Embedder(model=str(tiny_model_dir), device="cpu", text="alpaca")
    tok = alpaca.tokenizer
    examples = [Example(i, x, o, []) for i, x, o in zip(ROWS["instruction"], ROWS["input"], ROWS["output"])]
    expected = [
        ALPACA_NO_INPUT.replace("{instruction}", "Say hi.") + "Hi!" + tok.eos_token,
        ALPACA_INPUT.replace("{instruction}", ROWS["instruction"][1]).replace("{input}", "For a child.") + ROWS["output"][1] + tok.eos_token,
        ALPACA_NO_INPUT.replace("{instruction}", "2+2?") + "4" + tok.eos_token,
    ]
    assert [alpaca.training_text(ex) for ex in examples] == expected
    assert alpaca.config.token_limit == 512 and Embedder(model="x").config.token_limit == 1024
    out = alpaca(ROWS)
    assert out["embedding_status"] == ["ok"] * 3
    for i, text in enumerate(expected):
        ids = tok(text)["input_ids"]  # the tokenizer's own special tokens, as the reference's tokenizer call
        assert ids[-1] == tok.eos_token_id and alpaca.token_ids(examples[i]) == ids
        with torch.no_grad():
            hidden = alpaca.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(out["embedding"][i], hidden.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    long = Example("word " * 700, "", "done", [])
    assert len(alpaca.token_ids(long)) == 512 and alpaca.token_ids(long) == tok(alpaca.training_text(long))["input_ids"][:512]
    assert EmbedConfig(text="alpaca").digest() != EmbedConfig().digest()
    with pytest.raises(ConfigError, match="text"):
        EmbedConfig(text="vicuna")


def test_padding_does_not_change_the_embedding(embedder):
    batched = embedder(ROWS)["embedding"]
    singles = [embedder({k: v[i : i + 1] for k, v in ROWS.items()})["embedding"][0] for i in range(3)]
    np.testing.assert_allclose(np.stack(batched), np.stack(singles), rtol=1e-4, atol=1e-5)
    embedder.tokenizer.padding_side = "left"
    try:
        np.testing.assert_allclose(np.stack(embedder(ROWS)["embedding"]), np.stack(singles), rtol=1e-4, atol=1e-5)
    finally:
        embedder.tokenizer.padding_side = "right"


def test_embedder_in_dataset_map_keeps_every_row(embedder, tiny_model_dir):
    import datasets

    ds = datasets.Dataset.from_dict({"messages": [
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}],
        [{"role": "user", "content": "no answer here"}],
    ]})
    out = ds.map(Embedder(model=str(tiny_model_dir), device="cpu"), batched=True)
    assert out.features["embedding"].feature.dtype == "float32"
    assert out["embedding_status"][0] == "ok" and out["embedding_status"][1].startswith("invalid:")
    assert len(out["embedding"][0]) == 64 and out["embedding"][1] is None


def test_embedder_pickles_without_the_model(embedder):
    assert embedder.model is not None  # loaded before pickling
    blob = pickle.dumps(embedder)
    assert len(blob) < 4000
    clone = pickle.loads(blob)
    assert clone.config == embedder.config and clone._model is None
    assert EmbedConfig(model="a").digest() != EmbedConfig(model="b").digest()
    assert EmbedConfig(model="a", device="cpu").digest() == EmbedConfig(model="a").digest()
