"""DiverseEvol's two pieces (docs/ARCHITECTURE.md): sentence embeddings from the student, and k-center greedy.

    ds = ds.map(Embedder(model="path/to/checkpoint"), batched=True)      # adds `embedding`
    order = kcenter_greedy(np.asarray(ds["embedding"], np.float32), k=100, initial=pool)

**Embedding.** The mean of the last hidden layer (the final-norm output the LM head reads) over every
token of the row's *training text*, which ``text`` chooses:

* ``chat`` (default): the student's chat template applied to the conversational ``prompt + completion``
  record of :func:`srt_hf.formats.to_prompt_completion` — the text TRL's ``SFTTrainer`` (and so
  ``recipes/sft.py`` and ``recipes/diverse_evol.py``) trains on; tokenized without extra special
  tokens, cut after ``max_length`` tokens (default 1024) like TRL's ``keep_start`` truncation.
* ``alpaca``: the reference's text (OFA-Sys/DiverseEvol ``SupervisedDataset``): the Alpaca prompt
  (with or without its ``### Input:`` block, ending in ``### Response:``), the response and the
  tokenizer's EOS token, tokenized with the tokenizer's own special tokens (a BOS where it adds one)
  and cut after ``max_length`` tokens (default 512, the reference's ``model_max_length``). The
  reference sets Llama's special tokens (``</s>`` as EOS); srt_hf keeps the student's.

Pad tokens never count, whatever the padding side or batch: the mask comes from the token counts, so a
text that itself contains the pad token (``<|im_end|>`` in ChatML) is averaged over all of its tokens.

**k-center greedy.** Each pick is the row farthest (Euclidean) from its nearest centre; the centres
are the initial pool plus the rows picked so far; ties go to the lowest index. Memory is O(N) on top of
the embeddings: a running vector of squared distances to the nearest centre, updated chunk by chunk
with the new centre only — never the N×N matrix.

Exactness. The distance that decides every pick is the *reference distance*
``δ(i, j) = Σ_k (x_ik − x_jk)²`` evaluated in float64 by a plain left-to-right sum over ``k`` (after
promoting the values to float64, which is exact). The running minimum holds float64 values of
``‖x‖² + ‖c‖² − 2 x·c`` whose distance to δ is rigorously bounded (the worst-case error of a length-d
dot product, ``γ = (d + 2)·u / (1 − (d + 2)·u)``, doubled). For float32 embeddings each new centre first
goes through one float32 matrix-vector product; only the rows it might bring closer (within the
float32 and float64 bounds) get the float64 product, so the minimum is the same as with float64
throughout. A pick settles its candidates with δ itself whenever another row could be as far as
the farthest one within the bound — in practice exact or near ties. The picks are therefore exactly
those of a brute-force N×N implementation of δ with lowest-index tie breaking, while a pick costs
about one float32 pass over the data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from . import __version__, models
from .errors import ConfigError
from .formats import ColumnMapping, Example, RowProblem, detect_format, read_batch, to_prompt_completion
from .status import INVALID, OK, make
from .templates import PROMPT_TEMPLATES

EMBED_TEXTS = ("chat", "alpaca")
DEFAULT_MAX_LENGTH = {"chat": 1024, "alpaca": 512}  # TRL's SFTConfig default; the reference's model_max_length

# Rows per BLAS call. Small calls run single-threaded in OpenBLAS, which is as fast as memory allows for
# a matrix-vector product and, unlike its threaded path, does not stall when the CPU is shared.
DEFAULT_CHUNK_ROWS = 256  # rows converted to float64 at a time (stays in cache)
SCREEN_ROWS = 512  # rows per float32 screening product
_SAFETY = 2.0  # the error bounds are doubled: they then also cover the rounding of the bound arithmetic
_MAX_BLOCK = 1 << 22  # entries of a (rows × centres) block of distances


# ------------------------------------------------------------------------------------------------
# k-center greedy


def kcenter_greedy(
    embeddings,
    k: int,
    initial: Sequence[int] = (),
    *,
    start: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    return_distances: bool = False,
    progress: bool = False,
):
    """Pick ``k`` rows by k-center greedy; returns their indices in selection order.

    ``embeddings``: an ``(N, d)`` array of any real dtype (a float32 array or memmap is read chunk by
    chunk, never copied whole). ``initial``: the current pool, the first
    centres; never picked again. With no initial pool the first pick is ``start`` (default 0, the
    first row; pass a seeded random index for a random start) — every run with the same inputs gives
    the same order. At most ``N - len(initial)`` rows are returned. ``chunk_rows`` is the number of rows
    converted to float64 per distance computation (temporary memory, cache-sized by default). ``return_distances=True`` also returns, per pick,
    the reference squared distance to its nearest centre at the time of the pick (``inf`` for a
    start pick).
    """
    X = _as_matrix(embeddings)
    n = X.shape[0]
    if k < 0:
        raise ConfigError(f"k-center greedy: k must be >= 0 (got {k}).")
    if chunk_rows < 1:
        raise ConfigError(f"k-center greedy: chunk_rows must be >= 1 (got {chunk_rows}).")
    pool = [int(i) for i in initial]
    bad = [i for i in pool if not 0 <= i < n]
    if bad:
        raise ConfigError(f"k-center greedy: initial pool index {bad[0]} is outside 0..{n - 1}; pass row positions of the embeddings.")
    if len(set(pool)) != len(pool):
        raise ConfigError("k-center greedy: the initial pool lists a row twice; pass each row position once.")
    k = min(k, n - len(pool))
    picks: list[int] = []
    dists: list[float] = []
    if k <= 0:
        return (picks, dists) if return_distances else picks
    state = _KCenter(X, chunk_rows)
    if pool:
        state.add(pool)
    else:
        if not 0 <= start < n:
            raise ConfigError(f"k-center greedy: start must be a row position in 0..{n - 1} (got {start}).")
        state.add([start])
        picks.append(start)
        dists.append(float("inf"))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=k, initial=len(picks), desc="k-center greedy", unit="pick")
    while len(picks) < k:
        pick, dist = state.farthest(exact_distance=return_distances)
        state.add([pick])
        picks.append(pick)
        dists.append(dist)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return (picks, dists) if return_distances else picks


def reference_sq_distances(rows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The reference distance δ of each row to ``centre``: float64, a left-to-right sum over dimensions."""
    diff = (np.asarray(rows, dtype=np.float64) - np.asarray(centre, dtype=np.float64)).T
    acc = np.zeros(diff.shape[1])
    for column in diff:
        acc += column * column
    return acc


