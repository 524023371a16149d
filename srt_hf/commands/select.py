"""`srt-hf select IN --top-share R | --top-n N | --kcenter K | --ds-weight --out OUT`: choose rows, each with its reason.

Rules:

* ``--top-share R`` / ``--top-n N`` — top-IFD (Cherry LLM / Superfiltering): rows scored ``ok`` with
  ``ifd < --max-ifd`` ranked by IFD, the top ``int(eligible × R)`` or ``min(N, eligible)`` kept. IN must
  be scored already (``srt-hf score IN --out scored.parquet`` writes the ``ifd`` column). When IN is a
  run folder, only the rows it kept compete (``--all-rows``: all of them); a ``srt-hf recycle`` folder
  is ranked by the IFD of its final rows (``final_ifd``), and its final texts become the SFT data.
* ``--kcenter K`` — one DiverseEvol step: K rows added by k-center greedy on the student's embeddings
  (the ``--embedding-column`` of IN if present, else computed with ``--student``), around the rows
  marked by ``--pool-column`` (e.g. ``selected`` of an earlier run) if given. ``recipes/diverse_evol.py``
  iterates this with training.

OUT is a run folder (rows.parquet with ``selected`` + ``selection_reason`` for every row,
selected.parquet, sft/train.parquet, run.json, README.md), or a ``.parquet`` / ``.jsonl`` file with the
kept rows (``--keep-all``: every row with its decision). The kept rows keep their original order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..status import INVALID, OK, is_ok, make


def add_parser(sub) -> None:
    from ..cli import add_dataclass_arguments
    from ..formats import ColumnMapping

    p = sub.add_parser("select", help="Select rows (top-IFD share or k-center diversity); every row keeps its reason.",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="Scored file, save_to_disk folder, srt_hf run folder or Hub dataset id.")
    p.add_argument("--out", type=Path, required=True, help="Run folder, or a .parquet / .jsonl file.")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--top-share", type=float, metavar="R", help="Keep this share (0..1) of the eligible rows, highest IFD first.")
    rule.add_argument("--top-n", type=int, metavar="N", help="Keep this many eligible rows, highest IFD first.")
    rule.add_argument("--kcenter", type=int, metavar="K", help="Add K rows by k-center greedy on the student's embeddings.")
    rule.add_argument("--ds-weight", action="store_true", help="DS weight with self-consistency over sampled answers (needs --valid).")
    p.add_argument("--max-ifd", type=float, default=1.0, help="Only rows with ifd below this are eligible (default 1; 'inf' for none).")
    p.add_argument("--ifd-column", default="ifd", help="Column holding IFD.")
    p.add_argument("--status-column", default="score_status", help="Column holding the scoring status (used when present).")
    p.add_argument("--keep-all", action="store_true", help="File output: write every row with `selected` and `selection_reason`.")
    p.add_argument("--all-rows", action="store_true",
                   help="IN is a run folder: rank all its rows, not only those the earlier run kept (top-IFD rules).")
    p.add_argument("--split", default="train", help="Split of a Hub dataset or DatasetDict folder.")
    k = p.add_argument_group("k-center (--kcenter)")
    k.add_argument("--student", default="default", help="Model that embeds the rows (--kcenter) or scores the answers (--ds-weight): 'default', a Hub id or a local checkpoint.")
    k.add_argument("--embedding-column", default="embedding", help="Use this column of IN as the embeddings when present.")
    k.add_argument("--pool-column", default=None, help="Boolean column marking the current pool (the first centres).")
    k.add_argument("--start", type=int, default=0, help="First pick when there is no pool (a row position).")
    k.add_argument("--max-length", type=int, default=1024, help="Tokens of the training text embedded (or scored, --ds-weight).")
    w = p.add_argument_group("DS weight (--ds-weight; the question and answer columns: --instruction-column, --response-column)")
    w.add_argument("--valid", default=None, help="Labelled valid set (file, folder or Hub id) for the mean valid loss.")
    w.add_argument("--valid-question-column", default="question", help="Question column of the valid set.")
    w.add_argument("--valid-answer-column", default="solution", help="Reference answer column of the valid set.")
    w.add_argument("--group-column", default=None, help="Column naming each answer's question (default: the question text).")
    w.add_argument("--quantile", type=float, default=0.79, help="Keep consistent answers with d at or below this quantile.")
    w.add_argument("--min-votes", type=int, default=2, help="Answers that must agree for a majority (1: plain plurality).")
    w.add_argument("--ds-template", default="Question: {question}\nAnswer: {answer}", help="Loss template with {question} and {answer}, or 'chat'.")
    add_dataclass_arguments(p, ColumnMapping)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import dataclass_from_args
    from ..dataio import load_input
    from ..errors import InputError
    from ..formats import ColumnMapping, mapped_text_columns
    from ..locks import output_lock

    out: Path = args.out
    file_out = out.suffix.lower() in (".parquet", ".jsonl")
    if out.suffix and not file_out:
        raise InputError(f"cannot write {out}: a run folder has no suffix, a file ends with .parquet or .jsonl", fix="change --out")
    mapping = dataclass_from_args(ColumnMapping, args)
    with output_lock(out, folder=not file_out, command="srt-hf select"):
        ds = load_input(args.input, args.split, text_columns=mapped_text_columns(mapping))
        if args.ds_weight:
            table, meta, drop, mapping = _ds_weight(ds, args, mapping)
        elif args.kcenter is not None:
            table, meta, drop = _kcenter(ds, args, mapping)
        else:
            table, meta, drop, mapping = _top_ifd(ds, args, mapping)
        meta.setdefault("source", {"name": str(args.input), "split": args.split})
        _carry_run_meta(Path(args.input), meta)
        if file_out:
            _write_file(table, out, keep_all=args.keep_all, drop=drop)
        else:
            from ..report import write_report
            from ..selection import write_selection_run

            meta = write_selection_run(out, table, meta, mapping=mapping, drop_columns=drop)
            write_report(out)  # OUT/report.html: every row with its reason
    _print_summary(table, meta, out, args)
    return 0


def _top_ifd(ds, args, mapping):
    from ..errors import InputError
    from ..formats import ColumnMapping
    from ..selection import REASON, SELECTED, quantiles, top_ifd_decisions, with_decisions

    ifd_column, status_column = args.ifd_column, args.status_column
    recycled = ifd_column == "ifd" and ifd_column not in ds.column_names and "final_ifd" in ds.column_names
    if recycled:  # a `srt-hf recycle` run folder: the scores and texts of the final (recycled) rows
        ifd_column, status_column = "final_ifd", "final_score_status"
        if not any(vars(mapping).values()):
            mapping = ColumnMapping(instruction_column="final_instruction", input_column="final_input", response_column="final_response")
    if ifd_column not in ds.column_names:
        raise InputError(
            f"{args.input} has no {ifd_column!r} column, so it is not scored", column=ifd_column,
            fix=f"score it first: `srt-hf score {args.input} --out scored.parquet`, then `srt-hf select scored.parquet ...` "
            "(or name the IFD column with --ifd-column)",
        )
    excluded = None
    if _is_run_folder(Path(args.input)) and SELECTED in ds.column_names and not args.all_rows:
        excluded = [None if kept else f"not kept by the earlier run ({why})" for kept, why in zip(ds[SELECTED], ds[REASON])]
    status = ds[status_column] if status_column in ds.column_names else None
    ifd = ds[ifd_column]
    max_ifd = None if args.max_ifd == float("inf") else args.max_ifd
    selected, reasons, info = top_ifd_decisions(ifd, status, rate=args.top_share, n=args.top_n, max_ifd=max_ifd, excluded=excluded)
    info["ifd_column"] = ifd_column
    info["within_earlier_selection"] = excluded is not None
    kept = [v for v, s in zip(ifd, selected) if s]
    meta = {
        "selection": info,
        "methods": ["top-ifd"],
        "stats": {"ifd": {"before": quantiles(ifd), "after": quantiles(kept)}},
        "histograms": {"ifd": {"before": f"rows.parquet:{ifd_column}", "after": f"selected.parquet:{ifd_column}"}},
    }
    rifd_column = "final_rifd" if recycled else "rifd"
    if rifd_column in ds.column_names:
        rifd = ds[rifd_column]
        meta["stats"]["rifd"] = {"before": quantiles(rifd), "after": quantiles([v for v, s in zip(rifd, selected) if s])}
        meta["histograms"]["rifd"] = {"before": f"rows.parquet:{rifd_column}", "after": f"selected.parquet:{rifd_column}"}
    return with_decisions(ds, selected, reasons), meta, [], mapping


def _is_run_folder(path: Path) -> bool:
    from .. import runs

    return path.is_dir() and runs.RunPaths(path).rows.is_file()


def _kcenter(ds, args, mapping):
    import numpy as np

    from .. import models
    from ..diversity import EmbedConfig, Embedder, kcenter_greedy
    from ..errors import InputError
    from ..selection import with_decisions

    column = args.embedding_column
    computed = column not in ds.column_names
    if computed:
        embedder = Embedder(EmbedConfig(**vars(mapping), model=args.student, max_length=args.max_length, output_column=column))
        ds = ds.map(embedder, batched=True, batch_size=64, desc=f"embedding ({models.display_name(args.student)})")
        status = ds[embedder.status_column]
    else:
        status = None
    matrix, present = _embedding_matrix(ds, column)
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
    picks, dists = kcenter_greedy(vectors, args.kcenter, [where[i] for i in pool_rows], start=where.get(args.start, 0),
                                  return_distances=True, progress=True)
    order = {int(positions[j]): (rank, d) for rank, (j, d) in enumerate(zip(picks, dists), start=1)}
    pool = set(pool_rows)
    reasons, selected, ranks, sq = [], [], [], []
    for i in range(len(ds)):
        if i in pool:
            reasons.append(f"kept: in the initial pool (column {args.pool_column!r})")
        elif i in order:
            rank, d = order[i]
            far = "the first pick, no pool yet" if not np.isfinite(d) else f"squared distance {d:.4g} to the pool"
            reasons.append(f"kept: k-center pick (pick {rank} of {len(picks)}, {far})")
        elif not valid[i]:
            reasons.append(f"dropped: not embedded ({status[i]})")
        else:
            reasons.append(f"dropped: not among the {len(picks)} k-center picks")
        selected.append(i in pool or i in order)
        ranks.append(order[i][0] if i in order else None)
        sq.append(float(order[i][1]) if i in order else float("nan"))
    meta = {
        "selection": {"rule": "kcenter_greedy", "k": args.kcenter, "picked": len(picks), "pool": len(pool_rows),
                      "pool_column": args.pool_column, "start": None if pool_rows else args.start,
                      "embedding": column if not computed else f"mean last hidden state of {models.display_name(args.student)}"},
        "student": {"model": models.display_name(args.student)},
        "methods": ["k-center"],
        "columns": {"selection_order": "k-center pick number (1 = first), null for rows not picked",
                    "kcenter_sq_distance": "squared Euclidean distance to the nearest pool row when picked"},
    }
    table = with_decisions(ds, selected, reasons, {"selection_order": ranks, "kcenter_sq_distance": sq})
    drop = [column, f"{column}_status"] if computed else []
    return table, meta, drop


def _embedding_matrix(ds, column: str):
    """The embedding column as an (N, d) float32 matrix (zero rows where missing) and a presence mask, read in batches."""
    import numpy as np

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


def _ds_weight(ds, args, mapping):
    from .. import models
    from ..dataio import load_input
    from ..dsweight import DSWeightConfig, ds_weight_filter
    from ..errors import InputError
    from ..formats import ColumnMapping

    if not args.valid:
        raise InputError("--ds-weight needs a labelled valid set", fix="pass --valid FILE (question + reference answer columns)")
    question = mapping.instruction_column or "question"
    response = mapping.response_column or next((c for c in ("response", "output", "completion") if c in ds.column_names), "response")
    config = DSWeightConfig(model=args.student, template=args.ds_template, quantile=args.quantile, max_length=args.max_length,
                            min_votes=args.min_votes)
    valid = load_input(args.valid, args.split)
    table, decisions = ds_weight_filter(
        ds, valid, config, question_column=question, response_column=response, group_column=args.group_column,
        valid_question_column=args.valid_question_column, valid_answer_column=args.valid_answer_column,
    )
    meta = {
        "selection": {"rule": "ds_weight_self_consistency", "quantile": args.quantile, "min_votes": args.min_votes, "threshold": decisions.threshold,
                      "mean_valid_loss": decisions.mean_valid_loss, "ds_template": args.ds_template,
                      "valid_set": str(args.valid), "valid_rows": len(valid)},
        "student": {"model": models.display_name(args.student)},
        "methods": ["ds-weight"],
        "columns": {"answer": "final number extracted from the answer", "majority_answer": "self-consistency majority of the question's answers",
                    "votes": "answers giving the majority", "answered": "answers of the question with a final number",
                    "consistent": "answer equals the majority", "loss": "base-model mean token loss of the answer given the question",
                    "w": "clip(mean_valid_loss / loss, 0, 2)", "d": "w if w > 1 else min(1 / w, 5)"},
    }
    return table, meta, [], ColumnMapping(instruction_column=question, response_column=response)


def _carry_run_meta(path: Path, meta: dict) -> None:
    """When IN is a run folder or a scored Parquet file, keep its provenance (source, teacher, student,
    scoring) in the new run."""
    from .. import runs
    from ..dataio import read_provenance

    scored = read_provenance(path)
    if scored:
        meta["source"] = scored.get("source", meta["source"])
        for key in ("student", "scoring"):
            if key in scored:
                meta.setdefault(key, scored[key])

    if path.is_dir() and runs.RunPaths(path).meta.is_file():
        earlier = runs.read_meta(path)
        meta["source"] = earlier.get("source", meta["source"])
        for key in ("teacher", "student", "scoring", "prompts"):
            if key in earlier:
                meta.setdefault(key, earlier[key])
        meta["derived_from"] = str(path)


def _write_file(table, out: Path, *, keep_all: bool, drop) -> None:
    import numpy as np

    from ..dataio import write_tables
    from ..selection import REASON, SELECTED

    if drop:
        table = table.remove_columns([c for c in drop if c in table.column_names])
    if not keep_all:
        table = table.select(np.flatnonzero(np.asarray(table[SELECTED], dtype=bool))).remove_columns([SELECTED, REASON])
    if not len(table):
        import pyarrow.parquet as pq

        from ..durable import atomic_path

        with atomic_path(out) as tmp:
            if out.suffix.lower() == ".parquet":
                pq.write_table(table.with_format("arrow")[0:0], tmp)
            else:
                tmp.write_text("")
        return
    write_tables(table.with_format("arrow").iter(batch_size=10_000), out)


def _print_summary(table, meta: dict, out: Path, args) -> None:
    from ..selection import REASON, SELECTED, reason_counts
    from ..summary import table as fmt_table

    reasons = table[REASON]
    kept = sum(table[SELECTED])
    rule = meta["selection"]["rule"]
    print(f"\nsrt-hf select: {rule} kept {kept} of {len(reasons)} rows -> {out}\n")
    print(fmt_table(["reason", "rows"], list(reason_counts(reasons).items())))
    stats = meta.get("stats") or {}
    if stats:
        rows = []
        for score, ba in stats.items():
            for when in ("before", "after"):
                q = ba[when]
                rows.append([f"{score} {when}", q["n"], *[float("nan") if q[k] is None else q[k] for k in ("min", "p25", "median", "p75", "max")]])
        print("\n" + fmt_table(["score", "n", "min", "p25", "median", "p75", "max"], rows))
