"""report.html size and speed for large runs: a synthetic recycle run with real Alpaca texts.

    python benchmarks/bench_report.py                         # 10k rows
    python benchmarks/bench_report.py --rows 50000 --browser  # 50k rows, and load / search times in headless Chromium

Rows take their texts from ``../shared/data/alpaca_cherry_5_percent.json`` (3,111 Cherry-selected Alpaca
records, cycled; each text gets the row number so no two rows share one). The teacher's versions are other
records' texts, as long as real rewrites: per row 3 original texts, a new instruction and answer, and a
better answer, all distinct. Baseline: the run's own rows.parquet (the same columns, Parquet-compressed),
written in the same run; the ratio is report.html bytes / rows.parquet bytes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from srt_hf import report, runs

DATA = "alpaca_cherry_5_percent.json"


def find_data() -> Path:
    here = Path(__file__).resolve().parent.parent
    for root in (here.parent / "shared" / "data", here.parent.parent / "shared" / "data"):
        if (root / DATA).is_file():
            return root / DATA
    raise SystemExit(f"{DATA} not found next to the repository (../shared/data/); pass --data PATH")


def synthetic_run(root: Path, records: list[dict], n: int) -> None:
    m = len(records)
    cols: dict[str, list] = {}

    def put(name, value):
        cols.setdefault(name, []).append(value)

    for i in range(n):
        r, a, b = records[i % m], records[(7 * i + 1) % m], records[(13 * i + 5) % m]
        tag = f" [{i}]"
        ins_ok, res_ok = i % 5 != 0, i % 4 != 1
        inst, inp, resp = r["instruction"] + tag, r["input"], r["output"] + tag
        r_inst = (a["instruction"] + " Explain each step." + tag) if ins_ok else inst
        r_resp = (a["output"] + tag) if ins_ok else resp
        reflected = ins_ok and i % 2 == 0
        c_inst, c_inp, c_resp = (r_inst, "", r_resp) if reflected else (inst, inp, resp)
        better = (b["output"] + tag) if res_ok else c_resp
        res_reflected = res_ok and i % 3 == 0
        ifd, rifd = 0.3 + (i % 17) * 0.05, 0.4 + (i % 13) * 0.06
        for name, value in {
            "id": f"alpaca-{i}", "row_id": i, "read_status": "ok", "original_instruction": inst, "original_input": inp,
            "original_response": resp, "original_ifd": ifd, "original_rifd": rifd, "original_score_status": "ok",
            "instruction_reflected": r_inst, "input_reflected": "" if ins_ok else inp, "response_reflected": r_resp,
            "instruction_reflection_status": "ok" if ins_ok else "parse_failed: no [New Instruction] section",
            "reflected_pair_ifd": ifd + 0.02 if ins_ok else None,
            "reflected_pair_rifd": rifd - 0.01 if ins_ok else None,
            "instruction_choice": "reflected" if reflected else "original",
            "instruction_choice_reason": f"reflected IFD {ifd + 0.02:.4f} > original {ifd:.4f}" if reflected else
            "instruction reflection parse_failed: no [New Instruction] section",
            "chosen_instruction": c_inst, "chosen_input": c_inp, "chosen_response": c_resp, "better_response": better,
            "response_reflection_status": "ok" if res_ok else "placeholder: N/A",
            "better_response_ifd": ifd + 0.01 if res_ok else None,
            "better_response_rifd": rifd - 0.05 if res_ok else None,
            "response_choice": "reflected" if res_reflected else "original",
            "response_choice_reason": f"reflected r-IFD {rifd - 0.05:.4f} < original {rifd:.4f}" if res_reflected else
            f"reflected r-IFD {rifd + 0.05:.4f} >= original {rifd:.4f}",
            "final_instruction": c_inst, "final_input": c_inp, "final_response": better if res_reflected else c_resp,
            "final_ifd": ifd, "final_rifd": rifd, "final_score_status": "ok",
            "selected": ifd < 1 and rifd < 1,
            "selection_reason": "kept: final ifd < 1 and rifd < 1" if ifd < 1 and rifd < 1
            else f"dropped: final ifd >= 1 ({ifd:.4f})",
        }.items():
            put(name, value)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), root / runs.ROWS)
    runs.write_meta(root, {"kind": "recycle", "source": {"name": "tatsu-lab/alpaca"}, "counts": {"input": n},
                           "selection": {"rule": "ifd < 1 and rifd < 1"}})


def browser_times(path: Path) -> dict[str, float]:
    import shutil

    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        raise SystemExit("--browser needs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page()
        t0 = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=300_000)
        loaded = time.perf_counter() - t0
        before = page.inner_text("#count")
        t0 = time.perf_counter()
        page.fill("#q", "photosynthesis")
        changed = f"document.getElementById('count').textContent !== {json.dumps(before)}"
        page.wait_for_function(changed, timeout=300_000)
        searched = time.perf_counter() - t0 - 0.15  # the search starts 150 ms after the last key
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
        browser.close()
    return {"load_to_rows_s": loaded, "search_s": max(searched, 0.0), "js_heap_mb": heap / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--browser", action="store_true", help="Also time loading and searching in headless Chromium.")
    args = parser.parse_args()
    records = json.loads((args.data or find_data()).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        synthetic_run(run, records, args.rows)
        t0 = time.perf_counter()
        path = report.write_report(run)
        seconds = time.perf_counter() - t0
        payload = report.build_payload(run, runs.read_meta(run))
        raw = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
        texts = sum(len(s.encode()) for s in payload["strings"])
        html, parquet = path.stat().st_size, (run / runs.ROWS).stat().st_size
        print(f"rows: {args.rows:,}   distinct texts: {len(payload['strings']):,} ({texts / 2**20:.1f} MB)")
        print(f"rows.parquet (baseline): {parquet / 2**20:8.2f} MB")
        print(f"report data as JSON:     {raw / 2**20:8.2f} MB")
        print(f"report.html:             {html / 2**20:8.2f} MB   ({html / args.rows / 1024:.2f} KB per row), "
              f"written in {seconds:.1f} s")
        print(f"ratio report.html / rows.parquet: {html / parquet:.2f}x;  report.html / JSON: {html / raw:.2f}x")
        if args.browser:
            t = browser_times(path)
            print(f"headless Chromium: rows shown {t['load_to_rows_s']:.2f} s after navigation, a search over all "
                  "rows "
                  f"{t['search_s']:.2f} s, JS heap {t['js_heap_mb']:.0f} MB")


if __name__ == "__main__":
    main()
