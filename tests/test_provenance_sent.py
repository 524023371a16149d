"""A recycle run records what the teacher was really sent: the prompts and the layout per stage (with the
dialect and row counts), keeps its structured-output probe for a resume, counts meta replies, and says when
it is only a smoke test."""

from __future__ import annotations

import json
import shutil

import pytest
from fault_server import FaultServer

from srt_hf.dataio import load_input
from srt_hf.pipeline import SMOKE_TEST, _embedded_teacher, recycle
from srt_hf.reflection import builtin_template
from srt_hf.teachers import EndpointTeacher, GenerationConfig
from srt_hf.teachers.probe_store import PROBE_FILE

FAST = dict(timeout=5.0, max_retries=2, backoff_base=0.01, backoff_max=0.05, breaker_failures=1)


@pytest.fixture(scope="module")
def demo(demo_path):
    return load_input(str(demo_path)).select(range(4))


def test_a_json_run_shows_the_json_prompts_and_its_dialect_and_a_resume_asks_no_probe(tmp_path, tiny_model_dir, demo):
    out = tmp_path / "run"
    with FaultServer(kind="llama-cpp-python") as server:
        teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
        result = recycle(demo, teacher=teacher, student=str(tiny_model_dir), out=out)
        refusals = len(server.refusals)
        # a run whose folder holds the probe (as a resume's does) asks every row again here (no cache), and no
        # dialect twice: the stored probe is used
        (tmp_path / "again").mkdir()
        shutil.copy(out / PROBE_FILE, tmp_path / "again" / PROBE_FILE)
        again = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
        second = recycle(demo, teacher=again, student=str(tiny_model_dir), out=tmp_path / "again")
        assert len(server.refusals) == refusals == 2
        assert second.meta["reflection_layout"]["rows"]["instruction_reflection"] == {"json (json_object)": 4}
    meta = json.loads((out / "run.json").read_text())
    prompts = meta["prompts"]
    name = "instruction reflection [JSON layout (json_object), 4 rows]"
    assert prompts[name] == builtin_template("instruction_reflection_json")
    assert not any("markers" in key for key in prompts)  # the marker prompts were never sent
    assert meta["layouts_sent"].startswith("instruction reflection: JSON layout (json_object) 4")
    stored = json.loads((out / PROBE_FILE).read_text())
    assert list(stored.values()) == [{"dialect": "json_object", "tried": {
        "json_schema": stored[next(iter(stored))]["tried"]["json_schema"], "tgi": stored[next(iter(stored))]["tried"]["tgi"]},
        "refusals_answered": True}]
    assert all(v.startswith("refused: HTTP 500") for v in next(iter(stored.values()))["tried"].values())
    card = (out / "README.md").read_text()
    assert "**Teacher reply layout:** instruction reflection: JSON layout (json_object) 4" in card
    assert "instruction_reflection_json" not in card and name in card
    assert "Smoke test" not in card and "smoke_test" not in meta
    assert result.meta["counts"]["meta replies rejected"] == 0


def _mixed(messages: list[dict], body: dict) -> str:
    """Marker replies; the one to the JSON probe (whose format the server ignores) too, and one meta reply."""
    prompt = messages[-1]["content"]
    if "[Better Answer]" in prompt or "better_answer" in prompt:
        return "[Better Answer]\nThis is a high-quality answer to the provided instruction.\n[End]"
    return ("[New Instruction]\nList the planets of the Solar System in order from the Sun.\n[End]\n"
            "[New Answer]\nMercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.\n[End]")


def test_a_mixed_run_counts_each_layout_and_rejects_meta_replies(tmp_path, tiny_model_dir, demo):
    with FaultServer(structured="ignore", answer=_mixed) as server:
        teacher = EndpointTeacher(server.url, model="m", config=GenerationConfig(**FAST))
        result = recycle(demo, teacher=teacher, student=str(tiny_model_dir), out=tmp_path / "run")
    meta = result.meta
    sent = meta["reflection_layout"]["rows"]["instruction_reflection"]
    assert sent == {"markers": 3, "markers, reply to the JSON probe": 1}
    prompts = meta["prompts"]
    assert prompts["instruction reflection [markers, 3 rows]"] == builtin_template("instruction_reflection")
    assert prompts["instruction reflection [markers, reply to the JSON probe, 1 row]"] == builtin_template(
        "instruction_reflection_json")
    rows = result.rows.to_list()
    assert all(r["response_reflection_status"].startswith("rejected: meta reply") for r in rows)
    assert all(r["response_choice"] == "original" for r in rows)
    assert meta["counts"]["meta replies rejected"] == 4
    card = (result.run_dir / "README.md").read_text()
    assert "rejected: meta reply" in card and "meta replies rejected" in card


def test_an_embedded_teacher_run_is_marked_a_smoke_test():
    class Embedded:
        def scope(self):
            from srt_hf import models

            return {"kind": "local", "model": models.display_name("default")}

    assert _embedded_teacher(Embedded())
    assert "smoke test of the pipeline, not a data improvement" in SMOKE_TEST
