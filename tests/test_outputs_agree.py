"""The terminal summary, run.json, the dataset card and the report name the same populations and give the same
figure for the same label; the card's command is run.json's, secrets redacted; the license says where it came
from; the column dictionary lists every column once, each described; the local teacher counts its tokens."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from report_runs import make_recycle_run, recycle_rows

from srt_hf import cli, hub, invocation
from srt_hf.cards import write_dataset_card
from srt_hf.figures import SCORE_LABELS, STATS
from srt_hf.report import build_payload
from srt_hf.runs import read_meta
from srt_hf.summary import recycle_summary

HISTOGRAMS = {
    score: {"before": f"rows.parquet:original_{score}", "also": [f"rows.parquet:final_{score}"],
            "after": f"selected.parquet:final_{score}", "cutoffs": [{"value": 1.0, "label": f"rule: {label} < 1"}]}
    for score, label in SCORE_LABELS.items()
}


def _summary_figures(text: str) -> dict[tuple[str, str], list[str]]:
    """(score, population) → the figures of the summary's score table."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(IFD|r-IFD)\s+((?:original|final), (?:all|kept) rows)\s+(.*)$", line)
        if m:
            out[(m.group(1), m.group(2))] = m.group(3).split()
    return out


def _card_figures(text: str) -> dict[tuple[str, str], list[str]]:
    out, score = {}, None
    for line in text.splitlines():
        head = re.match(r"^\| (IFD|r-IFD) \| n \|", line)
        if head:
            score = head.group(1)
        m = re.match(r"^\| ((?:original|final), (?:all|kept) rows) \(`[^`]+`\) \| (.*) \|$", line)
        if m and score:
            out[(score, m.group(1))] = [c.strip() for c in m.group(2).split("|")]
    return out


def test_summary_card_and_report_give_the_same_figure_for_each_label(tmp_path):
    n = 40
    run = make_recycle_run(tmp_path / "run", n=n, meta_extra={"histograms": HISTOGRAMS})
    meta = read_meta(run)
    summary = recycle_summary(meta)
    card = DatasetCard.load(run / "README.md").text
    payload = build_payload(run, meta)

    from_summary, from_card = _summary_figures(summary), _card_figures(card)
    from_report = {(ch["label"], f["label"]): [f[k] for k in STATS] for ch in payload["charts"] for f in ch["figures"]}
    from_meta = {(SCORE_LABELS[s], f["label"]): f for s, figs in meta["score_figures"].items() for f in figs}
    labels = {(s, p) for s in ("IFD", "r-IFD") for p in ("original, all rows", "final, all rows", "final, kept rows")}
    assert set(from_summary) == set(from_card) == set(from_report) == set(from_meta) == labels
    for label in labels:
        assert from_summary[label] == from_card[label] == from_report[label], label

    cols = recycle_rows(n)
    kept_ifd = sorted(v for v, s in zip(cols["final_ifd"], cols["selected"]) if s)
    assert from_meta[("IFD", "final, kept rows")]["n"] == len(kept_ifd) == meta["counts"]["selected"]
    assert from_card[("IFD", "final, kept rows")][0] == str(len(kept_ifd))
    assert from_meta[("IFD", "final, all rows")]["n"] == n  # the summary's old "after" was this one, unlabelled

    # one count of teacher-written training completions, the same in every output
    kept = [(a, b) for a, b, s in zip(cols["instruction_choice"], cols["response_choice"], cols["selected"]) if s]
    completions = sum("reflected" in ab for ab in kept)
    assert meta["teacher_written"] == {"training rows": len(kept), "training completions": completions,
                                       "training prompts": sum(a == "reflected" for a, _ in kept)}
    assert re.search(rf"training completions written by the teacher\s+{completions} of {len(kept)}", summary)
    assert f"the teacher wrote\n{completions} completions" in card
    assert f"| training completions written by the teacher | {completions} of {len(kept)} |" in card
    assert payload["meta"]["teacher_written"] == meta["teacher_written"]


