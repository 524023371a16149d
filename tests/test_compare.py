"""srt_hf.judge and srt_hf.compare: verdict parsing, the two-order rule, the comparison folder, resume,
structured verdicts, the CLI. Models and judge are fault-injecting loopback servers (no model loads)."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
from fault_server import FaultServer

from srt_hf import cli, judge
from srt_hf.compare import CompareConfig, ComparisonResult, compare, load_prompts
from srt_hf.errors import ConfigError, InputError

# ----------------------------------------------------------------------------------------------
# Verdicts and the rule


@pytest.mark.parametrize("text, scores", [
    ("8 6\nAnswer 1 is more complete.", (8, 6)),
    ("**7, 9**\nthe second is better", (7, 9)),
    ("Scores: 8/10 and 6/10\n", (8, 6)),
    ("7.5 7.5", (7.5, 7.5)),
    ('```json\n{"review": "close", "score_1": 4, "score_2": 9}\n```', (4, 9)),
    ('{"scores": [3, 2]}', (3, 2)),
    ("Both answers are fine.\nAnswer 1: 6\nAnswer 2 score: 9/10", (6, 9)),
])
def test_verdicts_are_read_from_json_the_first_line_or_labels(text, scores):
    verdict = judge.parse_verdict(text)
    assert verdict.ok and (verdict.score_1, verdict.score_2) == scores


@pytest.mark.parametrize("text, reason", [
    ("", "empty"), (None, "empty"), ("Answer 1 is better than answer 2.", "no two scores"),
    ("11 4", "outside"), ('{"score_1": "high", "score_2": 3}', "no two scores"),
])
def test_unreadable_verdicts_are_parse_failed_with_a_reason(text, reason):
    verdict = judge.parse_verdict(text)
    assert verdict.status.startswith("parse_failed: ") and reason in verdict.status
    assert judge.order_result(verdict, 1) is None


def test_outcome_rule_both_orders():
    win, tie, loss = judge.WIN, judge.TIE, judge.LOSS
    table = {(win, win): win, (win, tie): win, (tie, win): win, (tie, tie): tie, (win, loss): tie, (loss, win): tie,
             (loss, loss): loss, (loss, tie): loss, (tie, loss): loss}
    for (first, second), outcome in table.items():
        assert judge.combine(first, second) == outcome
    assert judge.combine(win, None) is None
    # a judge that always prefers the first position gives A a win, then a loss: a tie, not a win
    first_always = judge.parse_verdict("9 2")
    assert judge.combine(judge.order_result(first_always, 1), judge.order_result(first_always, 2)) == tie
    assert judge.winning_score({"win": 3, "tie": 1, "loss": 0}) == 1.75 and judge.winning_score({}) is None


def test_judge_prompt_shows_both_answers_in_the_asked_order():
    text = judge.judge_messages("Add 2 and 3.", "five", "six")[0]["content"]
    assert text.index("five") < text.index("six") and "Add 2 and 3." in text and "first line" in text
    assert '"score_1"' in judge.judge_messages("q", "a", "b", structured=True)[0]["content"]
    with pytest.raises(ConfigError, match="judge_template"):
        judge.load_prompt("no/such/template.jinja")


# ----------------------------------------------------------------------------------------------
# Prompts


def test_builtin_prompts_cover_five_categories():
    prompts = load_prompts()
    assert len(prompts) == 40 and len({p["id"] for p in prompts}) == 40 and all(p["prompt"] for p in prompts)
    assert {p["category"] for p in prompts} == {"writing", "reasoning", "maths", "coding", "knowledge"}
    assert len(load_prompts("builtin", limit=3)) == 3


def test_prompt_files_alpaca_or_prompt_column_and_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"instruction": "Sum these.", "input": "2 3"}) + "\n" + json.dumps({"instruction": "Hi"}) + "\n")
    assert [p["prompt"] for p in load_prompts(str(path))] == ["Sum these.\n\n2 3", "Hi"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(InputError, match="column 'prompt'"):
        load_prompts(str(bad))
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(json.dumps({"id": "a", "prompt": p}) + "\n" for p in ("x", "y")))
    with pytest.raises(InputError, match="'a' appears more than once"):
        load_prompts(str(dup))
    with pytest.raises(ConfigError, match="builtin"):
        load_prompts(str(tmp_path / "missing.jsonl"))


# ----------------------------------------------------------------------------------------------
# The comparison, with endpoints for both models and the judge


def _last_user(messages) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def detailed_model(messages, body) -> str:
    return f"A careful, complete answer to: {_last_user(messages)} First, the context. Then the steps, one by one."


def terse_model(messages, body) -> str:
    return "Not sure."


def length_judge(messages, body) -> str:
    """Prefers the longer answer (8 vs 4); JSON when asked for a schema."""
    text = _last_user(messages)
    one, two = (re.search(rf"=== Answer {i} ===\n(.*?)\n=== End of answer {i} ===", text, re.DOTALL).group(1) for i in (1, 2))
    s1, s2 = (8, 4) if len(one) > len(two) else (4, 8) if len(two) > len(one) else (5, 5)
    if "response_format" in body:
        return json.dumps({"review": "the longer one explains more", "score_1": s1, "score_2": s2})
    return f"{s1} {s2}\nThe longer answer explains more."


class FailingPromptServer(FaultServer):
    """Answers 503 to every request whose messages contain ``fail_on`` (all its retries fail too)."""

    def __init__(self, *, fail_on: str, **kw):
        super().__init__(**kw)
        self.fail_on = fail_on

    def _admit(self, body, authorization, headers=None):
        fault, delay = super()._admit(body, authorization, headers)
        return ("503" if self.fail_on in json.dumps(body.get("messages")) else fault), delay


def config(judge_url: str, **kw) -> CompareConfig:
    return CompareConfig(judge=judge_url, judge_model="judge", model_a_name="a", model_b_name="b", limit=6,
                         max_retries=2, **kw)


def test_compare_writes_every_answer_both_verdicts_and_outcome(tmp_path):
    with FaultServer(answer=detailed_model) as a, FaultServer(answer=terse_model) as b, \
         FaultServer(answer=length_judge, structured="reject", faults=["500", "malformed", "429:0", "drop"]) as j:
        result = compare(a.url, b.url, tmp_path / "cmp", config(j.url, structured="off"))
        assert j.stats()["faults"].get("ok") == 12  # 6 prompts x 2 orders, after the injected faults were retried
    assert result.counts == {"win": 6, "tie": 0, "loss": 0, "not_judged": 0} and result.winning_score == 2.0
    rows = pq.read_table(tmp_path / "cmp" / "compare.parquet").to_pylist()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    row = rows[0]
    assert row["answer_a"].startswith("A careful") and row["answer_b"] == "Not sure."
    assert (row["verdict_ab_score_a"], row["verdict_ab_score_b"], row["verdict_ba_score_a"], row["verdict_ba_score_b"]) == (8, 4, 8, 4)
    assert row["verdict_ab"].startswith("8 4") and row["verdict_ba"].startswith("4 8")  # B was shown first
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert summary["counts"]["win"] == 6 and summary["settings"]["verdict_format"] == "text"
    assert summary["by_category"] == {"writing": {"win": 6, "tie": 0, "loss": 0, "not_judged": 0}}
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert ComparisonResult.load(tmp_path / "cmp").counts == result.counts
    assert not list((tmp_path / "cmp").glob("cache.sqlite-*"))  # every teacher closed its cache: no -wal / -shm


def test_rerun_resumes_asking_only_what_failed(tmp_path):
    out = tmp_path / "cmp"
    with FaultServer(answer=detailed_model) as a, FaultServer(answer=terse_model) as b:
        # both verdicts of the first prompt fail through all of their 3 attempts: that prompt is not judged
        with FailingPromptServer(fail_on="water your plants", answer=length_judge, structured="reject") as j:
            first = compare(a.url, b.url, out, config(j.url, structured="off", backoff_base=0.0))
        assert first.counts["not_judged"] == 1 and first.statuses == {"ok": 5, "request_failed": 1}
        failed = next(r for r in pq.read_table(out / "compare.parquet").to_pylist() if r["outcome"] is None)
        assert failed["status"].startswith("request_failed: judge (")
        a.reset_counts(), b.reset_counts()
        with FaultServer(answer=length_judge, structured="reject") as j:
            second = compare(a.url, b.url, out, config(j.url, structured="off"))
            assert j.stats()["requests"] == 2  # only the two failed verdicts are asked again
        assert a.stats()["requests"] == 0 and b.stats()["requests"] == 0  # answers come from the cache
    assert second.counts == {"win": 6, "tie": 0, "loss": 0, "not_judged": 0}


def test_structured_verdicts_where_the_judge_enforces_a_schema(tmp_path):
    with FaultServer(answer=detailed_model) as a, FaultServer(answer=terse_model) as b:
        with FaultServer(answer=length_judge, structured="json_schema") as j:
            result = compare(a.url, b.url, tmp_path / "json", config(j.url))
            bodies = [e["body"] for e in j.log]
        assert result.settings["verdict_format"] == "json" and result.counts["win"] == 6
        assert all(body["response_format"]["json_schema"]["schema"] == judge.VERDICT_SCHEMA for body in bodies)
        with FaultServer(answer=length_judge, structured="reject") as j:
            fallback = compare(a.url, b.url, tmp_path / "text", config(j.url))  # auto: the plain layout
            with pytest.raises(ConfigError, match="JSON schema"):
                compare(a.url, b.url, tmp_path / "strict", config(j.url, structured="json"))
        assert fallback.settings["verdict_format"] == "text" and fallback.counts["win"] == 6


def test_cli_prints_the_table_and_fails_in_one_line(tmp_path, capsys):
    with FaultServer(answer=terse_model) as a, FaultServer(answer=detailed_model) as b, \
         FaultServer(answer=length_judge, structured="reject") as j:
        code = cli.main(["compare", a.url, b.url, "--judge", j.url, "--judge-model", "judge", "--model-a-name", "a",
                         "--model-b-name", "b", "--limit", "2", "--structured", "off", "--out", str(tmp_path / "cmp")])
    printed = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^all\s+0\s+0\s+2\s+0\s+0\.000$", printed, re.MULTILINE), printed  # A is the terse one: 2 losses
    assert "winning score" in printed
    assert cli.main(["compare", "x", "y", "--structured", "maybe", "--out", str(tmp_path / "bad")]) == 2
    assert "use auto, json or off" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_compare_into_the_same_folder_stops_at_once(tmp_path, capsys):
    from test_locks import Holder

    out = tmp_path / "cmp"
    holder = Holder(out, folder=True)
    try:
        assert cli.main(["compare", "x", "y", "--judge", "http://127.0.0.1:9", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and "is in use by another run" in err and "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == [".srt-hf.lock"]  # nothing asked, nothing written
    finally:
        holder.kill()
