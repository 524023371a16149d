"""Dataset and model cards: metadata, the pipeline's provenance, charts (PNG) and citations.

The cards are Jinja templates in ``hub_cards/`` (shipped in the package as ``srt_hf/hub_cards``).

``write_dataset_card(run_dir)`` reads the run folder (see :mod:`srt_hf.runs`). Every key of
``run.json`` is optional; the ones used are::

    kind        "recycle" | "select"
    source      {"name": Hub id or path, "license": SPDX/Hub id, "split": str, "language": str | list}
    teacher     {"model": str, ...generation settings}      (recycle)
    student     {"model": str, ...}
    scoring     {"preset": str, "template": str, ...}
    prompts     {name: template text}                        the teacher prompts, shown verbatim
    selection   {"rule": str, ...parameters}
    counts      {stage: rows}                                in pipeline order
    reasons     {"kept: …" / "dropped: …": rows}             why rows were kept or dropped
    columns     {column: description}                        added to the column dictionary
    histograms  {"ifd": {"before": "rows.parquet:ifd", "after": "selected.parquet:ifd"}, "rifd": {...}}
    methods     ["superfiltering", "diverse_evol", "ds_weight", ...]   extra citations
    hub         {"repo_id": str, "revision": str}            written by `srt-hf push`
    srt_hf_version, created

``write_model_card(output_dir, ...)`` renders the card of a model trained by ``recipes/sft.py``.
The charts come from :mod:`srt_hf.charts` (matplotlib).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import __version__
from .charts import histogram_png, loss_curve_png
from .runs import ROWS, SELECTED, SFT, RunPaths, read_meta

TEMPLATE_DIRS = (Path(__file__).resolve().parent / "hub_cards", Path(__file__).resolve().parent.parent / "hub_cards")
DATASET_TEMPLATE, MODEL_TEMPLATE = "dataset_card.md.jinja", "model_card.md.jinja"
IMAGES = "images"
BASE_TAGS = ["srt-hf", "reflection-tuning"]
MODEL_TAGS = [*BASE_TAGS, "trl", "sft"]
# Licenses of base models the recipe knows without reading their card.
KNOWN_MODEL_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}

# Data configs of a run folder: (config name, file, description). The first present is the default.
DATA_CONFIGS = (
    ("sft", SFT, "the kept rows as conversational prompt/completion records (TRL SFT format)"),
    ("selected", SELECTED, "the kept rows with every provenance and score column"),
    ("rows", ROWS, "every input row: original, reflected and chosen texts, scores and statuses"),
)

COLUMN_DOCS = {
    "prompt": "conversational prompt: a list of {role, content} messages ending with the user turn",
    "completion": "conversational completion: the assistant message to learn",
    "id": "row id from the source dataset (or its position)",
    "instruction": "instruction text",
    "input": "optional input / context of the instruction",
    "output": "response text",
    "response": "response text",
    "ifd": "Instruction-Following Difficulty: loss(response | instruction) / loss(response), in the preset's ratio",
    "rifd": "reverse IFD: loss(instruction | response) / loss(instruction), in the preset's ratio",
    "loss_A_cond": "mean token loss of the response given the prompt",
    "loss_A_direct": "mean token loss of the response alone",
    "loss_Q_cond": "mean token loss of the instruction given the reverse prompt",
    "loss_Q_direct": "mean token loss of the instruction alone",
    "score_status": "ok | skipped: <reason> | invalid: <reason>",
}

CITATIONS = {
    "srt": """@inproceedings{li2024selective,
  title     = {Selective Reflection-Tuning: Student-Selected Data Recycling for {LLM} Instruction-Tuning},
  author    = {Li, Ming and Chen, Lichang and Chen, Jiuhai and He, Shwai and Gu, Jiuxiang and Zhou, Tianyi},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  year      = {2024}
}""",
    "reflection_tuning": """@article{li2023reflection,
  title   = {Reflection-Tuning: Data Recycling Improves {LLM} Instruction-Tuning},
  author  = {Li, Ming and Chen, Lichang and Chen, Jiuhai and He, Shwai and Huang, Heng and Gu, Jiuxiang and Zhou, Tianyi},
  journal = {arXiv preprint arXiv:2310.11716},
  year    = {2023}
}""",
    "ifd": """@inproceedings{li2024quantity,
  title     = {From Quantity to Quality: Boosting {LLM} Performance with Self-Guided Data Selection for Instruction Tuning},
  author    = {Li, Ming and Zhang, Yong and Li, Zhitao and Chen, Jiuhai and Chen, Lichang and Cheng, Ning and Wang, Jianzong and Zhou, Tianyi and Xiao, Jing},
  booktitle = {Proceedings of the 2024 Conference of the North American Chapter of the Association for Computational Linguistics (NAACL)},
  year      = {2024}
}""",
    "superfiltering": """@inproceedings{li2024superfiltering,
  title     = {Superfiltering: Weak-to-Strong Data Filtering for Fast Instruction-Tuning},
  author    = {Li, Ming and Zhang, Yong and He, Shwai and Li, Zhitao and Zhao, Hongyu and Wang, Jianzong and Cheng, Ning and Zhou, Tianyi},
  booktitle = {Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics (ACL)},
  year      = {2024}
}""",
    "diverse_evol": """@article{wu2023diverseevol,
  title   = {Self-Evolved Diverse Data Sampling for Efficient Instruction Tuning},
  author  = {Wu, Shengguang and Lu, Keming and Xu, Benfeng and Lin, Junyang and Su, Qi and Zhou, Chang},
  journal = {arXiv preprint arXiv:2311.08182},
  year    = {2023}
}""",
    "ds_weight": """@article{jiang2024importance,
  title   = {Importance Weighting Can Help Large Language Models Self-Improve},
  author  = {Jiang, Chunyang and Chan, Chi-Min and Xue, Wei and Liu, Qifeng and Guo, Yike},
  journal = {arXiv preprint arXiv:2408.09849},
  year    = {2024}
}""",
    "trl": """@misc{vonwerra2020trl,
  title        = {{TRL}: Transformer Reinforcement Learning},
  author       = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\\'e}dec, Quentin},
  year         = {2020},
  howpublished = {\\url{https://github.com/huggingface/trl}}
}""",
}

# Words in scoring.preset / selection.rule that mean a method whose paper should be cited.
_METHOD_WORDS = {
    "superfiltering": ("superfilter",),
    "diverse_evol": ("diverse", "kcenter", "k-center", "k_center"),
    "ds_weight": ("dsweight", "ds_weight", "ds-weight", "importance"),
}


# ----------------------------------------------------------------------------------------------
# Dataset card


def write_dataset_card(run_dir: Path, *, repo_id: str | None = None, license: str | None = None) -> Path:
    """Render ``RUN/README.md`` (and its charts under ``RUN/images/``) from run.json and the Parquet files.

    ``repo_id`` is used in the loading snippets (default: the one `srt-hf push` recorded, else a
    placeholder); ``license`` overrides the source license recorded in run.json.
    """
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    meta = read_meta(run_dir) if paths.meta.is_file() else {}
    source = _as_dict(meta.get("source"), "name")
    repo_id = repo_id or _as_dict(meta.get("hub"), "repo_id").get("repo_id")
    license = license or source.get("license")

    files = [_describe_file(run_dir, name, rel, text) for name, rel, text in DATA_CONFIGS if (run_dir / rel).is_file()]
    docs = column_docs(meta)
    for f in files:
        for column in f["columns"]:
            column["description"] = docs.get(column["name"], "")
    counts = _counts(meta, files)
    largest = max([f["rows"] for f in files] + [0])
    metadata: dict[str, Any] = {
        "license": license or "other",
        "task_categories": ["text-generation"],
        "size_categories": [size_category(largest)],
        "tags": [*BASE_TAGS, "ifd", "data-selection", "instruction-tuning"]
        + (["synthetic"] if meta.get("kind", "recycle") == "recycle" else []),
        "pretty_name": meta.get("pretty_name") or (repo_id or run_dir.resolve().name).split("/")[-1],
        "configs": [
            {"config_name": f["config"], "data_files": [{"split": "train", "path": f["path"]}], **({"default": True} if i == 0 else {})}
            for i, f in enumerate(files)
        ],
    }
    if _looks_like_hub_id(source.get("name")):
        metadata["source_datasets"] = [source["name"]]
    if source.get("language"):
        metadata["language"] = source["language"]

    charts = _write_histograms(run_dir, meta)
    context = {
        "card_data": _yaml(metadata, "dataset"),
        "title": metadata["pretty_name"],
        "kind": meta.get("kind", "recycle"),
        "repo_id": repo_id,
        "load_id": repo_id or "path/to/" + run_dir.resolve().name,
        "license": license,
        "source": source,
        **_provenance(meta),
        "prompts": dict(meta.get("prompts") or {}),
        "settings": _settings(meta),
        "counts": counts,
        "reasons": dict(meta.get("reasons") or {}),
        "files": files,
        "charts": charts,
        "version": meta.get("srt_hf_version", __version__),
        "created": meta.get("created"),
        "citations": [CITATIONS[k] for k in methods_used(meta)],
    }
    paths.card.write_text(_render(DATASET_TEMPLATE, context), encoding="utf-8")
    return paths.card


def _settings(meta: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) rows of the teacher / student / scoring / selection settings beyond their name."""
    rows = []
    for section, key in (("teacher", "model"), ("student", "model"), ("scoring", "preset"), ("selection", "rule")):
        for name, value in _as_dict(meta.get(section), key).items():
            if name != key and value is not None:
                rows.append((f"{section} `{name}`", value))
    return rows


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket of ``n`` rows."""
    edges = [(10**3, "1K"), (10**4, "10K"), (10**5, "100K"), (10**6, "1M"), (10**7, "10M"), (10**8, "100M"),
             (10**9, "1B"), (10**10, "10B"), (10**11, "100B"), (10**12, "1T")]
    if n < edges[0][0]:
        return "n<1K"
    for (_, lo), (hi_n, hi) in zip(edges, edges[1:]):
        if n < hi_n:
            return f"{lo}<n<{hi}"
    return "n>1T"


def methods_used(meta: Mapping[str, Any], *, training: bool = False) -> list[str]:
    """Citation keys for what a run did: SRT and IFD always, the rest from run.json."""
    keys = ["srt", "ifd"]
    if meta.get("kind", "recycle") == "recycle":
        keys.append("reflection_tuning")
    text = " ".join(
        str(v) for v in (_as_dict(meta.get("scoring"), "preset").get("preset"), _as_dict(meta.get("selection"), "rule").get("rule"))
        if v
    ).lower()
    for key, words in _METHOD_WORDS.items():
        if any(w in text for w in words):
            keys.append(key)
    keys += [m for m in meta.get("methods") or [] if m in CITATIONS]
    if training:
        keys.append("trl")
    return list(dict.fromkeys(keys))


def _describe_file(run_dir: Path, config: str, rel: str, text: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    meta = pq.read_metadata(run_dir / rel)
    columns = [{"name": f.name, "type": _type_name(f.type)} for f in meta.schema.to_arrow_schema()]
    return {"config": config, "path": rel, "rows": meta.num_rows, "description": text, "columns": columns}


def _type_name(t) -> str:
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = t.value_type
        if pa.types.is_struct(inner) and {inner.field(i).name for i in range(inner.num_fields)} >= {"role", "content"}:
            return "messages"
        return f"list[{_type_name(inner)}]"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    return str(t)


def _counts(meta: Mapping[str, Any], files: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict(meta.get("counts") or {})
    if not counts:
        by_config = {f["config"]: f["rows"] for f in files}
        for stage, config in (("input", "rows"), ("selected", "selected"), ("sft", "sft")):
            if config in by_config:
                counts[stage] = by_config[config]
    return counts


def column_docs(meta: Mapping[str, Any]) -> dict[str, str]:
    return {**COLUMN_DOCS, **{str(k): str(v) for k, v in (meta.get("columns") or {}).items()}}


def _write_histograms(run_dir: Path, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One before → after histogram per score; a score whose columns are missing is skipped."""
    specs = dict(meta.get("histograms") or {})
    for score in ("ifd", "rifd"):
        specs.setdefault(score, {"before": f"{ROWS}:{score}", "after": f"{SELECTED}:{score}"})
    charts = []
    for score, spec in specs.items():
        before, after = _read_scores(run_dir, spec.get("before")), _read_scores(run_dir, spec.get("after"))
        if before is None or after is None or not (len(before) or len(after)):
            continue
        rel = f"{IMAGES}/{score}_histogram.png"
        (run_dir / IMAGES).mkdir(exist_ok=True)
        label = {"ifd": "IFD", "rifd": "r-IFD"}.get(score, score)
        histogram_png(run_dir / rel, label, before, after, threshold=1.0)
        charts.append({"score": label, "path": rel, "before": _stats(before), "after": _stats(after),
                       "before_source": spec.get("before"), "after_source": spec.get("after")})
    return charts


def _read_scores(run_dir: Path, spec: str | None) -> np.ndarray | None:
    if not spec or ":" not in spec:
        return None
    import pyarrow.parquet as pq

    rel, column = spec.rsplit(":", 1)
    path = run_dir / rel
    if not path.is_file() or column not in pq.read_schema(path).names:
        return None
    values = pq.read_table(path, columns=[column]).column(column).to_numpy(zero_copy_only=False)
    values = np.asarray([np.nan if v is None else v for v in values], dtype=float) if values.dtype == object else values.astype(float)
    return values[np.isfinite(values)]


def _stats(values: np.ndarray) -> dict[str, Any]:
    if not len(values):
        return {"n": 0, "mean": None, "median": None, "below_1": None}
    return {"n": int(len(values)), "mean": float(values.mean()), "median": float(np.median(values)),
            "below_1": float((values < 1).mean())}


# ----------------------------------------------------------------------------------------------
# Model card


def training_hyperparameters(args, num_processes: int = 1) -> dict[str, Any]:
    """The hyperparameters worth reporting, from an ``SFTConfig`` / ``TrainingArguments``."""
    per_device = args.per_device_train_batch_size
    accumulation = args.gradient_accumulation_steps
    warmup = args.warmup_steps
    out = {
        "learning_rate": args.learning_rate,
        "epochs": args.num_train_epochs if (args.max_steps or -1) <= 0 else None,
        "max_steps": args.max_steps if (args.max_steps or -1) > 0 else None,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "num_processes": num_processes,
        "global_batch_size": per_device * accumulation * num_processes,
        "max_length": getattr(args, "max_length", None),
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup": f"{warmup:g} of the steps" if 0 < warmup < 1 else f"{warmup:g} steps",
        "weight_decay": args.weight_decay,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "completion_only_loss": getattr(args, "completion_only_loss", None),
        "packing": getattr(args, "packing", None),
        "seed": args.seed,
    }
    return {k: v for k, v in out.items() if v is not None}


def loss_history(log_history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The logged losses of a ``Trainer`` (``trainer.state.log_history``), one dict per logging step."""
    keys = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm")
    return [{k: e[k] for k in keys if k in e} for e in log_history if "loss" in e or "eval_loss" in e]


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
    base_model = base_model if _looks_like_hub_id(base_model) else None
    if dataset_repo_id is None and _looks_like_hub_id(dataset):
        dataset_repo_id = dataset
    if dataset_repo_id is None:
        dataset_repo_id = _as_dict(meta.get("hub"), "repo_id").get("repo_id")
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
        "card_data": _yaml(metadata, "model"),
        "model_name": name,
        "repo_id": repo_id,
        "use_id": repo_id or str(output_dir),
        "base_model": base_model,
        "base_model_source": base_model_source,
        "dataset": dataset,
        "dataset_repo_id": dataset_repo_id,
        "license": license,
        "kind": meta.get("kind"),
        "source": _as_dict(meta.get("source"), "name"),
        **_provenance(meta),
        "counts": dict(meta.get("counts") or {}),
        "has_run": bool(meta),
        "hyperparameters": dict(hyperparameters),
        "chart": chart,
        "final_loss": losses[-1][1] if losses else None,
        "versions": _versions(),
        "citations": [CITATIONS[k] for k in (methods_used(meta, training=True) if meta else ["srt", "ifd", "trl"])],
    }
    card = output_dir / "README.md"
    card.write_text(_render(MODEL_TEMPLATE, context), encoding="utf-8")
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


# ----------------------------------------------------------------------------------------------
# Rendering helpers


def _render(template: str, context: Mapping[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in TEMPLATE_DIRS]),
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.ChainableUndefined,
    )
    env.filters["num"] = _fmt_number
    env.filters["fence"] = _fence
    env.filters["cell"] = _cell
    return env.get_template(template).render(**context)


def _yaml(metadata: Mapping[str, Any], kind: str) -> str:
    """The YAML metadata block, through huggingface_hub's card data classes (which validate it)."""
    from huggingface_hub import DatasetCardData, ModelCardData

    cls = DatasetCardData if kind == "dataset" else ModelCardData
    return cls(**metadata).to_yaml()


def _fmt_number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fence(text: str) -> str:
    """A Markdown code fence long enough for ``text`` (prompts may contain backticks)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(value: Any) -> str:
    """A value safe inside a Markdown table cell."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (str, bool, int)):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _as_dict(value: Any, key: str) -> dict[str, Any]:
    """run.json values may be a dict or a bare string (taken as ``{key: value}``)."""
    if isinstance(value, Mapping):
        return dict(value)
    return {key: value} if value not in (None, "") else {}


def _provenance(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Teacher, student, scoring and selection of a run, as the card templates read them."""
    return {
        "teacher": _as_dict(meta.get("teacher"), "model"),
        "student": _as_dict(meta.get("student"), "model"),
        "scoring": _as_dict(meta.get("scoring"), "preset"),
        "selection": _as_dict(meta.get("selection"), "rule"),
    }


def _looks_like_hub_id(name: Any) -> bool:
    """True for ``owner/name`` or ``name`` strings that are not existing local paths."""
    if not isinstance(name, str) or not name or Path(name).exists() or os.path.isabs(name):
        return False
    return re.fullmatch(r"(?:[\w.-]+/)?[\w.-]+", name) is not None and not name.endswith((".parquet", ".json", ".jsonl", ".csv"))
