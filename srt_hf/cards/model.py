"""The model card of a model trained on srt-hf data (``srt-hf sft`` / ``recipes/sft.py``, :func:`srt_hf.train.train_sft`).

    write_model_card("outputs/smollm2-srt", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                     dataset="me/alpaca-srt", hyperparameters=training_hyperparameters(trainer.args),
                     history=loss_history(trainer.state.log_history), run_meta=runs.read_meta(run_dir))

writes ``README.md`` and ``loss_curve.png``; the two extractors live in :mod:`srt_hf.train`. An adapter
(``adapter=``) gets a PEFT card; a comparison (``comparison=``, from ``srt-hf compare``) adds the table, the chart
and the Hub's evaluation results. :func:`validate_model_card` checks a card with huggingface_hub before an upload.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import PROJECT_URL, __version__
from ..charts import loss_curve_png
from .citations import citations_for, run_methods
from .common import (
    BASE_TAGS,
    MODEL_TEMPLATE,
    as_dict,
    card_yaml,
    looks_like_hub_id,
    provenance,
    render,
)

MODEL_TAGS = [*BASE_TAGS, "trl", "sft"]
# Licenses of base models the recipe knows without reading their card.
KNOWN_MODEL_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}


def write_model_card(
    output_dir: Path,
    *,
    base_model: str | None,
    dataset: str,
    hyperparameters: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]] = (),
    run_meta: Mapping[str, Any] | None = None,
    dataset_repo_id: str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    model_name: str | None = None,
    base_model_source: str | None = None,
    adapter: Mapping[str, Any] | None = None,
    comparison: Mapping[str, Any] | None = None,
) -> Path:
    """Render ``output_dir/README.md`` and ``output_dir/loss_curve.png`` for a model trained on srt-hf data.

    ``base_model`` and ``dataset_repo_id`` go into the metadata only when they are Hub ids (a local path
    is not valid metadata); ``run_meta`` is the run.json of the training data, when known;
    ``base_model_source`` says where the weights came from when that is not ``base_model`` itself.
    ``adapter``: the PEFT adapter's settings (``srt_hf.train.adapter_info``) when the folder holds an adapter,
    not a full model. ``comparison``: a pairwise comparison (``summary.json`` of ``srt-hf compare`` plus
    ``chart_path`` / ``table_path``), shown as a table, a chart and the Hub's evaluation metadata.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(run_meta or {})
    base_model = base_model if looks_like_hub_id(base_model) else None
    if dataset_repo_id is None and looks_like_hub_id(dataset):
        dataset_repo_id = dataset
    if dataset_repo_id is None:
        dataset_repo_id = as_dict(meta.get("hub"), "repo_id").get("repo_id")
    license = license or KNOWN_MODEL_LICENSES.get(base_model or "")
    name = model_name or (repo_id or output_dir.resolve().name).split("/")[-1]
    metadata: dict[str, Any] = {
        "model_name": name,
        "license": license or "other",
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": [*MODEL_TAGS, *(["lora"] if adapter and "LoRA" in adapter.get("method", "") else [])],
    }
    if base_model:
        metadata["base_model"] = base_model
        if adapter:
            metadata["base_model_relation"] = "adapter"
    if dataset_repo_id:
        metadata["datasets"] = [dataset_repo_id]
    if comparison:
        metadata["eval_results"] = comparison_eval_results(comparison)

    losses = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e and "step" in e]
    chart = None
    if losses:
        chart = "loss_curve.png"
        series = {"train": losses, **({"eval": evals} if evals else {})}
        loss_curve_png(output_dir / chart, series)
    context = {
        "project_url": PROJECT_URL,
        "card_data": card_yaml(metadata, "model"),
        "model_name": name,
        "repo_id": repo_id,
        "use_id": repo_id or str(output_dir),
        "base_model": base_model,
        "base_model_source": base_model_source,
        "dataset": dataset,
        "dataset_repo_id": dataset_repo_id,
        "license": license,
        "kind": meta.get("kind"),
        "source": as_dict(meta.get("source"), "name"),
        **provenance(meta),
        "counts": dict(meta.get("counts") or {}),
        "has_run": bool(meta),
        "rifd_used": rifd_used(meta),
        "adapter": dict(adapter) if adapter else None,
        "comparison": _comparison_context(comparison) if comparison else None,
        "hyperparameters": dict(hyperparameters),
        "chart": chart,
        "final_loss": losses[-1][1] if losses else None,
        "versions": _versions(),
        "citations": citations_for([*(run_methods(meta) if meta else []), "sft"]),
    }
    card = output_dir / "README.md"
    card.write_text(render(MODEL_TEMPLATE, context), encoding="utf-8")
    return card


