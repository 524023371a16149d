"""report.html in a real headless Chromium (Debian's `chromium`, driven by Playwright): links, filters, diffs,
escaping and a clean console. Skipped, with the reason, where no Chromium or no Playwright can be had."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from report_runs import (
    HOSTILE_INSTRUCTION,
    HOSTILE_ROW,
    UNIQUE_WORD,
    instruction_kind,
    make_recycle_run,
    recycle_rows,
)
from test_cards import make_run, no_network  # noqa: F401  (fixture re-used)

from srt_hf import cli, report
from srt_hf.figures import STATS

pytestmark = pytest.mark.slow


def find_chromium() -> str | None:
    candidates = [os.environ.get("SRT_HF_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                  shutil.which("google-chrome"), shutil.which("google-chrome-stable")]
    return next((c for c in candidates if c and Path(c).exists()), None)


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found: install Debian's `chromium` (.ci/run does) "
                    "or set SRT_HF_CHROMIUM=/path/to/chrome")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[dev]' "
                    "(it drives the system Chromium, no download)")
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        except Error as err:
            pytest.skip(f"{exe} does not start under Playwright: {str(err).splitlines()[0]}")
        yield chromium
        chromium.close()


def open_report(browser, path: Path, fragment: str = ""):
    """The page once its script has rendered, and a list that collects console errors, page errors and any
    request that leaves the file (the report must need nothing but itself)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    local = ("file:", "data:", "blob:")
    page.on("request", lambda r: None if r.url.startswith(local) else problems.append(f"request: {r.url}"))
    page.goto(path.as_uri() + fragment)
    page.wait_for_selector("body[data-ready]", timeout=20_000)
    assert page.get_attribute("body", "data-ready") == "1", page.inner_text("#loading")
    return page, problems


def shown(page) -> list[int]:
    return page.eval_on_selector_all("#rows article.row", "els => els.map(e => Number(e.dataset.row))")


def choose(page, select_id: str, value: str) -> None:
    page.select_option(f"#{select_id}", value)


