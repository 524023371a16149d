"""k-center decisions (DiverseEvol, docs/ARCHITECTURE.md): the reasons of one or more k-center rounds, built once.

    picks, dists = kcenter_greedy(vectors, 100, pool, return_distances=True)
    decisions = kcenter_decisions(len(ds), pool, [(picks, dists)], pool_reason="in the initial pool (column 'selected')")
    table = decisions.table(ds)   # selected, selection_reason, selection_order, kcenter_sq_distance

Used by ``srt-hf select --kcenter`` (one round, :class:`KCenter`) and by ``recipes/diverse_evol.py``
(several rounds, ``per_round=True`` adds the ``pool_round`` column and names the round in each reason).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from ..status import INVALID, OK, is_ok, make
from .decisions import Decisions


def pick_reason(rank: int, picks: int, sq_distance: float, round_: int | None = None) -> str:
    """``kept: …`` of the ``rank``-th of ``picks`` k-center picks (of round ``round_``, when given)."""
    far = "the first pick, no pool yet" if not np.isfinite(sq_distance) else f"squared distance {sq_distance:.4g} to the pool"
    what = "k-center pick" if round_ is None else f"round {round_} k-center pick"
    return f"kept: {what} (pick {rank} of {picks}, {far})"


def kcenter_decisions(
    n: int,
    pool: Sequence[int],
    rounds: Sequence[tuple[Sequence[int], Sequence[float]]],
    *,
    pool_reason: str,
    unusable: dict[int, str] | None = None,
    per_round: bool = False,
) -> Decisions:
    """Decisions over ``n`` rows: the initial ``pool`` and the ``(picks, squared distances)`` of each round kept.

    ``unusable[i]`` says why row ``i`` could not compete (``not embedded (…)``). ``columns``:
    ``selection_order`` (pick number over all rounds), ``kcenter_sq_distance`` and, with ``per_round``,
    ``pool_round`` (0 = initial pool).
    """
    unusable = unusable or {}
    reason = dict.fromkeys(pool, f"kept: {pool_reason}")
    round_of = dict.fromkeys(pool, 0)
    order: dict[int, int] = {}
    distance: dict[int, float] = {}
    for r, (picks, dists) in enumerate(rounds, start=1):
        for rank, (i, d) in enumerate(zip(picks, dists), start=1):
            if i in round_of:
                continue
            reason[i] = pick_reason(rank, len(picks), d, r if per_round else None)
            round_of[i], order[i], distance[i] = r, len(order) + 1, float(d)
    if per_round:
        not_picked = f"not picked in {len(rounds)} rounds"
    else:
        not_picked = f"not among the {sum(len(p) for p, _ in rounds)} k-center picks"
    reasons = [reason[i] if i in reason else f"dropped: {unusable[i]}" if i in unusable else f"dropped: {not_picked}"
               for i in range(n)]
    columns: dict[str, list] = {"pool_round": [round_of.get(i) for i in range(n)]} if per_round else {}
    columns["selection_order"] = [order.get(i) for i in range(n)]
    columns["kcenter_sq_distance"] = [distance.get(i, float("nan")) for i in range(n)]
    return Decisions([i in reason for i in range(n)], reasons, columns=columns, methods=["k-center"])


# ------------------------------------------------------------------------------------------------
# srt-hf select --kcenter K


class KCenter:
    """``--kcenter K``: one DiverseEvol step on the student's embeddings (or IN's embedding column)."""

    name = "k-center"

    def add_arguments(self, parser, rule) -> None:
        rule.add_argument("--kcenter", type=int, metavar="K", help="Add K rows by k-center greedy on the student's embeddings.")
        k = parser.add_argument_group("k-center (--kcenter)")
        k.add_argument("--embedding-column", default="embedding", help="Use this column of IN as the embeddings when present.")
        k.add_argument("--pool-column", default=None, help="Boolean column marking the current pool (the first centres).")
        k.add_argument("--start", type=int, default=0, help="First pick when there is no pool (a row position).")
        k.add_argument("--embed-text", default="chat", choices=("chat", "alpaca"),
                       help="Text the student embeds: 'chat' (the chat-template text TRL trains on; default) or 'alpaca' "
                            "(the DiverseEvol reference's: Alpaca prompt + response + EOS, 512 tokens).")

    def chosen(self, args) -> bool:
        return args.kcenter is not None

    def run(self, ds, args, mapping):
        """(table, meta, columns to leave out of the files, column mapping of the SFT texts)."""
        from .. import models
        from ..diversity import EmbedConfig, Embedder, kcenter_greedy

        column = args.embedding_column
        computed = column not in ds.column_names
        if computed:
            embedder = Embedder(EmbedConfig(**vars(mapping), model=args.student, text=args.embed_text, max_length=args.max_length,
                                            output_column=column))
            ds = ds.map(embedder, batched=True, batch_size=64, desc=f"embedding ({models.display_name(args.student)})")
            status = ds[embedder.status_column]
        else:
            status = None
        matrix, present = embedding_matrix(ds, column)
        if status is None:
            status = [OK if p else make(INVALID, "no embedding") for p in present]
        valid = np.array([is_ok(s) for s in status]) & present
        positions = np.flatnonzero(valid)
        pool_rows: list[int] = []
        if args.pool_column:
            if args.pool_column not in ds.column_names:
                raise InputError(f"{args.input} has no pool column {args.pool_column!r}", column=args.pool_column,
                                 fix="name a boolean column with --pool-column, or leave it out to start from --start")
            pool_rows = [i for i, v in enumerate(ds[args.pool_column]) if v]
            lost = [i for i in pool_rows if not valid[i]]
            if lost:
                raise InputError(f"pool row {lost[0]} has no embedding ({status[lost[0]]})", row=lost[0], fix="fix or drop that row")
        where = {int(p): j for j, p in enumerate(positions)}
        if not pool_rows and not (0 <= args.start < len(ds) and valid[args.start]):
            raise InputError(f"--start {args.start} is not the position of a row with an embedding", fix="choose another row position")
        if not len(positions):
            raise InputError("no row could be embedded", fix="check the statuses in the embedding status column")
        vectors = matrix if len(positions) == len(ds) else matrix[positions]
        local, dists = kcenter_greedy(vectors, args.kcenter, [where[i] for i in pool_rows], start=where.get(args.start, 0),
                                      return_distances=True, progress=True)
        picks = [int(positions[j]) for j in local]
        unusable = {i: f"not embedded ({status[i]})" for i in range(len(ds)) if not valid[i]}
        decisions = kcenter_decisions(len(ds), pool_rows, [(picks, dists)], unusable=unusable,
                                      pool_reason=f"in the initial pool (column {args.pool_column!r})")
        decisions.info = {
            "rule": "kcenter_greedy", "k": args.kcenter, "picked": len(picks), "pool": len(pool_rows),
            "pool_column": args.pool_column, "start": None if pool_rows else args.start,
            "embedding": column if not computed else f"mean last hidden state of {models.display_name(args.student)}",
            "embed_text": None if not computed else embedder.config.text,
            "embed_max_length": None if not computed else embedder.token_limit(),
        }
        meta = {
            "selection": decisions.info,
            "student": {"model": models.display_name(args.student)},
            "methods": decisions.methods,
            "columns": {"selection_order": "k-center pick number (1 = first), null for rows not picked",
                        "kcenter_sq_distance": "squared Euclidean distance to the nearest pool row when picked"},
        }
        drop = [column, f"{column}_status"] if computed else []
        return decisions.table(ds), meta, drop, mapping


def embedding_matrix(ds, column: str):
    """The embedding column as an (N, d) float32 matrix (zero rows where missing) and a presence mask, read in batches."""
    from ..errors import InputError

    feature = ds.features[column]
    if type(feature).__name__ not in ("List", "LargeList", "Sequence", "Array2D") and not isinstance(feature, list):
        raise InputError(f"{column!r} holds {feature} values, not embedding vectors", column=column,
                         fix="name a column of number lists with --embedding-column, or name one that does not exist "
                         "to let --student compute the embeddings")
    part = ds.select_columns([column]).with_format("numpy")
    matrix, present = None, np.zeros(len(ds), dtype=bool)
    for lo in range(0, len(ds), 8192):
        values = part[lo : lo + 8192][column]
        rows = list(values) if values.dtype == object else values
        for j, v in enumerate(rows):
            if v is None or not len(v):
                continue
            if matrix is None:
                matrix = np.zeros((len(ds), len(v)), dtype=np.float32)
            if len(v) != matrix.shape[1]:
                raise InputError(f"embedding of length {len(v)}, others have {matrix.shape[1]}", row=lo + j, column=column,
                                 fix="embed every row with the same model")
            matrix[lo + j] = v
            present[lo + j] = True
    if matrix is None:
        raise InputError("no row has an embedding", column=column, fix="check the embedding status column or the input")
    return matrix, present