def rifd_used(meta: Mapping[str, Any]) -> bool:
    """Whether the training data was chosen with reverse IFD: every recycle run (response reflection and the
    final filter), a select run only when its rule names r-IFD."""
    if not meta:
        return False
    if meta.get("kind", "recycle") == "recycle":
        return True
    rule = str(as_dict(meta.get("selection"), "rule").get("rule") or "").lower()
    return "rifd" in rule or "r-ifd" in rule


def comparison_eval_results(comparison: Mapping[str, Any]) -> list:
    """The Hub's structured evaluation results (``model-index``) of a pairwise comparison: the rates and the winning score."""
    from huggingface_hub import EvalResult

    other, judge = comparison.get("model_b"), comparison.get("judge")
    prompts = str(comparison.get("prompts") or "prompts")
    dataset_type = "srt-hf-builtin-prompts" if prompts.startswith("builtin") else "custom-prompts"
    rates = comparison.get("rates") or {}
    metrics = [(f"{k}_rate", rates.get(k), f"{k} rate vs {other}") for k in ("win", "tie", "loss")]
    metrics.append(("winning_score", comparison.get("winning_score"), f"winning score vs {other} ((wins - losses) / judged + 1)"))
    return [
        EvalResult(task_type="text-generation", task_name=f"Pairwise comparison (judge: {judge})", dataset_type=dataset_type,
                   dataset_name=prompts, metric_type=metric, metric_value=round(float(value), 4), metric_name=label)
        for metric, value, label in metrics if value is not None
    ]


def _comparison_context(comparison: Mapping[str, Any]) -> dict[str, Any]:
    """Rows of the card's comparison table: one per category, then all prompts."""
    from ..judge import winning_score

    def row(name: str, counts: Mapping[str, int]) -> dict[str, Any]:
        ws = winning_score(dict(counts))
        return {"name": name, **{k: counts.get(k, 0) for k in ("win", "tie", "loss", "not_judged")},
                "winning_score": "-" if ws is None else f"{ws:.3f}"}

    by_category = dict(comparison.get("by_category") or {})
    rows = [row(name, counts) for name, counts in by_category.items()] + [row("all", comparison.get("counts") or {})]
    return {**comparison, "rows": rows}


def validate_model_card(path: str | os.PathLike) -> None:
    """Check a model card with huggingface_hub before any upload: it parses, its metadata round-trips through
    ``ModelCardData`` (the ``model-index`` included) and an adapter names its base model."""
    from huggingface_hub import ModelCard, ModelCardData

    from ..errors import InputError

    path = Path(path)
    try:
        card = ModelCard.load(path)
        data = card.data.to_dict()
        ModelCardData(**data).to_yaml()
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises several kinds for a broken card
        raise InputError(f"{path}: the model card is not valid Hub metadata: {err}",
                         fix="this is a bug in srt-hf's card template; please report it") from None
    problems = []
    if data.get("base_model_relation") and not data.get("base_model"):
        problems.append("base_model_relation without base_model")
    if data.get("model-index") and not card.data.eval_results:
        problems.append("model-index without readable results")
    if problems:
        raise InputError(f"{path}: the model card metadata is inconsistent: {'; '.join(problems)}",
                         fix="set `base_model_id` in the recipe (the base model's Hub id)")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"srt-hf": __version__}
    for name in ("trl", "transformers", "torch", "datasets", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