def test_rows_links_filters_and_diffs_in_chromium(tmp_path, browser):
    n = 60
    run = make_recycle_run(tmp_path / "run", n=n, meta_extra={"pretty_name": "<b>demo</b> run"})
    path = report.write_report(run, compress=False)
    cols = recycle_rows(n)
    page, problems = open_report(browser, path)

    assert page.inner_text("h1") == "<b>demo</b> run"
    assert shown(page) == list(range(25))  # the first page of 25
    # every row id is reachable through its link, across pages
    for i in range(n):
        page.evaluate(f"location.hash = '#row-{i}'")
        page.wait_for_selector(f"#row-{i}.target", state="visible", timeout=5_000)
    # a link to a row the filters hide clears the filters
    page.evaluate("location.hash = ''")
    choose(page, "f-selected", "1")
    dropped = next(i for i in range(n) if not cols["selected"][i])
    page.evaluate(f"location.hash = '#row-{dropped}'")
    page.wait_for_selector(f"#row-{dropped}.target", state="visible", timeout=5_000)
    assert page.input_value("#f-selected") == ""

    page.select_option("#pager-top select", "100")
    assert shown(page) == list(range(n))
    choose(page, "f-selected", "0")
    assert shown(page) == [i for i in range(n) if not cols["selected"][i]]
    choose(page, "f-selected", "")
    choose(page, "f-status", "instruction_reflection_status=request_failed")
    expected = [i for i in range(n) if instruction_kind(i).startswith("request_failed")]
    assert expected and shown(page) == expected
    choose(page, "f-status", "*=!ok")
    assert shown(page) == [i for i in range(n) if instruction_kind(i) != "ok" or i % 4 == 1]
    choose(page, "f-status", "")
    choose(page, "f-choice", "response_choice=reflected")
    assert shown(page) == [i for i in range(n) if cols["response_choice"][i] == "reflected"]
    page.click("#reset")
    page.fill("#q", UNIQUE_WORD.upper())
    page.wait_for_function("document.querySelectorAll('#rows article.row').length === 1")
    assert shown(page) == [11]
    page.click("#reset")
    assert len(shown(page)) == n

    # word-level differences: row 2's instruction was replaced by the teacher's
    assert cols["instruction_choice"][2] == "reflected"
    texts = "els => els.map(e => e.textContent)"
    added = page.eval_on_selector_all("#row-2 [data-field=final_instruction] ins", texts)
    removed = page.eval_on_selector_all("#row-2 [data-field=original_instruction] del", texts)
    assert "detail," in " ".join(added) and "sentence." in " ".join(removed)
    assert page.inner_text("#row-2 [data-field=final_instruction]") == cols["final_instruction"][2]
    # a failed reflection says so instead of repeating the original
    assert "no [New Instruction] section" in page.inner_text("#row-0 [data-version=instruction_reflected]")

    # data is text: the hostile row shows its markup as characters and runs nothing
    assert page.evaluate("window.__pwned === undefined")
    assert page.inner_text(f"#row-{HOSTILE_ROW} [data-field=original_instruction]") == HOSTILE_INSTRUCTION
    assert page.query_selector_all("#rows img, #rows b, #rows style, #prompts b") == []
    assert page.eval_on_selector_all(".chart svg", "els => els.length") == 2
    # the chart's figures are srt_hf's (the card's), under the population labels; the rule's cutoff line, no other
    payload = report.build_payload(run, json.loads((run / "run.json").read_text()))
    cells = page.eval_on_selector_all(".chart[data-score='IFD'] table tr", "trs => trs.map(t => t.innerText)")
    assert len(cells) == 1 + len(payload["charts"][0]["figures"])
    for f, line in zip(payload["charts"][0]["figures"], cells[1:]):
        assert line.split("\t")[0].startswith(f["label"]) and line.split("\t")[1:] == [f[k] for k in STATS]
    assert page.eval_on_selector_all(".chart[data-score='IFD'] line.cutoff", "els => els.length") == 1
    assert "lowest kept" not in page.inner_text("#charts-card")
    assert problems == []
    page.close()


def test_a_link_opens_its_row_and_compressed_select_reports_render(tmp_path, browser):
    run = make_recycle_run(tmp_path / "run", n=40)
    path = report.write_report(run, compress=True)
    page, problems = open_report(browser, path, "#row-33")
    assert page.is_visible("#row-33.target") and 33 in shown(page)
    page.close()

    out = tmp_path / "top"
    assert cli.main(["select", str(make_run(tmp_path / "scored", n=24)), "--top-share", "0.5", "--out", str(out)]) == 0
    page, more = open_report(browser, report.write_report(out, compress=True))
    page.select_option("#pager-top select", "100")
    assert len(shown(page)) == 24
    choose(page, "f-selected", "1")
    import pyarrow.parquet as pq

    kept = pq.read_table(out / "rows.parquet", columns=["selected"]).column(0).to_pylist()
    assert shown(page) == [i for i, k in enumerate(kept) if k]
    assert "Explain topic" in page.inner_text(f"#row-{shown(page)[0]} [data-field=_instruction]")
    assert problems + more == []
    page.close()


def test_a_kcenter_report_sorts_by_pick_order(tmp_path, browser):
    from test_report import kcenter_run

    out = kcenter_run(tmp_path)
    import pyarrow.parquet as pq

    order = pq.read_table(out / "rows.parquet", columns=["selection_order"]).column(0).to_pylist()
    page, problems = open_report(browser, out / "report.html")
    choose(page, "sort", "order")
    picks = sorted((o, i) for i, o in enumerate(order) if o is not None)
    unpicked = [i for i, o in enumerate(order) if o is None]
    assert shown(page) == [i for _, i in picks] + unpicked  # picks first, in the order k-center chose them
    first = picks[0][1]
    assert "pick 1" in page.inner_text(f"#row-{first}") and "k-center pick" in page.inner_text(f"#row-{first}")
    assert problems == []
    page.close()
