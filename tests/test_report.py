"""report.html without a browser: the embedded data, escaping, compression, the CLI and the select hook."""

from __future__ import annotations

import base64
import gzip
import json
import re

import pytest
from report_runs import (
    HOSTILE_INSTRUCTION,
    HOSTILE_RESPONSE,
    HOSTILE_ROW,
    make_recycle_run,
)
from test_cards import make_run, no_network  # noqa: F401  (fixture re-used)

from srt_hf import cli, report
from srt_hf.errors import InputError


def embedded(page: str) -> dict:
    """The JSON payload of a report page, whichever way it is encoded."""
    m = re.search(r'<script id="srt-data" type="text/plain" data-encoding="([^"]+)">(.*?)</script>', page, re.DOTALL)
    assert m, "no data element"
    encoding, body = m.groups()
    if encoding == "gzip+base64":
        return json.loads(gzip.decompress(base64.b64decode(body)))
    assert encoding == "json"
    return json.loads(body)


def text_of(payload: dict, column: str, row: int):
    index = payload["columns"][column][row]
    return None if index is None else payload["strings"][index]


def test_report_holds_every_row_with_its_texts_choices_and_scores(tmp_path):
    run = make_recycle_run(tmp_path / "run", n=30)
    path = report.write_report(run)
    assert path == run / "report.html"
    payload = embedded(path.read_text(encoding="utf-8"))
    assert payload["n"] == 30 and payload["view"]["kind"] == "recycle"
    import pyarrow.parquet as pq

    rows = pq.read_table(run / "rows.parquet").to_pylist()
    for i, row in enumerate(rows):
        for column in ("original_instruction", "instruction_reflected", "better_response", "final_response",
                       "instruction_reflection_status", "response_choice", "selection_reason"):
            assert text_of(payload, column, i) == row[column], (i, column)
        assert payload["columns"]["selected"][i] == int(row["selected"])
        assert payload["columns"]["final_ifd"][i] == pytest.approx(row["final_ifd"], rel=1e-5)
    assert payload["columns"]["reflected_pair_ifd"][0] is None  # row 0's reflection failed: no score, not NaN
    # each distinct text is stored once: the final texts are references to the original or reflected ones
    assert len(payload["strings"]) == len(set(payload["strings"]))
    assert payload["columns"]["final_instruction"][1] in (payload["columns"]["original_instruction"][1],
                                                          payload["columns"]["instruction_reflected"][1])
    meta = payload["meta"]
    assert meta["counts"]["input"] == 30 and meta["selection"]["rule"] == "ifd < 1 and rifd < 1"
    assert [c["before"] for c in payload["charts"]] == ["original_ifd", "original_rifd"]
    settings = {(s[0], s[1]) for s in meta["settings"]}
    assert ("teacher", "temperature") in settings and ("config", "retry_parse_failures") in settings
    assert not {("config", "chunk_rows"), ("config", "instruction_column"), ("config", "student")} & settings
    # every status's kind comes from srt_hf.status; the page's script does not parse statuses
    from srt_hf.status import kind_of

    status_columns = [c for c in payload["columns"] if c.endswith("status")]
    assert "instruction_reflection_status" in status_columns
    used = {k for c in status_columns for k in payload["columns"][c] if k is not None}
    assert {int(k) for k in payload["kinds"]} == used
    assert all(payload["kinds"][str(k)] == kind_of(payload["strings"][k]) for k in used)
    assert {"ok", "parse_failed", "request_failed"} <= set(payload["kinds"].values())
    assert "split(':'" not in (report.ASSETS / "report.js").read_text()


