"""Every unreadable input ends in one srt_hf error line naming the file (and line) and the fix, exit code 2;
inputs are read as users mean them (text as written, paths never taken for Hub ids, mixed formats per row)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from srt_hf.cli import main
from srt_hf.dataio import load_input

ALPACA = json.dumps({"instruction": "Name a primary colour.", "input": "", "output": "Blue is one."})


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# (file name, content, extra CLI arguments, what the error line must say)
CASES = {
    "broken JSONL line": ("in.jsonl", ALPACA + '\n{"instruction": broken\n', [], "line 2 is not valid JSON"),
    "empty file": ("in.jsonl", "", [], "is empty (0 bytes)"),
    "header-only CSV": ("in.csv", "instruction,input,output\n", [], "has no rows"),
    "[] as JSON": ("in.json", "[]", [], "has no rows"),
    "binary file named .jsonl": ("in.jsonl", bytes(range(128, 256)) * 4, [], "is not UTF-8 text (is it a binary file?)"),
    "JSON that is not records": ("in.jsonl", ALPACA + "\n[1, 2]\n", [], "line 2 is a JSON list"),
    "CSV row with too many fields": ("in.csv", "instruction,input,output\na,b,c\nd,e,f,g\n", [], "line 3"),
    "damaged Parquet": ("in.parquet", b"PAR1 not really parquet", [], "cannot read"),
    "unknown suffix": ("in.txt", "hello", [], "unknown file type '.txt'"),
    "--chunk-rows 0": ("in.jsonl", ALPACA + "\n", ["--chunk-rows", "0"], "--chunk-rows 0: a chunk holds at least one row"),
    "--limit 0": ("in.jsonl", ALPACA + "\n", ["--limit", "0"], "--limit 0 leaves no rows"),
    "no text in any row": ("in.jsonl", json.dumps({"instruction": "x", "output": {"a": 1}}) + "\n", [],
                           "could be scored (invalid 1)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unreadable_input_is_one_clear_line(tmp_path, tiny_model_dir, capsys, case):
    name, content, extra, expected = CASES[case]
    source = write(tmp_path / "data" / name, content)
    out = tmp_path / "out" / "scored.parquet"
    assert main(["score", str(source), "--student", str(tiny_model_dir), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "srt-hf score: error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0] and "Fix: " in lines[0]
    if case not in ("--chunk-rows 0", "--limit 0"):
        assert str(source) in lines[0]  # the file is named
    if case != "no text in any row":  # nothing is left behind by a run that could not start
        assert not out.exists() and not (out.parent / "scored.parquet.parts").exists()


def test_a_missing_file_is_never_taken_for_a_hub_id(tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    for source in ("dir/file.jsonl", str(tmp_path / "dir" / "gone"), "nowhere/data.csv"):
        assert main(["select", source, "--top-share", "0.5", "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"{source}: no such file or folder" in err and "Hub dataset" not in err.split("Fix:")[0]


def test_kcenter_on_a_scalar_column(tmp_path, capsys):
    data = write(tmp_path / "in.jsonl", "".join(json.dumps({"instruction": f"q{i}", "output": "a", "score": i}) + "\n" for i in range(4)))
    assert main(["select", str(data), "--kcenter", "2", "--embedding-column", "score", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "column 'score': 'score' holds" in err and "not embedding vectors" in err and "Traceback" not in err


def test_csv_and_json_text_is_read_as_written(tmp_path):
    csv_file = write(tmp_path / "in.csv", "instruction,input,output\nWhat is 2+2?,,4\nHalf of one?,,0.5\nA dozen?,,12\n")
    ds = load_input(str(csv_file))
    assert ds["output"] == ["4", "0.5", "12"]  # not 4.0 / 12.0 nor ints
    jsonl = write(tmp_path / "in.jsonl", "".join(json.dumps(r) + "\n" for r in (
        {"instruction": "a", "output": 4}, {"instruction": "b", "output": 12.0}, {"instruction": "c", "output": "four"})))
    assert load_input(str(jsonl))["output"] == ["4", "12.0", "four"]
    assert load_input(str(jsonl), text_columns=["instruction"])["instruction"] == ["a", "b", "c"]


def test_json_with_numbers_in_text_columns_is_read_once(tmp_path, monkeypatch):
    import datasets

    from srt_hf import dataio

    loads, rereads = [], []
    real_load, real_reread = datasets.load_dataset, dataio._json_records_as_written
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(dataio, "_json_records_as_written", lambda path: rereads.append(path) or real_reread(path))
    whole = write(tmp_path / "whole.jsonl", "".join(json.dumps(r) + "\n" for r in (
        {"instruction": "Add", "input": 5, "output": 7}, {"instruction": "Name it", "input": "", "output": "seven"},
        {"instruction": "Negate", "input": -12, "output": 12})))
    ds = load_input(str(whole))
    assert (ds["input"], ds["output"]) == (["5", "", "-12"], ["7", "seven", "12"])  # text, as written
    assert len(loads) == 1 and rereads == []  # whole numbers: converted in memory, the file is parsed once
    # a float's spelling is only in the file (7 beside 2.50 loads as 7.0, 2.50 as 2.5): read once more for it
    floats = write(tmp_path / "floats.json", json.dumps([{"instruction": "Add", "output": 7},
                                                         {"instruction": "Halve", "output": 2.50}]).replace("2.5", "2.50"))
    assert load_input(str(floats))["output"] == ["7", "2.50"] and len(rereads) == 1


@pytest.mark.slow
def test_numeric_answers_in_a_csv_are_scored(tmp_path, tiny_model_dir, capsys):
    csv_file = write(tmp_path / "in.csv", "instruction,input,output\nWhat is 1000 plus 24?,,1024\nHow many days has a year?,,365\n")
    out = tmp_path / "s.parquet"
    assert main(["score", str(csv_file), "--student", str(tiny_model_dir), "--out", str(out)]) == 0
    assert "rows read: alpaca 2" in capsys.readouterr().out
    rows = pq.read_table(out).to_pylist()
    assert [r["output"] for r in rows] == ["1024", "365"] and all(r["score_status"] == "ok" for r in rows)


@pytest.mark.slow
def test_mixed_format_rows_are_read_per_row_and_reported(tmp_path, tiny_model_dir, capsys):
    chat = [{"role": "user", "content": "Say hello to me."}, {"role": "assistant", "content": "Hello there!"}]
    data = write(tmp_path / "in.jsonl", "\n".join([ALPACA, json.dumps({"messages": chat}), json.dumps({"note": "nothing"})]) + "\n")
    out = tmp_path / "s.jsonl"
    assert main(["score", str(data), "--student", str(tiny_model_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "chat messages (column 'messages'); rows without those columns are read as alpaca" in printed
    assert "rows read: alpaca 1, messages 1, unreadable 1" in printed
    statuses = [json.loads(line)["score_status"] for line in out.read_text().splitlines()]
    assert statuses[:2] == ["ok", "ok"] and statuses[2].startswith("invalid: 'messages'")
