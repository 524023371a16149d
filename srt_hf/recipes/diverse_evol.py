"""DiverseEvol: the model picks its own diverse training data, round by round (Wu et al., 2023).

    srt-hf diverse-evol --config diverse_evol_demo        # = python recipes/diverse_evol.py --config recipes/configs/diverse_evol_demo.yaml
    srt-hf diverse-evol --dataset data.jsonl --initial_pool 100 --step 100 --rounds 10 \
        --model_name_or_path HuggingFaceTB/SmolLM2-360M-Instruct --output_dir outputs/diverse-evol

Start from a seeded random pool (or the rows marked by ``--initial_pool_column``). Each round trains
a model *from the base model* on the pool, embeds every row with that checkpoint (the mean last
hidden state of the row's training text, :class:`srt_hf.diversity.Embedder`) and adds ``step`` rows
by k-center greedy around the pool (:func:`srt_hf.diversity.kcenter_greedy`). A last model is
trained on the final pool (``--train_final``). Training settings are TRL's ``SFTConfig`` flags; on a
machine without a GPU pass ``--use_cpu true --bf16 false`` (the demo config does).

The embedded text is, by default, the chat-template text each round trains on (``--embed_text chat``,
1024 tokens): like the reference, the model embeds exactly what it learns from. ``--embed_text alpaca``
embeds the reference's own text instead (OFA-Sys/DiverseEvol: the Alpaca prompt + response + EOS, cut
at 512 tokens), while training stays on the chat text. Pooling and k-center are the reference's either way.

Writes, under ``output_dir``::

    pools/round_00.parquet ...   the pool after each round (its rows, with pool_round and selection_order)
    round_01/model/ ...          the checkpoint of each round, round_01/embeddings.npy its embeddings
    data/                        a run folder of the final pool (rows.parquet: every row with its reason;
                                 sft/train.parquet: the pool as prompt/completion, ready for `srt-hf sft`)
    final/                       the model trained on the final pool
    state.json                   settings digest; a rerun with the same settings resumes finished rounds
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from srt_hf.formats import ColumnMapping
from srt_hf.status import INVALID, is_ok, make
from srt_hf.train import recipe_entry_points


@dataclass
class DiverseEvolArguments(ColumnMapping):
    """What to select from, and how the pool grows."""

    dataset: str = field(default="demo", metadata={"help": "Data file (.jsonl/.json/.csv/.parquet), save_to_disk folder, srt_hf run folder, Hub dataset id, or 'demo'."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict folder."})
    model_name_or_path: str = field(default="default", metadata={"help": "Base model: every round trains from it. 'default' is the embedded SmolLM2-135M-Instruct."})
    initial_pool: int = field(default=100, metadata={"help": "Size of the seeded random initial pool."})
    initial_pool_column: str | None = field(default=None, metadata={"help": "Boolean column marking the initial pool instead (e.g. `selected` of an earlier run)."})
    pool_seed: int = field(default=42, metadata={"help": "Seed of the random initial pool."})
    step: int = field(default=100, metadata={"help": "Rows added per round by k-center greedy."})
    rounds: int = field(default=3, metadata={"help": "Rounds of train -> embed -> add."})
    train_final: bool = field(default=True, metadata={"help": "Train a last model on the final pool (output_dir/final)."})
    embed_text: str = field(default="chat", metadata={"help": "Text embedded: 'chat' (the chat-template text the rounds train on) or 'alpaca' (the DiverseEvol reference's: Alpaca prompt + response + EOS)."})
    embed_max_length: int | None = field(default=None, metadata={"help": "Tokens of each text embedded. Default: 1024 for 'chat', 512 for 'alpaca' (the reference's)."})
    embed_batch_rows: int = field(default=64, metadata={"help": "Rows per embedding call."})


def run(args: DiverseEvolArguments, training_args) -> dict:
    """The whole DiverseEvol loop; returns the final metadata (also in output_dir/data/run.json)."""
    from srt_hf.locks import output_lock

    with output_lock(Path(training_args.output_dir), folder=True, command="recipes/diverse_evol.py",
                     then="rerun this command", elsewhere="--output_dir"):  # one run per output_dir
        return _run(args, training_args)


def _run(args: DiverseEvolArguments, training_args) -> dict:
    import numpy as np

    from srt_hf import models
    from srt_hf.dataio import load_input
    from srt_hf.diversity import EmbedConfig, Embedder, kcenter_greedy
    from srt_hf.errors import ConfigError
    from srt_hf.selection import kcenter_decisions, write_selection_run
    from srt_hf.train import train_sft

    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_state(out, args)
    ds = load_input(args.dataset, args.dataset_split)
    n = len(ds)
    records, problems = _sft_records(ds, args)

    # the initial pool
    if args.initial_pool_column:
        if args.initial_pool_column not in ds.column_names:
            raise ConfigError(f"initial_pool_column {args.initial_pool_column!r} is not a column of the dataset ({ds.column_names}).")
        pool = [i for i, v in enumerate(ds[args.initial_pool_column]) if v]
        origin = f"in the initial pool (column {args.initial_pool_column!r})"
    else:
        usable = [i for i in range(n) if i not in problems]
        if args.initial_pool > len(usable):
            raise ConfigError(f"initial_pool = {args.initial_pool} but the dataset has {len(usable)} usable rows; lower --initial_pool.")
        rng = np.random.default_rng(args.pool_seed)
        pool = sorted(int(i) for i in rng.choice(usable, size=args.initial_pool, replace=False))
        origin = f"in the initial pool (random sample, seed {args.pool_seed})"
    bad = [i for i in pool if i in problems]
    if bad:
        raise ConfigError(f"initial pool row {bad[0]} cannot be trained on ({problems[bad[0]]}); fix or drop it.")
    if not pool:
        raise ConfigError("the initial pool is empty; set --initial_pool > 0 or mark rows with --initial_pool_column.")
    initial = list(pool)
    rounds: list[tuple[list[int], list[float]]] = []  # (picks, squared distances) of each round
    embed_lengths: list[int] = []  # tokens each round's embedder kept (the setting, or lowered to the model's positions)
    _write_pool(out, 0, ds, initial, rounds)

    for r in range(1, args.rounds + 1):
        if len(pool) >= n - len(problems):
            print(f"diverse_evol: round {r}: every usable row is in the pool; stopping")
            break
        saved = _load_round(out, r)
        if saved is not None:  # resume
            picks, dists, embed_length = saved
        else:
            model_dir = out / f"round_{r:02d}" / "model"
            if not any(model_dir.glob("*.safetensors")):  # a finished checkpoint is reused on resume
                train_sft(args.model_name_or_path, _subset(records, pool), model_dir, args=training_args)
            model_dir = str(model_dir)
            embedder = Embedder(EmbedConfig(**_mapping(args), model=model_dir, text=args.embed_text, max_length=args.embed_max_length))
            vectors, status = _embed(ds, embedder, args.embed_batch_rows, f"round {r}: embedding")
            usable = [i for i in range(n) if is_ok(status[i]) and i not in problems]
            lost = [i for i in pool if i not in set(usable)]
            if lost:
                raise ConfigError(f"pool row {lost[0]} could not be embedded ({status[lost[0]]}).")
            where = {i: j for j, i in enumerate(usable)}
            candidates = vectors if len(usable) == n else vectors[usable]
            local, dists = kcenter_greedy(candidates, args.step, [where[i] for i in pool], return_distances=True, progress=True)
            picks = [usable[j] for j in local]
            embed_length = embedder.token_limit()
            np.save(out / f"round_{r:02d}" / "embeddings.npy", vectors)
            (out / f"round_{r:02d}" / "picks.json").write_text(
                json.dumps({"picks": picks, "sq_distances": dists, "embed_max_length": embed_length}))
        rounds.append((picks, dists))
        embed_lengths.append(embed_length)
        pool = pool + picks
        _write_pool(out, r, ds, initial, rounds)
        print(f"diverse_evol: round {r}: +{len(picks)} rows -> pool of {len(pool)}")

    final_dir = None
    if args.train_final:
        final_dir = train_sft(args.model_name_or_path, _subset(records, pool), out / "final", args=training_args).args.output_dir

    unusable = {i: f"cannot be trained on ({why})" for i, why in problems.items()}
    decisions = kcenter_decisions(n, initial, rounds, pool_reason=origin, unusable=unusable, per_round=True)
    meta = {
        "source": {"name": args.dataset, "split": args.dataset_split},
        "student": {"model": models.display_name(args.model_name_or_path)},
        "selection": {"rule": "diverse_evol_kcenter", "initial_pool": len(initial), "step": args.step,
                      "rounds": len(rounds), "pool_seed": None if args.initial_pool_column else args.pool_seed,
                      "initial_pool_column": args.initial_pool_column, "embedding": "mean last hidden state of each round's checkpoint",
                      "embed_text": args.embed_text, "embed_max_length": _embed_length(embed_lengths, args)},
        "methods": ["diverse-evol", *decisions.methods],
        "training": {"final_model": final_dir, "max_steps": training_args.max_steps, "learning_rate": training_args.learning_rate},
        "columns": {"pool_round": "round in which the row joined the pool (0 = initial pool)",
                    "selection_order": "k-center pick number over all rounds (null for the initial pool and rows not picked)",
                    "kcenter_sq_distance": "squared Euclidean distance to the pool when picked"},
    }
    meta = write_selection_run(out / "data", decisions.table(ds), meta, mapping=_column_mapping(args))
    _print_summary(meta, out)
    return meta


# ------------------------------------------------------------------------------------------------
# helpers


def _mapping(args: DiverseEvolArguments) -> dict:
    return {k: getattr(args, k) for k in ("instruction_column", "input_column", "response_column", "messages_column")}


def _column_mapping(args: DiverseEvolArguments) -> ColumnMapping:
    return ColumnMapping(**_mapping(args))


def _sft_records(ds, args):
    """Conversational prompt/completion records of every row (the text each round trains on), and unreadable rows."""
    from srt_hf.formats import RowProblem, detect_format, read_batch, to_prompt_completion

    fmt = detect_format(ds.column_names, _column_mapping(args))
    records: list[dict | None] = []
    problems: dict[int, str] = {}
    for lo in range(0, len(ds), 1000):
        for j, ex in enumerate(read_batch(ds[lo : lo + 1000], fmt)):
            if isinstance(ex, RowProblem):
                problems[lo + j] = make(INVALID, ex)
                records.append(None)
            else:
                records.append(to_prompt_completion(ex.instruction, ex.input, ex.response))
    return records, problems


def _subset(records, rows):
    from datasets import Dataset

    return Dataset.from_list([records[i] for i in rows])


def _embed(ds, embedder, batch_rows: int, desc: str):
    import numpy as np
    from tqdm.auto import tqdm

    vectors, status = [], []
    for lo in tqdm(range(0, len(ds), batch_rows), desc=desc, unit="batch"):
        out = embedder(ds[lo : lo + batch_rows])
        vectors += out[embedder.config.output_column]
        status += out[embedder.status_column]
    dim = next((len(v) for v in vectors if v is not None), 1)
    matrix = np.zeros((len(vectors), dim), dtype=np.float32)
    for i, v in enumerate(vectors):
        if v is not None:
            matrix[i] = v
    return matrix, status


def _write_pool(out: Path, r: int, ds, initial, rounds) -> None:
    from srt_hf.selection import kcenter_decisions

    path = out / "pools" / f"round_{r:02d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = initial + [i for picks, _ in rounds for i in picks]
    columns = kcenter_decisions(len(ds), initial, rounds, pool_reason="", per_round=True).columns
    rows = ds.select(pool)
    rows = rows.add_column("row", pool).add_column("pool_round", [columns["pool_round"][i] for i in pool])
    rows = rows.add_column("selection_order", [columns["selection_order"][i] for i in pool])
    rows.to_parquet(str(path))


def _load_round(out: Path, r: int):
    path = out / f"round_{r:02d}" / "picks.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["picks"], saved["sq_distances"], saved.get("embed_max_length")  # None: saved by an older srt_hf


def _embed_length(lengths: list[int | None], args: DiverseEvolArguments) -> int | None:
    """The tokens the rounds embedded (the same in every round: one student architecture), for the metadata;
    the setting where no round embedded, None where a resumed round did not record it."""
    from srt_hf.diversity import EmbedConfig

    if not lengths:
        return EmbedConfig(text=args.embed_text, max_length=args.embed_max_length).token_limit
    return lengths[-1] if len(set(lengths)) == 1 else None


def _check_state(out: Path, args: DiverseEvolArguments) -> None:
    """Resume only a run with the same selection settings (rounds and train_final may change)."""
    from srt_hf.errors import ConfigError

    settings = {k: v for k, v in asdict(args).items() if k not in ("rounds", "train_final", "embed_batch_rows")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    state = out / "state.json"
    if state.is_file() and json.loads(state.read_text()).get("digest") != digest:
        raise ConfigError(f"{out} holds a DiverseEvol run with other settings; choose another output_dir or delete it.")
    state.write_text(json.dumps({"digest": digest, "settings": settings}, indent=2))


def _print_summary(meta: dict, out: Path) -> None:
    from srt_hf.summary import table

    c = meta["counts"]
    print(f"\ndiverse_evol: pool of {c['selected']} of {c['input']} rows after {meta['selection']['rounds']} rounds -> {out}\n")
    print(table(["reason", "rows"], list(meta["reasons"].items())))


# the recipe's options (its own and TRL's SFTConfig), and its command line
make_parser, main = recipe_entry_points("diverse_evol", run, DiverseEvolArguments)


if __name__ == "__main__":
    sys.exit(main())
