"""Small recycle run folders built without any model: every column `srt_hf.pipeline` writes, known counts.

``make_recycle_run(root, n)`` writes rows / selected / sft / run.json / README.md through the same
``write_selection_run`` the pipeline uses. Row ``HOSTILE_ROW`` holds HTML and script text in every field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HOSTILE_ROW = 7
HOSTILE_INSTRUCTION = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">Say <b>hi</b> & bye'
HOSTILE_RESPONSE = "</script><!-- not a comment --> it's \"fine\" \u2028 <style>body{display:none}</style>"
UNIQUE_WORD = "zebrafish"  # appears in exactly one row (row 11's response)


def instruction_kind(i: int) -> str:
    if i % 5 == 0:
        return "parse_failed: no [New Instruction] section"
    if i % 7 == 3:
        return "request_failed: HTTP 503 after 3 retries"
    return "ok"


def response_kind(i: int) -> str:
    return "placeholder: the answer is template filler" if i % 4 == 1 else "ok"


def recycle_rows(n: int) -> dict[str, list]:
    from srt_hf.pipeline import final_filter

    cols: dict[str, list] = {k: [] for k in (
        "id", "row_id", "read_status", "original_instruction", "original_input", "original_response", "original_ifd",
        "original_rifd", "original_score_status", "instruction_reflected", "input_reflected", "response_reflected",
        "instruction_reflection_status", "reflected_pair_ifd", "reflected_pair_rifd", "reflected_pair_score_status",
        "instruction_choice", "instruction_choice_reason", "chosen_instruction", "chosen_input", "chosen_response",
        "better_response", "response_reflection_status", "better_response_ifd", "better_response_rifd",
        "better_response_score_status", "response_choice", "response_choice_reason", "final_instruction",
        "final_input",
        "final_response", "final_ifd", "final_rifd", "final_score_status")}
    for i in range(n):
        instruction = f"Explain topic {i} in one sentence."
        inp = f"context {i}" if i % 3 == 0 else ""
        response = f"Topic {i} is about a | b and c."
        if i == HOSTILE_ROW:
            instruction, response = HOSTILE_INSTRUCTION, HOSTILE_RESPONSE
        if i == 11:
            response = f"Topic 11 is about the {UNIQUE_WORD} genome."
        ifd, rifd = 0.35 + (i % 10) * 0.08, 0.4 + (i % 9) * 0.09
        ins_status, res_status = instruction_kind(i), response_kind(i)
        ins_ok = ins_status == "ok"
        r_instruction = f"Explain topic {i} in detail, with one worked example." if ins_ok else instruction
        r_input = "" if ins_ok else inp
        r_response = f"Topic {i} covers a, b and c; for example, a leads to b." if ins_ok else response
        r_ifd = ifd + (0.05 if i % 2 == 0 else -0.05) if ins_ok else None
        r_rifd = rifd - 0.02 if ins_ok else None
        if not ins_ok:
            ins_choice, ins_reason = "original", f"instruction reflection {ins_status}"
        elif r_ifd > ifd:
            ins_choice, ins_reason = "reflected", f"reflected IFD {r_ifd:.4f} > original {ifd:.4f}"
        else:
            ins_choice, ins_reason = "original", f"reflected IFD {r_ifd:.4f} <= original {ifd:.4f}"
        reflected = ins_choice == "reflected"
        c_instruction, c_input, c_response = (
            (r_instruction, r_input, r_response) if reflected else (instruction, inp, response))
        c_ifd, c_rifd = (r_ifd, r_rifd) if reflected else (ifd, rifd)
        res_ok = res_status == "ok"
        better = f"{c_response} In short: topic {i} matters." if res_ok else c_response
        b_ifd, b_rifd = (c_ifd + 0.01, c_rifd + (-0.1 if i % 3 == 0 else 0.1)) if res_ok else (None, None)
        if not res_ok:
            res_choice, res_reason = "original", f"response reflection {res_status}"
        elif b_rifd < c_rifd:
            res_choice, res_reason = "reflected", f"reflected r-IFD {b_rifd:.4f} < original {c_rifd:.4f}"
        else:
            res_choice, res_reason = "original", f"reflected r-IFD {b_rifd:.4f} >= original {c_rifd:.4f}"
        final_response, f_ifd, f_rifd = (
            (better, b_ifd, b_rifd) if res_choice == "reflected" else (c_response, c_ifd, c_rifd))
        values: dict[str, Any] = {
            "id": f"ex-{i:03d}", "row_id": i, "read_status": "ok", "original_instruction": instruction,
            "original_input": inp, "original_response": response, "original_ifd": ifd, "original_rifd": rifd,
            "original_score_status": "ok", "instruction_reflected": r_instruction, "input_reflected": r_input,
            "response_reflected": r_response, "instruction_reflection_status": ins_status, "reflected_pair_ifd": r_ifd,
            "reflected_pair_rifd": r_rifd,
            "reflected_pair_score_status": "ok" if ins_ok else "skipped: reflection did not succeed",
            "instruction_choice": ins_choice, "instruction_choice_reason": ins_reason,
            "chosen_instruction": c_instruction,
            "chosen_input": c_input, "chosen_response": c_response, "better_response": better,
            "response_reflection_status": res_status, "better_response_ifd": b_ifd, "better_response_rifd": b_rifd,
            "better_response_score_status": "ok" if res_ok else "skipped: reflection did not succeed",
            "response_choice": res_choice, "response_choice_reason": res_reason, "final_instruction": c_instruction,
            "final_input": c_input, "final_response": final_response, "final_ifd": f_ifd, "final_rifd": f_rifd,
            "final_score_status": "ok",
        }
        for k, v in values.items():
            cols[k].append(v)
    selected, reasons, rule = final_filter(cols["final_ifd"], cols["final_rifd"], cols["final_score_status"], None)
    cols["selected"], cols["selection_reason"] = selected, reasons
    cols["_rule"] = [rule] * n
    return cols


def make_recycle_run(root: Path, n: int = 40, *, meta_extra: dict | None = None) -> Path:
    """A recycle run folder of ``n`` rows (see the module docstring); returns ``root``."""
    import datasets

    from srt_hf.formats import ColumnMapping
    from srt_hf.pipeline import BETTER_ANSWERS_KEPT, NEW_PAIRS_KEPT
    from srt_hf.selection import write_selection_run
    from srt_hf.status import kind_of

    cols = recycle_rows(n)
    rule = cols.pop("_rule")[0]
    table = datasets.Dataset.from_dict(cols)
    inst = [kind_of(s) for s in cols["instruction_reflection_status"]]
    resp = [kind_of(s) for s in cols["response_reflection_status"]]
    meta = {
        "kind": "recycle",
        "source": {"name": "demo"},
        "teacher": {"model": "fake-teacher <i>7B</i>", "temperature": 0.0, "max_new_tokens": 96},
        "student": {"model": "tiny-llama", "hub_id": None},
        "scoring": {"preset": "reflection", "template": "vicuna"},
        "prompts": {"instruction reflection": "Improve this instruction:\n{{ instruction }}\n</script><b>bold?</b>"},
        "selection": rule,
        "counts": {
            "input": n, "read ok": n, "instruction reflections ok": inst.count("ok"),
            NEW_PAIRS_KEPT: cols["instruction_choice"].count("reflected"),
            "response reflections ok": resp.count("ok"),
            BETTER_ANSWERS_KEPT: cols["response_choice"].count("reflected"),
        },
        "status_kinds": {"instruction_reflection": {k: inst.count(k) for k in sorted(set(inst))},
                         "response_reflection": {k: resp.count(k) for k in sorted(set(resp))}},
        "teacher_requests": {"requests_sent": 2 * n, "retried": 3, "failed": inst.count("request_failed"),
                             "cache_hits": 0},
        "histograms": {"ifd": {"before": "rows.parquet:original_ifd", "after": "selected.parquet:final_ifd"},
                       "rifd": {"before": "rows.parquet:original_rifd", "after": "selected.parquet:final_rifd"}},
        "config": {"student": "tiny", "preset": "reflection", "top_share": None, "chunk_rows": 64,
                   "retry_parse_failures": False, "instruction_column": None},
        **(meta_extra or {}),
    }
    mapping = ColumnMapping(instruction_column="final_instruction", input_column="final_input",
                            response_column="final_response")
    write_selection_run(root, table, meta, mapping=mapping)
    return root
