"""The model card of a model trained on srt-hf data (``recipes/sft.py``, :func:`srt_hf.train.train_sft`).

    write_model_card("outputs/smollm2-srt", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                     dataset="me/alpaca-srt", hyperparameters=training_hyperparameters(trainer.args),
                     history=loss_history(trainer.state.log_history), run_meta=runs.read_meta(run_dir))

writes ``README.md`` and ``loss_curve.png``; the two extractors live in :mod:`srt_hf.train`.
"""

from __future__ import annotations

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
) -> Path:
    """Render ``output_dir/README.md`` and ``output_dir/loss_curve.png`` for a model trained on srt-hf data.

    ``base_model`` and ``dataset_repo_id`` go into the metadata only when they are Hub ids (a local path
    is not valid metadata); ``run_meta`` is the run.json of the training data, when known;
    ``base_model_source`` says where the weights came from when that is not ``base_model`` itself.
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
    metadata: dict[str, Any] = {
        "license": license or "other",
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": list(MODEL_TAGS),
    }
    if base_model:
        metadata["base_model"] = base_model
    if dataset_repo_id:
        metadata["datasets"] = [dataset_repo_id]

    losses = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e and "step" in e]
    chart = None
    if losses:
        chart = "loss_curve.png"
        series = {"train": losses, **({"eval": evals} if evals else {})}
        loss_curve_png(output_dir / chart, series)
    name = model_name or (repo_id or output_dir.resolve().name).split("/")[-1]
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
        "hyperparameters": dict(hyperparameters),
        "chart": chart,
        "final_loss": losses[-1][1] if losses else None,
        "versions": _versions(),
        "citations": citations_for([*(run_methods(meta) if meta else []), "sft"]),
    }
    card = output_dir / "README.md"
    card.write_text(render(MODEL_TEMPLATE, context), encoding="utf-8")
    return card


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"srt-hf": __version__}
    for name in ("trl", "transformers", "torch", "datasets", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