def test_data_and_teacher_text_cannot_become_markup(tmp_path):
    run = make_recycle_run(tmp_path / "run", n=12, meta_extra={"pretty_name": "<b>run</b> & co"})
    page = report.write_report(run).read_text(encoding="utf-8")
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data element and the page's script
    assert "<img" not in page and "<b>hi</b>" not in page and "<!-- not" not in page
    assert "<title>&lt;b&gt;run&lt;/b&gt; &amp; co · srt-hf report</title>" in page
    payload = embedded(page)
    assert text_of(payload, "original_instruction", HOSTILE_ROW) == HOSTILE_INSTRUCTION  # shown as the text it is
    assert text_of(payload, "original_response", HOSTILE_ROW) == HOSTILE_RESPONSE
    script = (report.ASSETS / "report.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script


def test_compressed_and_inline_data_are_the_same(tmp_path):
    run = make_recycle_run(tmp_path / "run", n=20)
    plain = report.write_report(run, out=tmp_path / "plain.html", compress=False).read_text(encoding="utf-8")
    packed = report.write_report(run, out=tmp_path / "packed.html", compress=True).read_text(encoding="utf-8")
    assert 'data-encoding="json"' in plain and 'data-encoding="gzip+base64"' in packed
    assert embedded(plain) == embedded(packed)
    assert len(packed) < len(plain)
    # same run, same bytes (gzip without a timestamp)
    again = report.write_report(run, out=tmp_path / "again.html", compress=True).read_text(encoding="utf-8")
    assert again == packed


def test_a_select_run_gets_its_report_with_reasons(tmp_path, capsys):
    run = make_run(tmp_path / "scored", n=24)
    out = tmp_path / "top"
    assert cli.main(["select", str(run), "--top-share", "0.5", "--out", str(out)]) == 0
    payload = embedded((out / "report.html").read_text(encoding="utf-8"))
    view = payload["view"]
    assert view["kind"] == "plain" and view["reason"] == "selection_reason"
    assert [p["label"] for p in view["panels"]] == ["instruction", "input", "response"]
    assert text_of(payload, "_instruction", 3) == "Explain topic 3 in one sentence."
    import pyarrow.parquet as pq

    reasons = pq.read_table(out / "rows.parquet", columns=["selection_reason"]).column(0).to_pylist()
    assert [text_of(payload, "selection_reason", i) for i in range(24)] == reasons
    assert payload["meta"]["selection"]["rule"].startswith("top")
    assert ["selection", "within_earlier_selection"] not in [s[:2] for s in payload["meta"]["settings"]]


def test_report_command(tmp_path, capsys):
    run = make_recycle_run(tmp_path / "run", n=10)
    assert cli.main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert "r.html" in capsys.readouterr().out and (tmp_path / "r.html").is_file()
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert "not a finished srt-hf run folder" in capsys.readouterr().err
    with pytest.raises(InputError, match="Fix: pass the --out folder"):
        report.write_report(tmp_path / "empty")


def kcenter_run(tmp_path, n: int = 16):
    """A `srt-hf select --kcenter 5` run on given embeddings around a pool of rows 0 and 1."""
    import datasets
    import numpy as np

    vectors = np.random.default_rng(1).standard_normal((n, 3))
    datasets.Dataset.from_dict({
        "instruction": [f"Question {i}?" for i in range(n)], "output": [f"Answer {i}." for i in range(n)],
        "embedding": vectors.tolist(), "in_pool": [i < 2 for i in range(n)],
    }).to_parquet(str(tmp_path / "emb.parquet"))
    out = tmp_path / "kc"
    assert cli.main(["select", str(tmp_path / "emb.parquet"), "--kcenter", "5", "--pool-column", "in_pool",
                     "--out", str(out)]) == 0
    return out


def test_a_kcenter_run_shows_its_rule_reasons_and_pick_order(tmp_path):
    out = kcenter_run(tmp_path)
    payload = embedded((out / "report.html").read_text(encoding="utf-8"))
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "rows.parquet", columns=["selection_order", "selection_reason"]).to_pydict()
    assert payload["view"]["order"] == "selection_order"
    assert payload["columns"]["selection_order"] == rows["selection_order"]
    assert sorted(v for v in rows["selection_order"] if v is not None) == [1, 2, 3, 4, 5]
    assert [text_of(payload, "selection_reason", i) for i in range(16)] == rows["selection_reason"]
    assert payload["meta"]["selection"]["rule"] == "kcenter_greedy"
    assert ["pick order", ["selection_order"]] in payload["view"]["scores"]["rows"]
