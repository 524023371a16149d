"""The model card of srt_hf.cards for adapters and full fine-tunes, r-IFD wording, comparison results, validation."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard
from test_cards import MODEL_CARD_KEYS, no_network  # noqa: F401  (fixture re-used)

from srt_hf.cards import validate_model_card, write_model_card
from srt_hf.errors import InputError

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
HYPER = {"learning_rate": 2e-4, "epochs": 1}
QLORA = {"method": "QLoRA", "peft_type": "LORA", "r": 64, "lora_alpha": 16, "lora_dropout": 0.05,
         "target_modules": "all-linear", "quantization": "4-bit nf4 (double quantization)"}
COMPARISON = {
    "model_a": "me/m", "model_b": BASE, "judge": "Qwen/Qwen2.5-72B-Instruct", "prompts": "builtin (40 prompts)",
    "counts": {"win": 20, "tie": 12, "loss": 6, "not_judged": 2}, "rates": {"win": 20 / 38, "tie": 12 / 38, "loss": 6 / 38},
    "winning_score": 1 + 14 / 38, "by_category": {"maths": {"win": 5, "tie": 2, "loss": 1, "not_judged": 0}},
    "chart_path": "compare/comparison.png", "table_path": "compare/compare.parquet",
}


def card(tmp_path, **kw) -> ModelCard:
    path = write_model_card(tmp_path / "m", base_model=BASE, dataset="runs/x", hyperparameters=HYPER, repo_id="me/m", **kw)
    validate_model_card(path)
    return ModelCard.load(path)


def test_full_fine_tune_keeps_the_transformers_card(tmp_path):
    c = card(tmp_path)
    data = c.data.to_dict()
    assert set(data) <= MODEL_CARD_KEYS
    assert data["library_name"] == "transformers" and "base_model_relation" not in data and data["model_name"] == "m"
    assert {"trl", "sft"} <= set(data["tags"]) and "lora" not in data["tags"]
    assert 'pipeline("text-generation", model="me/m")' in c.text and "PeftModel" not in c.text and "adapter" not in c.text


def test_adapter_card_says_peft_adapter_and_how_to_load_it(tmp_path):
    c = card(tmp_path, adapter=QLORA)
    data = c.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model_relation"] == "adapter" and data["base_model"] == BASE
    assert "lora" in data["tags"] and data["model_name"] == "m"
    assert "a **QLoRA adapter** (PEFT)" in c.text and "4-bit nf4 (double quantization)" in c.text
    assert f'AutoModelForCausalLM.from_pretrained("{BASE}"' in c.text and 'PeftModel.from_pretrained(base, "me/m")' in c.text
    assert "merge_and_unload()" in c.text and "`all-linear`" in c.text


def test_r_ifd_sentences_only_when_r_ifd_was_used(tmp_path):
    recycled = card(tmp_path / "a", run_meta={"kind": "recycle", "selection": {"rule": "ifd < 1 and rifd < 1"}})
    assert "reverse IFD (r-IFD)" in recycled.text
    ifd_only = card(tmp_path / "b", run_meta={"kind": "select", "selection": {"rule": "top_ifd_share"}})
    assert "r-IFD" not in ifd_only.text and "scored every row with IFD," in ifd_only.text
    both = card(tmp_path / "c", run_meta={"kind": "select", "selection": {"rule": "ifd < 1 and rifd < 1, then top 0.5"}})
    assert "with IFD and r-IFD" in both.text
    assert "r-IFD" not in card(tmp_path / "d").text  # plain data, no run


def test_comparison_goes_into_text_chart_and_model_index(tmp_path):
    c = card(tmp_path, adapter=QLORA, comparison=COMPARISON)
    metrics = {r.metric_type: r.metric_value for r in c.data.eval_results}
    assert metrics == {"win_rate": round(20 / 38, 4), "tie_rate": round(12 / 38, 4), "loss_rate": round(6 / 38, 4),
                       "winning_score": round(1 + 14 / 38, 4)}
    assert c.data.model_name == "m" and c.data.eval_results[0].task_type == "text-generation"
    assert "| all | 20 | 12 | 6 | 2 | 1.368 |" in c.text and "| maths | 5 | 2 | 1 | 0 | 1.500 |" in c.text
    assert "![Pairwise comparison](compare/comparison.png)" in c.text and "Qwen/Qwen2.5-72B-Instruct" in c.text


def test_a_card_that_is_not_valid_metadata_is_refused(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("---\nmodel-index: [{name: m, results: [{task: {}}]}]\n---\n# m\n")
    with pytest.raises(InputError, match="not valid Hub metadata"):
        validate_model_card(path)
