"""The dataset card says what the run did: counted teacher use and failures, r-IFD only when computed, the
license and source as they are, shares as percentages, the project's link, the lowest kept IFD."""

from __future__ import annotations

import re

import datasets
from huggingface_hub import DatasetCard
from report_runs import make_recycle_run, recycle_rows
from test_cards import colours, read_png

from srt_hf import PROJECT_URL, charts, cli
from srt_hf.cards import write_dataset_card
from srt_hf.cards.common import percent


def test_recycle_card_states_the_counts_of_the_run(tmp_path):
    n = 40
    run = make_recycle_run(tmp_path / "run", n=n)
    cols = recycle_rows(n)
    card = DatasetCard.load(write_dataset_card(run))
    data, text = card.data.to_dict(), card.text

    inst, resp = cols["instruction_reflection_status"], cols["response_reflection_status"]
    inst_used = cols["instruction_choice"].count("reflected")
    better = cols["response_choice"].count("reflected")
    pair = sum(a == "reflected" and b != "reflected" for a, b in zip(cols["instruction_choice"], cols["response_choice"]))

    def failures(statuses):
        bad = [s for s in statuses if s != "ok"]
        return sorted({s: bad.count(s) for s in bad}.items(), key=lambda kv: (-kv[1], kv[0]))

    inst_why, resp_why = failures(inst), failures(resp)
    assert inst_used and better and pair and len(inst_why) == 2  # the fixture exercises every branch
    paragraph = text.split("**What the teacher changed.**", 1)[1].split("\n\n", 1)[0]
    quoted = re.findall(r"`([^`]*)`", paragraph)
    assert quoted == ["sft/train.parquet"] + [s for s, _ in inst_why] + [s for s, _ in resp_why]
    numbers = re.findall(r"\d+(?:\.\d+)?", re.sub(r"`[^`]*`", "", paragraph))
    resp_used = pair + better
    kept = [(a, b) for a, b, s in zip(cols["instruction_choice"], cols["response_choice"], cols["selected"]) if s]
    completions = sum("reflected" in ab for ab in kept)  # the teacher's answer came with its pair, or was its better one
    prompts = sum(a == "reflected" for a, _ in kept)
    expected = [n, inst_used, percent(inst_used, n), resp_used, percent(resp_used, n), pair, better,
                len(kept), completions, percent(completions, len(kept)), prompts, percent(prompts, len(kept)),
                inst.count("ok"), n, n - inst.count("ok"), *[c for _, c in inst_why],
                resp.count("ok"), n, n - resp.count("ok"), *[c for _, c in resp_why]]
    assert numbers == [str(v).rstrip("%") for v in expected], paragraph
    assert "rewrote every" not in text

    assert data["license"] == "unknown" and "source_datasets" not in data  # source "demo" is not a Hub id
    assert f"[srt-hf]({PROJECT_URL})" in text and "pypi.org" not in text
    assert "(report.html)" in text
    assert "r-IFD ≥ 1 means" in text  # recycle computes r-IFD
    after = sorted(v for v, s in zip(cols["final_ifd"], cols["selected"]) if s)
    share = percent(sum(v < 1 for v in after) / len(after))
    assert re.search(rf"\| final, kept rows \(`selected.parquet:final_ifd`\) \| {len(after)} \|( [^|]+ \|){{4}} {share} \|", text)
    assert "lowest kept" not in text.lower()  # no cutoff under `ifd < 1 and rifd < 1`: the line is the rule's 1
    assert "Cutoffs: rule: IFD < 1." in text and "Cutoffs: rule: r-IFD < 1." in text
    assert tuple(charts.THRESHOLD) in colours(read_png(run / "images" / "ifd_histogram.png"))


def test_select_card_leaves_out_what_the_run_did_not_do(tmp_path):
    n = 30
    scored = datasets.Dataset.from_dict({
        "instruction": [f"Question {i}?" for i in range(n)], "output": [f"Answer {i}." for i in range(n)],
        "ifd": [0.3 + 0.03 * i for i in range(n)], "score_status": ["ok"] * n,
    })
    scored.to_parquet(str(tmp_path / "scored.parquet"))
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["select", str(tmp_path / "scored.parquet"), "--top-share", "0.5", "--out", str(first)]) == 0
    assert cli.main(["select", str(first), "--top-n", "5", "--out", str(second)]) == 0  # within the earlier selection
    card = DatasetCard.load(second / "README.md")
    text = card.text
    assert "r-IFD" not in text and "rifd" not in text  # no reverse IFD was computed
    assert "within_earlier_selection" not in text and "ifd_column" not in text
    intro = text.split("## How the data was made")[0]
    assert "rule\n`top_ifd_n`" in intro and "teacher" not in intro  # the rule that ran; no teacher in a select run
    assert card.data.license == "unknown"
    assert re.search(r"\| kept rows \(`selected.parquet:ifd`\) \| 5 \|( [^|]+ \|){4} 100% \|", text)
