"""Top-IFD share: the rule, its edge cases and reasons, and `srt-hf select` writing a run folder."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from srt_hf.errors import ConfigError, InputError
from srt_hf.selection import select_top_ifd, top_ifd_decisions


def _unpack(decisions):
    assert decisions.methods == ["top-ifd"]
    return decisions.selected, decisions.reasons, decisions.info


IFD = [0.5, 1.2, 0.9, None, 0.7, 0.9, float("nan"), 0.1, 1.0, 0.3]
STATUS = ["ok", "ok", "ok", "skipped: prompt + response longer than max_length (512 tokens)", "ok", "ok", "ok", "ok", "ok", "ok"]


def make_ds():
    import datasets

    return datasets.Dataset.from_dict({
        "id": [str(i) for i in range(len(IFD))],
        "instruction": [f"question {i}" for i in range(len(IFD))],
        "input": [""] * len(IFD),
        "output": [f"answer {i}" for i in range(len(IFD))],
        "ifd": [math.nan if v is None else v for v in IFD],
        "score_status": STATUS,
    })


def test_top_share_keeps_the_highest_ifd_below_one_in_original_order():
    # eligible (ok, finite, < 1): rows 0 .5, 2 .9, 4 .7, 5 .9, 7 .1, 9 .3 -> 6 rows; 50% keeps 3: rows 2, 5 (tie, earlier first), 4
    selected, reasons, info = _unpack(top_ifd_decisions(IFD, STATUS, rate=0.5))
    assert list(np.flatnonzero(selected)) == [2, 4, 5]
    assert info["eligible"] == 6 and info["kept"] == 3 and info["lowest_kept_ifd"] == 0.7
    assert reasons[2].startswith("kept: top 50% by IFD (IFD rank 1 of 6")
    assert reasons[5].startswith("kept: top 50% by IFD (IFD rank 2 of 6")
    assert reasons[1] == "dropped: ifd >= 1 (1.2000)" and reasons[8] == "dropped: ifd >= 1 (1.0000)"
    assert reasons[3] == f"dropped: not scored ({STATUS[3]})"
    assert reasons[6].startswith("dropped: not scored (ifd is missing")
    assert reasons[0].startswith("dropped: below the top 50% by IFD (IFD rank 4 of 6")


def test_tie_at_the_cut_goes_to_the_earlier_row():
    selected, _, _ = _unpack(top_ifd_decisions([0.9, 0.5, 0.9], rate=0.34))  # int(3 * .34) = 1 of two tied rows
    assert list(selected) == [True, False, False]


def test_rate_to_zero_keeps_nothing_and_says_why():
    selected, reasons, info = _unpack(top_ifd_decisions(IFD, STATUS, rate=0.01))  # int(6 * 0.01) = 0
    assert not selected.any() and info["kept"] == 0 and info["lowest_kept_ifd"] is None
    assert reasons[2].startswith("dropped: the top 1% of 6 rows is 0 rows")
    selected, _, _ = _unpack(top_ifd_decisions(IFD, STATUS, rate=0.0))
    assert not selected.any()


def test_top_n_and_max_ifd():
    selected, _, info = _unpack(top_ifd_decisions(IFD, STATUS, n=100))
    assert selected.sum() == 6 and info["kept"] == 6  # min(n, eligible)
    selected, _, _ = _unpack(top_ifd_decisions(IFD, STATUS, n=2, max_ifd=None))  # no cap: 1.2 and 1.0 compete
    assert list(np.flatnonzero(selected)) == [1, 8]
    selected, _, _ = _unpack(top_ifd_decisions(IFD, None, n=1))  # no status column: finite values are scored
    assert list(np.flatnonzero(selected)) == [2]


@pytest.mark.parametrize("kwargs", [{}, {"rate": 0.1, "n": 3}, {"rate": 5.0}, {"rate": -0.1}, {"n": -1}])
def test_bad_amounts_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        top_ifd_decisions(IFD, STATUS, **kwargs)


def test_select_top_ifd_on_a_dataset():
    ds = make_ds()
    kept = select_top_ifd(ds, rate=0.5)
    assert kept["id"] == ["2", "4", "5"] and "selected" not in kept.column_names
    table = select_top_ifd(ds, rate=0.5, keep_all=True)
    assert len(table) == len(ds) and table["selected"].count(True) == 3
    assert all(r.startswith(("kept: ", "dropped: ")) for r in table["selection_reason"])
    assert select_top_ifd(ds, rate=0.5)["id"] == kept["id"]  # deterministic
    with pytest.raises(InputError, match="srt-hf score"):
        select_top_ifd(ds.remove_columns("ifd"), rate=0.5)


# ------------------------------------------------------------------------------------------------
# CLI


def run_select(argv: list[str]) -> int:
    """`srt-hf select …` through the command module (independent of the COMMANDS registry)."""
    from srt_hf.commands import select

    parser = argparse.ArgumentParser(prog="srt-hf")
    select.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["select", *argv])
    return args.run(args)


@pytest.fixture()
def scored_file(tmp_path):
    path = tmp_path / "scored.parquet"
    make_ds().to_parquet(str(path))
    return path


def test_cli_writes_a_run_folder(scored_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_select([str(scored_file), "--top-share", "0.5", "--out", str(out)]) == 0
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    assert len(rows) == len(IFD) and all(r["selection_reason"] for r in rows)
    assert [r["id"] for r in rows if r["selected"]] == ["2", "4", "5"]
    assert pq.read_table(out / "selected.parquet").column("id").to_pylist() == ["2", "4", "5"]
    sft = pq.read_table(out / "sft" / "train.parquet").to_pylist()
    assert sft[0]["prompt"] == [{"role": "user", "content": "question 2"}]
    assert sft[0]["completion"] == [{"role": "assistant", "content": "answer 2"}]
    meta = json.loads((out / "run.json").read_text())
    assert meta["kind"] == "select" and meta["selection"]["rule"] == "top_ifd_share" and meta["selection"]["rate"] == 0.5
    assert meta["counts"]["input"] == 10 and meta["counts"]["selected"] == 3 and meta["counts"]["sft"] == 3
    assert meta["stats"]["ifd"]["before"]["n"] == 8 and meta["stats"]["ifd"]["after"]["min"] == 0.7
    assert (out / "README.md").read_text().strip()
    printed = capsys.readouterr().out
    assert "kept 3 of 10 rows" in printed and "dropped: ifd >= 1" in printed
    assert re.search(r"IFD\s+kept rows\s+3\s+[\d.]+\s+[\d.]+\s+0\.700\s", printed)  # the population and its n
    assert [f["label"] for f in meta["score_figures"]["ifd"]] == ["all rows", "kept rows"]


def test_cli_zero_rows_is_a_legal_explained_run(scored_file, tmp_path):
    out = tmp_path / "empty"
    assert run_select([str(scored_file), "--top-share", "0.01", "--out", str(out)]) == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["counts"]["selected"] == 0
    assert pq.read_table(out / "sft" / "train.parquet").schema.names == ["prompt", "completion", "id"]
    assert not any(pq.read_table(out / "rows.parquet").column("selected").to_pylist())


def test_cli_file_output_and_keep_all(scored_file, tmp_path):
    out = tmp_path / "kept.jsonl"
    run_select([str(scored_file), "--top-n", "2", "--out", str(out)])
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["2", "5"]
    out = tmp_path / "all.parquet"
    run_select([str(scored_file), "--top-n", "2", "--out", str(out), "--keep-all"])
    table = pq.read_table(out)
    assert table.num_rows == 10 and table.column("selected").to_pylist().count(True) == 2


def test_cli_unscored_input_points_to_score(tmp_path, demo_path):
    with pytest.raises(InputError, match="srt-hf score"):
        run_select([str(demo_path), "--top-share", "0.1", "--out", str(tmp_path / "x")])


def test_cli_kcenter_with_given_embeddings_and_pool(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((12, 4)).astype(np.float32)
    ds = make_ds().add_column("embedding", [list(map(float, v)) for v in vectors[:10]])
    ds = ds.add_column("in_pool", [i in (0, 1) for i in range(10)])
    path = tmp_path / "emb.parquet"
    ds.to_parquet(str(path))
    out = tmp_path / "kc"
    assert run_select([str(path), "--kcenter", "3", "--pool-column", "in_pool", "--out", str(out)]) == 0
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    from srt_hf.diversity import kcenter_greedy

    expected = kcenter_greedy(vectors[:10], 3, initial=[0, 1])
    assert [r["selection_order"] for r in rows if r["selection_order"]] == [expected.index(i) + 1 for i in sorted(expected)]
    assert sum(r["selected"] for r in rows) == 5
    assert rows[0]["selection_reason"].startswith("kept: in the initial pool")
    assert json.loads((out / "run.json").read_text())["selection"]["rule"] == "kcenter_greedy"


def test_cli_ds_weight(tmp_path, tiny_model_dir):
    import datasets

    candidates = datasets.Dataset.from_dict({
        "question": ["What is 2 + 3?"] * 4 + ["What is 10 - 4?"] * 4,
        "output": ["2 + 3 = 5. The answer is 5.", "The answer is 5.", "5", "It is 6.",
                   "10 - 4 = 6. The answer is 6.", "6", "So 6.", "I do not know."],
    })
    valid = datasets.Dataset.from_dict({"question": ["What is 1 + 1?"], "solution": ["1 + 1 = 2. The answer is 2."]})
    candidates.to_json(str(tmp_path / "cand.jsonl"))
    valid.to_json(str(tmp_path / "valid.jsonl"))
    out = tmp_path / "ds"
    assert run_select([str(tmp_path / "cand.jsonl"), "--ds-weight", "--valid", str(tmp_path / "valid.jsonl"),
                       "--student", str(tiny_model_dir), "--out", str(out)]) == 0
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    assert [r["consistent"] for r in rows] == [True, True, True, False, True, True, True, False]
    assert not rows[3]["selected"] and rows[3]["selection_reason"].startswith("dropped: disagrees with the majority answer")
    kept = [r for r in rows if r["selected"]]
    assert 0 < len(kept) <= 6
    meta = json.loads((out / "run.json").read_text())
    assert meta["selection"]["rule"] == "ds_weight_self_consistency" and meta["counts"]["sft"] == len(kept)
    sft = pq.read_table(out / "sft" / "train.parquet").to_pylist()
    assert sft[0]["prompt"][0]["content"] == kept[0]["question"] and sft[0]["completion"][0]["content"] == kept[0]["output"]
    with pytest.raises(InputError, match="--valid"):
        run_select([str(tmp_path / "cand.jsonl"), "--ds-weight", "--out", str(tmp_path / "x")])


def test_cli_kcenter_embeds_with_the_student(tmp_path, demo_path, tiny_model_dir):
    out = tmp_path / "kc-student"
    assert run_select([str(demo_path), "--kcenter", "3", "--student", str(tiny_model_dir), "--start", "2", "--out", str(out)]) == 0
    table = pq.read_table(out / "rows.parquet")
    assert table.num_rows == 20 and "embedding" not in table.column_names  # computed vectors stay out of the files
    rows = table.to_pylist()
    assert [i for i, r in enumerate(rows) if r["selection_order"] == 1] == [2]  # the start row is the first pick
    assert sum(r["selected"] for r in rows) == 3
    assert rows[2]["selection_reason"] == "kept: k-center pick (pick 1 of 3, the first pick, no pool yet)"
    info = json.loads((out / "run.json").read_text())["selection"]
    assert (info["embed_text"], info["embed_max_length"]) == ("chat", 1024)
    alpaca = tmp_path / "kc-alpaca"
    assert run_select([str(demo_path), "--kcenter", "3", "--student", str(tiny_model_dir), "--embed-text", "alpaca",
                       "--out", str(alpaca)]) == 0
    info = json.loads((alpaca / "run.json").read_text())["selection"]
    assert (info["embed_text"], info["embed_max_length"]) == ("alpaca", 512)


def test_cli_kcenter_rows_without_embedding_are_explained(tmp_path):
    vectors = [[0.0, 0.0], None, [3.0, 4.0], [1.0, 1.0], [6.0, 8.0]]
    ds = make_ds().select(range(5)).add_column("embedding", vectors)
    path = tmp_path / "partial.parquet"
    ds.to_parquet(str(path))
    out = tmp_path / "kc-partial"
    run_select([str(path), "--kcenter", "2", "--out", str(out)])
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    assert [r["selected"] for r in rows] == [True, False, False, False, True]  # start 0, then the farthest: row 4
    assert rows[1]["selection_reason"] == "dropped: not embedded (invalid: no embedding)"
    assert rows[2]["selection_reason"] == "dropped: not among the 2 k-center picks"


def test_cli_on_a_recycle_run_folder_ranks_the_rows_it_kept(tmp_path):
    import datasets

    from srt_hf.formats import ColumnMapping
    from srt_hf.selection import with_decisions, write_selection_run

    n = 6
    ds = datasets.Dataset.from_dict({
        "id": [str(i) for i in range(n)],
        "instruction": [f"old question {i}" for i in range(n)], "output": [f"old answer {i}" for i in range(n)],
        "final_instruction": [f"new question {i}" for i in range(n)], "final_input": [""] * n,
        "final_response": [f"new answer {i}" for i in range(n)],
        "final_ifd": [0.9, 0.8, 0.95, 0.3, 1.2, 0.6], "final_rifd": [0.5, 1.1, 0.7, 0.4, 0.9, 0.2],
        "final_score_status": ["ok"] * n,
    })
    earlier = [True, False, True, True, False, True]
    table = with_decisions(ds, earlier, ["kept: ifd < 1 and rifd < 1" if k else "dropped: rifd >= 1" for k in earlier])
    recycled = tmp_path / "recycled"
    write_selection_run(recycled, table, {"kind": "recycle", "student": {"model": "tiny"}, "selection": {"rule": "ifd < 1 and rifd < 1"}},
                        mapping=ColumnMapping(instruction_column="final_instruction", input_column="final_input", response_column="final_response"))
    out = tmp_path / "top"
    assert run_select([str(recycled), "--top-n", "2", "--out", str(out)]) == 0
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    assert [r["id"] for r in rows if r["selected"]] == ["0", "2"]  # 0.95 and 0.9 among the rows recycle kept
    assert rows[1]["selection_reason"] == "dropped: not kept by the earlier run (dropped: rifd >= 1)"
    sft = pq.read_table(out / "sft" / "train.parquet").to_pylist()
    assert sft[0]["prompt"][0]["content"] == "new question 0" and sft[0]["completion"][0]["content"] == "new answer 0"
    meta = json.loads((out / "run.json").read_text())
    assert meta["student"] == {"model": "tiny"} and meta["selection"]["ifd_column"] == "final_ifd"
    assert meta["stats"]["rifd"]["after"]["n"] == 2
    out_all = tmp_path / "top-all"
    run_select([str(recycled), "--top-n", "2", "--all-rows", "--out", str(out_all)])
    assert [r["id"] for r in pq.read_table(out_all / "rows.parquet").to_pylist() if r["selected"]] == ["0", "2"]
    run_select([str(recycled), "--top-n", "3", "--all-rows", "--out", str(out_all)])
    assert [r["id"] for r in pq.read_table(out_all / "rows.parquet").to_pylist() if r["selected"]] == ["0", "1", "2"]


class EveryOther:
    """A selection method written the way docs/ARCHITECTURE.md says: a Decisions-returning rule plus the CLI glue."""

    name = "every-other"

    def add_arguments(self, parser, rule) -> None:
        rule.add_argument("--every-other", action="store_true", help="Keep the even rows.")

    def chosen(self, args) -> bool:
        return args.every_other

    def run(self, ds, args, mapping):
        from srt_hf.selection import Decisions

        keep = [i % 2 == 0 for i in range(len(ds))]
        decisions = Decisions(keep, ["kept: even row" if k else "dropped: odd row" for k in keep],
                              info={"rule": "every_other"}, columns={"parity": [i % 2 for i in range(len(ds))]},
                              methods=["k-center"])
        return decisions.table(ds), decisions.meta(), [], mapping


def test_a_new_method_is_one_list_entry(scored_file, tmp_path, monkeypatch):
    from srt_hf.selection import methods

    assert [m.name for m in methods.METHODS] == ["top-ifd", "k-center", "ds-weight"]
    monkeypatch.setattr(methods, "METHODS", [*methods.METHODS, EveryOther()])
    out = tmp_path / "run"
    assert run_select([str(scored_file), "--every-other", "--out", str(out)]) == 0
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    assert [r["selection_reason"] for r in rows[:2]] == ["kept: even row", "dropped: odd row"]
    assert [r["parity"] for r in rows] == [0, 1] * 5
    meta = json.loads((out / "run.json").read_text())
    assert meta["selection"]["rule"] == "every_other" and meta["counts"]["selected"] == 5
    assert "k-center" in meta["methods"] and "wu2023diverseevol" in (out / "README.md").read_text()
    assert "kept: even row" in (out / "report.html").read_text()
    with pytest.raises(SystemExit):  # still one rule at a time
        run_select([str(scored_file), "--every-other", "--top-n", "2", "--out", str(tmp_path / "two")])


def test_kcenter_reasons_are_written_in_one_place():
    # the CLI (srt_hf/selection/kcenter.py) and the DiverseEvol recipe (srt_hf/recipes/diverse_evol.py) both take their reasons from kcenter_decisions:
    # neither the recipe nor the command writes a "kept: …" / "dropped: …" text of its own
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    recipe = (root / "srt_hf" / "recipes" / "diverse_evol.py").read_text()
    assert "kcenter_decisions(" in recipe and not re.search(r"f?[\"'](kept|dropped): ", recipe)
    kcenter = (root / "srt_hf" / "selection" / "kcenter.py").read_text()
    command = kcenter[kcenter.index("class KCenter"):]  # the `srt-hf select --kcenter` glue
    assert "kcenter_decisions(" in command and not re.search(r"f?[\"'](kept|dropped): ", command)
    assert re.search(r"f[\"](kept|dropped): ", kcenter[:kcenter.index("class KCenter")])