def _as_matrix(embeddings) -> np.ndarray:
    X = np.asarray(embeddings)
    if X.ndim != 2:
        raise ConfigError(f"k-center greedy needs a 2-D (rows, dimensions) array of embeddings, got shape {X.shape}.")
    if X.dtype.kind not in "fiu":
        raise ConfigError(f"k-center greedy needs numeric embeddings, got dtype {X.dtype}.")
    return X


class _KCenter:
    """Running state: the squared distance of every row to its nearest centre (approximate, with a bound)."""

    def __init__(self, X: np.ndarray, chunk_rows: int):
        self.X = X
        self.n, self.d = X.shape
        self.chunk_rows = chunk_rows
        self._p32 = np.empty(self.n, dtype=np.float32) if X.dtype == np.float32 else None
        self._buffer = np.empty((min(chunk_rows, max(self.n, 1)), self.d))  # float64 rows, reused
        u = 2.0**-53
        self.gamma = (self.d + 2) * u / (1 - (self.d + 2) * u)  # worst-case relative error of a float64 dot product
        u32 = 2.0**-24
        self.gamma32 = (self.d + 2) * u32 / (1 - (self.d + 2) * u32)  # the same for the float32 screen
        m = 3 * self.d + 10  # float64 roundings in ‖x‖², the combination and the reference sum
        self.kappa = m * u / (1 - m * u)
        self.sq = np.empty(self.n)
        for lo in range(0, self.n, chunk_rows):
            block = self._rows(lo, min(lo + chunk_rows, self.n))
            values = np.einsum("ij,ij->i", block, block)
            if not np.isfinite(values).all():
                row = lo + int(np.flatnonzero(~np.isfinite(values))[0])
                raise ConfigError(f"k-center greedy: embedding row {row} holds NaN or inf (or overflows); fix or drop that row.")
            self.sq[lo : lo + len(values)] = values
        self.norm = np.sqrt(self.sq)
        self.norm_max = float(self.norm.max()) if self.n else 0.0
        self.sq_max = float(self.sq.max()) if self.n else 0.0
        self.mind = np.full(self.n, np.inf)
        self.centres: list[int] = []
        self._c64 = np.empty((16, self.d))
        self.c_norm_max = 0.0
        self.c_sq_max = 0.0

    # -- the running minimum ----------------------------------------------------------------------
    def _rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi as float64 (a view for float64 input, else converted into a reused buffer)."""
        block = self.X[lo:hi]
        if block.dtype == np.float64:
            return block
        out = self._buffer[: hi - lo]
        out[...] = block
        return out

    def add(self, idx: list[int]) -> None:
        """Make ``idx`` centres: lower every row's distance to its nearest centre."""
        if len(idx) == 1 and self.X.dtype == np.float32:
            self._add_screened(idx[0])
        else:
            self._add_float64(idx)
        self.mind[idx] = -np.inf  # a centre is never picked again
        self._append_centres(idx)
        self.c_norm_max = max(self.c_norm_max, float(self.norm[idx].max()))
        self.c_sq_max = max(self.c_sq_max, float(self.sq[idx].max()))

    def _add_screened(self, j: int) -> None:
        """One new centre on float32 data: a float32 product screens out the rows it cannot bring closer.

        A row is skipped only when even the lower end of its float32 distance (minus the float32 and
        float64 error bounds) exceeds its current minimum, i.e. when the float64 distance could not
        lower it either; the other rows get the float64 distance. The result equals the float64 update.
        """
        c32 = self.X[j]
        c64 = c32.astype(np.float64)
        cc, cn = self.sq[j], self.norm[j]
        p = self._p32
        for lo in range(0, self.n, SCREEN_ROWS):
            np.matmul(self.X[lo : lo + SCREEN_ROWS], c32, out=p[lo : lo + SCREEN_ROWS])
        low = self.sq + cc
        low -= 2.0 * p
        low -= _SAFETY * 2 * (self.gamma32 + self.gamma) * cn * self.norm
        low -= _SAFETY * 2 * self.kappa * (self.sq + cc)
        rows = np.flatnonzero(low <= self.mind)
        for a in range(0, len(rows), self.chunk_rows):
            part = rows[a : a + self.chunk_rows]
            exact = self.sq[part] + cc - 2.0 * (self.X[part].astype(np.float64) @ c64)
            self.mind[part] = np.minimum(self.mind[part], exact)

    def _add_float64(self, idx: list[int]) -> None:
        C = self.X[idx].astype(np.float64)
        csq = self.sq[idx]
        rows = max(1, min(self.chunk_rows, _MAX_BLOCK // len(idx)))
        for lo in range(0, self.n, rows):
            hi = min(lo + rows, self.n)
            if len(idx) == 1:
                approx = self.sq[lo:hi] + csq[0] - 2.0 * (self._rows(lo, hi) @ C[0])
            else:
                approx = (self.sq[lo:hi, None] + csq[None, :] - 2.0 * (self._rows(lo, hi) @ C.T)).min(axis=1)
            np.minimum(self.mind[lo:hi], approx, out=self.mind[lo:hi])

    def _append_centres(self, idx: list[int]) -> None:
        need = len(self.centres) + len(idx)
        if need > len(self._c64):
            grown = np.empty((max(need, 2 * len(self._c64)), self.d))
            grown[: len(self.centres)] = self._c64[: len(self.centres)]
            self._c64 = grown
        self._c64[len(self.centres) : need] = self.X[idx].astype(np.float64)
        self.centres.extend(idx)

    def _bound(self, rows, c_norm, c_sq):
        """Bound on |approximate − reference| of distances between rows and centres of the given size."""
        return _SAFETY * (2 * self.gamma * self.norm[rows] * c_norm + self.kappa * (self.sq[rows] + c_sq))

    # -- a pick -----------------------------------------------------------------------------------
    def farthest(self, exact_distance: bool = False) -> tuple[int, float]:
        """The row with the largest reference distance to its nearest centre (lowest index on ties)."""
        j0 = int(np.argmax(self.mind))
        top = float(self.mind[j0])
        e0 = float(self._bound(j0, self.c_norm_max, self.c_sq_max))
        bound_max = _SAFETY * (2 * self.gamma * self.norm_max * self.c_norm_max + self.kappa * (self.sq_max + self.c_sq_max))
        candidates = np.flatnonzero(self.mind >= top - e0 - bound_max)
        if len(candidates) > 1:
            candidates = candidates[self.mind[candidates] + self._bound(candidates, self.c_norm_max, self.c_sq_max) >= top - e0]
        if len(candidates) == 1:  # no other row can be as far: j0 is the pick
            pick = int(candidates[0])
            return pick, (float(self._reference_min(np.array([pick]))[0]) if exact_distance else top)
        exact = self._reference_min(candidates)
        best = int(np.flatnonzero(exact == exact.max())[0])  # candidates ascend: the lowest index wins ties
        return int(candidates[best]), float(exact[best])

    def _reference_min(self, rows: np.ndarray) -> np.ndarray:
        """The reference distance of each row to its nearest centre (float64 prefilter, then δ on close pairs)."""
        C = self._c64[: len(self.centres)]
        csq = self.sq[self.centres]
        cnorm = self.norm[self.centres]
        out = np.empty(len(rows))
        step = max(1, _MAX_BLOCK // max(len(self.centres), 1))
        for lo in range(0, len(rows), step):
            part = rows[lo : lo + step]
            R = self.X[part].astype(np.float64)
            approx = self.sq[part, None] + csq[None, :] - 2.0 * (R @ C.T)
            err = self._bound(part[:, None], cnorm[None, :], csq[None, :])
            close = approx - err <= (approx + err).min(axis=1, keepdims=True)
            r_idx, c_idx = np.nonzero(close)
            exact = np.full(close.shape, np.inf)
            for a in range(0, len(r_idx), 65536):
                ri, ci = r_idx[a : a + 65536], c_idx[a : a + 65536]
                exact[ri, ci] = _pairwise_reference(R[ri], C[ci])
            out[lo : lo + step] = exact.min(axis=1)
        return out


def _pairwise_reference(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """δ between the rows of ``A`` and the rows of ``B`` pairwise (float64, left-to-right sum)."""
    diff = (A - B).T.copy()
    acc = np.zeros(diff.shape[1])
    for column in diff:
        acc += column * column
    return acc


# ------------------------------------------------------------------------------------------------
# Embeddings


@dataclass
class EmbedConfig(ColumnMapping):
    """How the student embeds a dataset (DiverseEvol)."""

    model: str | None = field(default="default", metadata={"help": "Model that embeds: 'default' (embedded SmolLM2-135M-Instruct), a Hub id, a local directory (e.g. a checkpoint) or a .gguf file."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the model (branch, tag or commit)."})
    text: str = field(default="chat", metadata={"help": "Text embedded: 'chat' (the chat-template text TRL trains on) or 'alpaca' (the DiverseEvol reference's: Alpaca prompt + response + EOS)."})
    max_length: int | None = field(default=None, metadata={"help": "Tokens of the text kept (from the start). Default: 1024 for 'chat' (TRL's SFTConfig.max_length), 512 for 'alpaca' (the reference's)."})
    dtype: str = field(default="float32", metadata={"help": "Model dtype while embedding (the embeddings are float32)."})
    device: str | None = field(default=None, metadata={"help": "Device. Default: cuda (cuda:rank under with_rank=True) when available, else cpu."})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "Padded tokens per forward pass. Default: 4096 on CPU, 65536 on GPU."})
    output_column: str = field(default="embedding", metadata={"help": "Name of the output column; its status column is '<name>_status'."})

    def __post_init__(self) -> None:
        if self.text not in EMBED_TEXTS:
            raise ConfigError(f"Embedding `text` is one of {', '.join(EMBED_TEXTS)}; got {self.text!r}.")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"Embedding `max_length` is at least 1 token, got {self.max_length}.")

    @property
    def token_limit(self) -> int:
        """``max_length``, or the default of the chosen text."""
        return DEFAULT_MAX_LENGTH[self.text] if self.max_length is None else self.max_length

    def digest(self) -> str:
        """Identifies every setting that changes the output (not device or batch size)."""
        state = asdict(self)
        for key in ("device", "max_batch_tokens"):
            state.pop(key)
        state["model_files"] = models.local_model_stamp(self.model)
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


class Embedder(models.LazyModel):
    """``Dataset.map`` transform: the student's mean last-layer embedding of every row's training text.

    Adds ``embedding`` (list of float32; null for a row that cannot be read) and ``embedding_status``
    (``ok`` | ``invalid: <reason>``). No row is dropped. The model loads lazily in each process and
    never pickles: the ``datasets`` fingerprint is the srt_hf version plus the configuration digest.
    """

    def __init__(self, config: EmbedConfig | None = None, **kwargs: Any):
        if config is not None and kwargs:
            raise ConfigError("Pass either an EmbedConfig or keyword settings to Embedder, not both.")
        self.config = config or EmbedConfig(**kwargs)

    def __reduce__(self):
        return (_rebuild_embedder, (__version__, asdict(self.config), self.config.digest()))

    @property
    def status_column(self) -> str:
        return f"{self.config.output_column}_status"

    @property
    def features(self):
        from datasets import Features, List, Value

        return Features({self.config.output_column: List(Value("float32")), self.status_column: Value("string")})

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, Any]:
        self._load(rank)
        fmt = detect_format(list(batch), self.config)
        return self.embed_examples(read_batch(batch, fmt))

    # -- model ----------------------------------------------------------------------------------
    def _model_settings(self):
        return self.config.model, self.config.revision, self.config.dtype, self.config.device

    def _check_tokenizer(self, tokenizer) -> None:
        if self.config.text == "alpaca":
            if not tokenizer.eos_token:
                raise ConfigError(f"The model {models.display_name(self.config.model)!r} has no EOS token to end the alpaca "
                                  "text with; embed the 'chat' text instead.")
            return
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"The model {models.display_name(self.config.model)!r} has no chat template, so it has no conversational "
                "training text to embed; use a model (or tokenizer) with a chat template, or embed the 'alpaca' text."
            )

    # -- embedding ------------------------------------------------------------------------------
    def training_text(self, example: Example) -> str:
        """The text embedded for this row: the chat-template training text, or the reference's alpaca text."""
        if self.config.text == "alpaca":
            prompts = PROMPT_TEMPLATES["alpaca"]
            prompt = prompts["prompt_input"] if example.input else prompts["prompt_no_input"]
            return prompt.format(instruction=example.instruction, input=example.input) + example.response + self.tokenizer.eos_token
        record = to_prompt_completion(example.instruction, example.input, example.response)
        return self.tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=False)

    def token_limit(self) -> int:
        """Tokens kept of a text: the setting (or the text's default) within the model's positions."""
        return models.within_positions(self.model, self.config.token_limit, setting="`max_length`",
                                       explicit=self.config.max_length is not None)

    def token_ids(self, example: Example) -> list[int]:
        """The token ids embedded for this row (special tokens: the tokenizer's own for 'alpaca', none added for 'chat')."""
        add_special = self.config.text == "alpaca"  # the chat text holds its special tokens as text
        return self.tokenizer(self.training_text(example), add_special_tokens=add_special)["input_ids"][: self.token_limit()]

    def embed_examples(self, examples: list[Example | RowProblem]) -> dict[str, Any]:
        ids: dict[int, list[int]] = {}
        status: list[str] = []
        for i, ex in enumerate(examples):
            if isinstance(ex, RowProblem):
                status.append(make(INVALID, ex))
                continue
            ids[i] = self.token_ids(ex)
            status.append(OK if ids[i] else make(INVALID, "empty training text"))
        vectors = self.embed_ids({i: t for i, t in ids.items() if t})
        column = [vectors[i] if i in vectors else None for i in range(len(examples))]
        return {self.config.output_column: column, self.status_column: status}

    def embed_ids(self, ids: dict[int, list[int]]) -> dict[int, np.ndarray]:
        """Mean last-layer state of each token sequence (right-padded batches of similar length)."""
        import torch

        model = self.model
        budget = self.config.max_batch_tokens or (65536 if str(model.device).startswith("cuda") else 4096)
        order = sorted(ids, key=lambda i: len(ids[i]), reverse=True)
        out: dict[int, np.ndarray] = {}
        pad = self.tokenizer.pad_token_id
        start = 0
        with torch.inference_mode():
            while start < len(order):
                width = len(ids[order[start]])
                size = max(1, budget // width)
                members = order[start : start + size]
                start += len(members)
                input_ids = torch.full((len(members), width), pad, dtype=torch.long)
                mask = torch.zeros((len(members), width), dtype=torch.long)
                for b, i in enumerate(members):
                    input_ids[b, : len(ids[i])] = torch.tensor(ids[i])
                    mask[b, : len(ids[i])] = 1
                positions = torch.arange(width).expand(len(members), -1)
                padded = any(len(ids[i]) != width for i in members)
                hidden = model.base_model(
                    input_ids=input_ids.to(model.device),
                    attention_mask=mask.to(model.device) if padded else None,
                    position_ids=positions.to(model.device),
                    use_cache=False,
                ).last_hidden_state
                m = mask.to(model.device, torch.float64).unsqueeze(-1)
                means = (hidden.double() * m).sum(1) / m.sum(1)
                for b, i in enumerate(members):
                    out[i] = means[b].float().cpu().numpy()
        return out


def _rebuild_embedder(version: str, config: dict, digest: str) -> Embedder:
    return Embedder(EmbedConfig(**config))