def test_cutoffs_follow_the_rule(tmp_path):
    recycle = make_recycle_run(tmp_path / "recycle", n=30)  # no cutoffs recorded: the rule ifd < 1 and rifd < 1 implies 1
    payload = build_payload(recycle, read_meta(recycle))
    assert [c["cutoffs"] for c in payload["charts"]] == [[{"value": 1.0, "label": "rule: IFD < 1"}],
                                                         [{"value": 1.0, "label": "rule: r-IFD < 1"}]]
    meta = read_meta(recycle)
    meta["selection"] = {"rule": "k-center greedy"}  # a rule without a cutoff on the scores draws no line
    payload = build_payload(recycle, meta)
    assert all(c["cutoffs"] == [] for c in payload["charts"])


def test_clipping_is_marked_the_same_in_png_and_html(tmp_path):
    import numpy as np

    from srt_hf import charts

    values = np.array([0.5 + 0.01 * i for i in range(40)] + [25.0])  # one far outlier
    bins = charts.histogram_bins(values, values[:10])
    assert bins.hi < 25.0 and bins.lo == pytest.approx(0.5)
    assert charts.clip_notes(bins, values, values[:10]) == [f"values > {bins.hi:.3f} in the last bin (hatched): 1 before, 0 after"]
    run = make_recycle_run(tmp_path / "run", n=30)
    meta = read_meta(run)
    payload = build_payload(run, meta)
    card = DatasetCard.load(write_dataset_card(run)).text
    for chart in payload["charts"]:  # the report's bins and notes are the card's
        for note in chart["notes"]:
            assert f"Clipped: {note}." in card
    assert all(set(ch["bins"]) == {"lo", "hi", "count"} for ch in payload["charts"])


def test_redaction_of_the_recorded_command():
    argv = ["recycle", "data.jsonl", "--teacher", "https://user:pa55word@example.com/v1", "--teacher-header",
            "api-key: s3cret-value", "--teacher-header=Authorization: Bearer abc.def", "--teacher-api-key-env", "MY_KEY",
            "--hub-token", "hf_abcdefghijklmnopqrstu", "--api_key=sk-abcdefghijklmnop", "--max-new-tokens", "300",
            "--teacher-extra-body", '{"note": "hf_zzzzzzzzzzzzzzzzzzzz"}', "--out", "runs/x"]
    red = invocation.redact(argv)
    text = " ".join(red)
    for secret in ("pa55word", "s3cret-value", "abc.def", "hf_abcdefghijklmnopqrstu", "sk-abcdefghijklmnop", "hf_zzzz"):
        assert secret not in text
    assert "api-key: REDACTED" in red and "--teacher-header=Authorization: REDACTED" in red
    assert red[red.index("--teacher-api-key-env") + 1] == "MY_KEY"  # a variable's name, not a secret
    assert red[red.index("--max-new-tokens") + 1] == "300" and red[-2:] == ["--out", "runs/x"]
    assert invocation.redact(["--teacher-api-key-env", "sk-live-key-pasted-by-mistake"])[1] == "REDACTED"
    body = json.loads(invocation.redact(["--teacher-extra-body", '{"top_k": 20, "extra": {"api_key": "xyz123"}}'])[1])
    assert body == {"top_k": 20, "extra": {"api_key": "REDACTED"}}
    with invocation.recording(argv):
        assert invocation.current()["argv"] == ["srt-hf", *red]
    assert invocation.current() is None


