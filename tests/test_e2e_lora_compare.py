"""End to end, offline on CPU: recycle (tiny) → sft with LoRA (2 steps) → compare with the base model, judged by a
fault-injecting server → the model card carries the results → the folder that would be pushed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from fault_server import FaultServer
from test_cards import MODEL_CARD_KEYS, no_network  # noqa: F401  (fixture re-used)
from test_sft_recipe import BASE_ID, load_recipe, tiny_args

from srt_hf import cli, hub

LORA = ("--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
        "--learning_rate", "5e-2")


def hashing_judge(messages, body) -> str:
    """Scores each answer from a digest of its text: deterministic, and equal answers get equal scores."""
    text = messages[-1]["content"]
    answers = [re.search(rf"=== Answer {i} ===\n(.*?)\n=== End of answer {i} ===", text, re.DOTALL).group(1) for i in (1, 2)]
    s1, s2 = (1 + int(hashlib.sha256(a.encode()).hexdigest(), 16) % 10 for a in answers)
    if "response_format" in body:
        return json.dumps({"review": "scored by digest", "score_1": s1, "score_2": s2})
    return f"{s1} {s2}\nscored by digest"


@pytest.mark.slow
def test_recycle_lora_compare_card_push(tmp_path, tiny_model_dir, demo_path, monkeypatch):
    import datasets
    from huggingface_hub import ModelCard

    from srt_hf.pipeline import recycle
    from srt_hf.teachers import GenerationConfig

    ds = datasets.load_dataset("json", data_files=str(demo_path), split="train").select(range(6))
    recycled = tmp_path / "recycled"
    recycle(ds, teacher=str(tiny_model_dir), student=str(tiny_model_dir), out=recycled,
            generation=GenerationConfig(max_new_tokens=16, batch_size=6))

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # srt_hf's check only: the upload is replaced, sockets are blocked
    pushed = {}

    def fake_upload(folder, repo_id, *, repo_type, ignore_patterns=None, **kw):
        pushed.update(folder=Path(folder), repo_id=repo_id, ignore=list(ignore_patterns or []),
                      card=(Path(folder) / "README.md").read_text())
        return f"https://huggingface.co/{repo_id}"

    monkeypatch.setattr(hub, "upload", fake_upload)
    faults = ["500", "429:0", "malformed", "drop", "503"]
    with FaultServer(answer=hashing_judge, faults=faults) as judge:
        args = tiny_args(tmp_path, recycled, tiny_model_dir, *LORA, "--push_to_hub", "true", "--hub_model_id", "me/tiny-srt-lora",
                         "--compare_with", str(tiny_model_dir), "--compare_judge", judge.url, "--compare_judge_model", "judge",
                         "--compare_limit", "6", "--compare_max_new_tokens", "12")
        trainer = load_recipe().train(*args)
        stats = judge.stats()
    assert trainer.state.global_step == 2
    assert all(stats["faults"].get(f) for f in faults), stats  # every injected fault was met (and retried)

    model = tmp_path / "model"
    summary = json.loads((model / "compare" / "summary.json").read_text())
    counts = summary["counts"]
    assert sum(counts.values()) == 6 and counts["not_judged"] == 0  # every fault was retried away
    assert summary["settings"]["verdict_format"] == "json"  # the fault server enforces the verdict schema

    # the card: an adapter, with the comparison as text, chart and Hub evaluation metadata
    assert pushed["repo_id"] == "me/tiny-srt-lora" and pushed["card"] == (model / "README.md").read_text()
    card = ModelCard.load(model / "README.md")
    data = card.data.to_dict()
    assert set(data) <= MODEL_CARD_KEYS, set(data) - MODEL_CARD_KEYS
    assert data["library_name"] == "peft" and data["base_model_relation"] == "adapter"
    assert {"trl", "sft", "lora"} <= set(data["tags"])
    assert card.data.model_name == data["model-index"][0]["name"] == "tiny-srt-lora"  # with results, huggingface_hub keeps it there
    metrics = {m.metric_type: m.metric_value for m in card.data.eval_results}
    judged = counts["win"] + counts["tie"] + counts["loss"]
    assert metrics["win_rate"] == pytest.approx(counts["win"] / judged)
    assert metrics["winning_score"] == pytest.approx((counts["win"] - counts["loss"]) / judged + 1)
    all_row = f"| all | {counts['win']} | {counts['tie']} | {counts['loss']} | 0 |"
    assert all_row in card.text and "![Pairwise comparison](compare/comparison.png)" in card.text
    assert f"## Evaluation: pairwise comparison with {BASE_ID}" in card.text  # the base model by its Hub id, not its path
    assert "PeftModel.from_pretrained" in card.text and "merge_and_unload" in card.text
    assert (model / "compare" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    # what a killed run can leave in the folder is never uploaded (huggingface_hub applies these patterns)
    from huggingface_hub.utils import filter_repo_objects

    leftovers = ["compare/cache.sqlite", "compare/cache.sqlite-wal", "compare/cache.sqlite-shm", "compare/.srt-hf.lock",
                 ".srt-hf.lock", "checkpoint-2/optimizer.pt"]
    assert not list(filter_repo_objects(leftovers, ignore_patterns=pushed["ignore"]))
    assert set(filter_repo_objects(["compare/compare.parquet", "compare/comparison.png", "adapter_model.safetensors"],
                                   ignore_patterns=pushed["ignore"])) == {"compare/compare.parquet", "compare/comparison.png",
                                                                          "adapter_model.safetensors"}

    # the separate step on the finished folder resumes (nothing asked again) and renders the same card
    before = card.text
    with FaultServer(answer=hashing_judge) as judge:
        code = cli.main(["compare", str(model), str(tiny_model_dir), "--judge", judge.url, "--judge-model", "judge",
                         "--limit", "6", "--max-new-tokens", "12", "--card", "--model-a-label", "me/tiny-srt-lora",
                         "--model-b-label", BASE_ID])
        assert code == 0 and judge.stats()["requests"] == 0
    def undated(text: str) -> str:
        return re.sub(r"\d{4}-\d\d-\d\dT[\d:]+Z", "DATE", text)

    assert undated(ModelCard.load(model / "README.md").text) == undated(before)
