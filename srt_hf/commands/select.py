"""`srt-hf select IN --top-share R | --top-n N | --kcenter K | --ds-weight --out OUT`: choose rows, each with its reason.

Rules:

* ``--top-share R`` / ``--top-n N`` — top-IFD (Cherry LLM / Superfiltering): rows scored ``ok`` with
  ``ifd < --max-ifd`` ranked by IFD, the top ``int(eligible × R)`` or ``min(N, eligible)`` kept. IN must
  be scored already (``srt-hf score IN --out scored.parquet`` writes the ``ifd`` column). When IN is a
  run folder, only the rows it kept compete (``--all-rows``: all of them); a ``srt-hf recycle`` folder
  is ranked by the IFD of its final rows (``final_ifd``), and its final texts become the SFT data.
* ``--kcenter K`` — one DiverseEvol step: K rows added by k-center greedy on the student's embeddings
  (the ``--embedding-column`` of IN if present, else computed with ``--student``), around the rows
  marked by ``--pool-column`` (e.g. ``selected`` of an earlier run) if given. ``srt-hf diverse-evol``
  iterates this with training.
* ``--ds-weight`` — DS weight with self-consistency over sampled answers (``--valid``: the labelled set).

Each rule is one entry of :data:`srt_hf.selection.methods.METHODS`, which adds its own options.
OUT is a run folder (rows.parquet with ``selected`` + ``selection_reason`` for every row,
selected.parquet, sft/train.parquet, run.json, README.md), or a ``.parquet`` / ``.jsonl`` file with the
kept rows (``--keep-all``: every row with its decision). The kept rows keep their original order.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    from ..cli import add_dataclass_arguments
    from ..formats import ColumnMapping
    from ..selection.methods import METHODS

    p = sub.add_parser("select", help="Select rows (top-IFD share or k-center diversity); every row keeps its reason.",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="Scored file, save_to_disk folder, srt_hf run folder or Hub dataset id.")
    p.add_argument("--out", type=Path, required=True, help="Run folder, or a .parquet / .jsonl file.")
    rule = p.add_mutually_exclusive_group(required=True)
    p.add_argument("--keep-all", action="store_true", help="File output: write every row with `selected` and `selection_reason`.")
    p.add_argument("--split", default="train", help="Split of a Hub dataset or DatasetDict folder.")
    m = p.add_argument_group("student model (--kcenter, --ds-weight)")
    m.add_argument("--student", default="default", help="Model that embeds the rows (--kcenter) or scores the answers (--ds-weight): 'default', a Hub id or a local checkpoint.")
    m.add_argument("--max-length", type=int, default=None,
                   help="Tokens of the text embedded (--kcenter; default: 1024 for the chat text, 512 for the alpaca text) "
                        "or scored (--ds-weight; default 400, the reference's).")
    for method in METHODS:
        method.add_arguments(p, rule)
    add_dataclass_arguments(p, ColumnMapping)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import dataclass_from_args
    from ..dataio import load_input
    from ..errors import InputError
    from ..formats import ColumnMapping, mapped_text_columns
    from ..locks import output_lock
    from ..progress import quiet_foreign_bars
    from ..selection.methods import chosen_method

    out: Path = args.out
    file_out = out.suffix.lower() in (".parquet", ".jsonl")
    if out.suffix and not file_out:
        raise InputError(f"cannot write {out}: a run folder has no suffix, a file ends with .parquet or .jsonl", fix="change --out")
    mapping = dataclass_from_args(ColumnMapping, args)
    # datasets' map / filter / "Generating train split" bars say nothing the summary does not: srt_hf's bars only
    with output_lock(out, folder=not file_out, command="srt-hf select"), quiet_foreign_bars():
        ds = load_input(args.input, args.split, text_columns=mapped_text_columns(mapping))
        table, meta, drop, mapping = chosen_method(args).run(ds, args, mapping)
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
    from ..dataio import write_tables
    from ..selection import kept_rows

    if drop:
        table = table.remove_columns([c for c in drop if c in table.column_names])
    if not keep_all:
        table = kept_rows(table)
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
    from ..figures import ALL_ROWS, KEPT_ROWS
    from ..selection import REASON, SELECTED, reason_counts
    from ..summary import figures_table, teacher_written_rows
    from ..summary import table as fmt_table

    reasons = table[REASON]
    kept = sum(table[SELECTED])
    rule = meta["selection"]["rule"]
    print(f"\nsrt-hf select: {rule} kept {kept} of {len(reasons)} rows -> {out}\n")
    print(fmt_table(["reason", "rows"], list(reason_counts(reasons).items())))
    written = teacher_written_rows(meta)  # rows of a recycle run: what the teacher wrote into the training data
    if written:
        print("\n" + fmt_table(["training data", "rows"], written))
    scores = figures_table(meta)  # a run folder: the figures its card and report show
    stats = {k: v for k, v in (meta.get("stats") or {}).items() if isinstance(v, dict) and "before" in v}
    if not scores and stats:  # a file output: the method's own quantiles, over all rows and the kept rows
        rows = []
        for score, ba in stats.items():
            for when, population in (("before", ALL_ROWS), ("after", KEPT_ROWS)):
                q = ba[when]
                rows.append([score, population, q["n"], *[float("nan") if q[k] is None else q[k] for k in ("min", "p25", "median", "p75", "max")]])
        scores = fmt_table(["score", "population", "n", "min", "p25", "median", "p75", "max"], rows)
    if scores:
        print("\n" + scores)