def test_the_card_shows_the_command_that_made_the_run(tmp_path):
    import datasets

    scored = datasets.Dataset.from_dict({"instruction": [f"Q{i}?" for i in range(6)], "output": [f"A{i}." for i in range(6)],
                                         "ifd": [0.2 + 0.1 * i for i in range(6)], "score_status": ["ok"] * 6})
    scored.to_parquet(str(tmp_path / "scored.parquet"))
    argv = ["select", str(tmp_path / "scored.parquet"), "--top-n", "2", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    meta = read_meta(tmp_path / "run")
    assert meta["command"]["argv"] == ["srt-hf", *argv]
    card = (tmp_path / "run" / "README.md").read_text()
    assert meta["command"]["text"] in card
    assert meta["srt_hf_version"] in card
    # top-IFD's cutoffs: its cap and the lowest IFD it kept
    payload = build_payload(tmp_path / "run", meta)
    lowest = meta["selection"]["lowest_kept_ifd"]
    assert [c["label"] for c in payload["charts"][0]["cutoffs"]] == ["rule: IFD < 1", f"top by IFD: lowest kept {lowest:.3f}"]


def test_license_line_names_its_origin(tmp_path):
    run = make_recycle_run(tmp_path / "run", n=20)
    text = DatasetCard.load(write_dataset_card(run, license="apache-2.0")).text
    assert "`apache-2.0`, as given with `srt-hf push --license` (not read from the source data)" in text
    assert "carried from the source data" not in text
    meta = read_meta(run)
    meta["source"]["license"] = "cc-by-nc-4.0"
    (run / "run.json").write_text(json.dumps(meta))
    text = DatasetCard.load(write_dataset_card(run)).text
    assert "`cc-by-nc-4.0`, carried from the source data" in text
    hub._remember(run, source_license="mit")  # what a real push with --license records
    assert read_meta(run)["source"]["license_from"] == "flag"
    text = DatasetCard.load(write_dataset_card(run)).text
    assert "`mit`, as given with `srt-hf push --license`" in text
    before = (run / "README.md").read_text()
    assert cli.main(["push", str(run), "--repo-id", "me/x", "--license", "apache-2.0", "--dry-run"]) == 0
    assert (run / "README.md").read_text() == before  # a dry run renders its card elsewhere and changes no file


def test_one_complete_column_dictionary_sample_records_and_a_training_command(tmp_path):
    run = make_recycle_run(tmp_path / "run", n=20, meta_extra={
        "student": {"model": "default", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}})
    card = DatasetCard.load(write_dataset_card(run, repo_id="me/recycled"))
    text = card.text
    assert text.count("## Columns") == 1
    section = text.split("## Columns", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names = [re.match(r"\| `([^`]+)`", r).group(1) for r in rows]
    assert len(names) == len(set(names))  # once, though most columns are in two configs
    assert {"prompt", "completion", "original_score_status", "better_response_score_status", "row_id"} <= set(names)
    empty = [r for r in rows if r.rstrip().endswith("|  |") or r.rstrip().endswith("| |")]
    assert empty == []
    assert "from the input data" not in section  # a recycle run writes every column itself, each documented
    for config in ("sft", "selected", "rows"):
        assert f"A sample record of <code>{config}</code>" in text
    records = re.findall(r"```json\n(.*?)\n```", text, flags=re.S)
    assert len(records) == 3 and len(set(records)) == 3  # `rows` repeats no record `selected` showed
    dropped = pq.read_table(run / "rows.parquet", columns=["selected"]).column(0).to_pylist().index(False)
    assert f"<code>rows</code> (its row {dropped}, the first that is not also a row of a config above;" in text
    assert '"completion": [' in text
    assert "srt-hf sft --dataset me/recycled --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --output_dir" in text
    assert 'SFTTrainer(model="HuggingFaceTB/SmolLM2-135M-Instruct"' in text and "recipes/sft.py" not in text


@pytest.mark.slow
def test_local_teacher_counts_its_tokens(tiny_model_dir, tmp_path):
    from srt_hf.teachers import GenerationConfig, LocalTeacher

    teacher = LocalTeacher(str(tiny_model_dir), config=GenerationConfig(max_new_tokens=5, batch_size=2), device="cpu")
    conversations = [[{"role": "user", "content": "short"}], [{"role": "user", "content": "a much longer prompt " * 6}]]
    replies = teacher.generate(conversations)
    tokenizer, _ = teacher.load()
    expected = [len(tokenizer(LocalTeacher._render(tokenizer, c), add_special_tokens=False)["input_ids"]) for c in conversations]
    assert [r.usage["prompt_tokens"] for r in replies] == expected  # left padding not counted
    assert all(r.usage["completion_tokens"] == 5 for r in replies)  # a random tiny model runs to the limit
    assert teacher.stats.as_dict()["prompt_tokens"] == sum(expected)
    assert teacher.stats.as_dict()["completion_tokens"] == 10
