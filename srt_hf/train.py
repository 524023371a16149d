"""A small SFT step for the recipes that train in a loop (DiverseEvol rounds, self-improvement).

    out = train_sft("default", train_ds, "outputs/round-1", max_steps=100)

``train_ds`` holds conversational ``prompt`` / ``completion`` records (what :func:`srt_hf.runs.write_sft`
writes); TRL's ``SFTTrainer`` then computes the loss on the completion only. The model is saved with
its tokenizer to ``output_dir``, whose path is returned. Without a GPU the run is put on the CPU in
float32 (``use_cpu=True``, ``bf16=False``; TRL would otherwise turn bf16 on and fail). The
user-facing training script with cards and Hub upload is ``recipes/sft.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from . import models
from .errors import InputError


def sft_config(output_dir: str | Path, **overrides: Any):
    """An ``SFTConfig`` with quiet, CPU-safe defaults for internal runs; ``overrides`` win."""
    import torch
    from trl import SFTConfig

    defaults: dict[str, Any] = {"report_to": "none", "save_strategy": "no", "logging_steps": 1, "seed": 42}
    if not torch.cuda.is_available():
        defaults.update(use_cpu=True, bf16=False)
    return SFTConfig(output_dir=str(output_dir), **{**defaults, **overrides})


def train_sft(model_name_or_path: str | None, train_dataset, output_dir: str | Path, *, args=None, **overrides: Any) -> str:
    """Fine-tune ``model_name_or_path`` on ``train_dataset`` (conversational prompt/completion); returns ``output_dir``.

    ``args``: an ``SFTConfig`` to start from (e.g. parsed by a recipe); it is copied, never changed,
    and ``output_dir`` plus ``overrides`` are applied to the copy. Without ``args``, :func:`sft_config`.
    """
    import torch
    from trl import SFTTrainer

    if not {"prompt", "completion"} <= set(train_dataset.column_names):
        raise InputError(
            f"the training data has no prompt/completion columns (it has {train_dataset.column_names})",
            fix="convert it with srt_hf.formats.to_prompt_completion or srt_hf.runs.write_sft",
        )
    if not len(train_dataset):
        raise InputError("the training data has no rows", fix="select at least one row before training")
    if args is None:
        config = sft_config(output_dir, **overrides)
    else:
        config = copy.deepcopy(args)
        config.output_dir = str(output_dir)
        for key, value in overrides.items():
            setattr(config, key, value)
    path, extra = models.resolve(model_name_or_path)
    init = {**extra, **(config.model_init_kwargs or {})}
    if "dtype" not in init and not torch.cuda.is_available():
        init["dtype"] = torch.float32
    config.model_init_kwargs = init
    trainer = SFTTrainer(
        model=path,
        args=config,
        train_dataset=train_dataset.select_columns(["prompt", "completion"]),
        processing_class=models.load_tokenizer(model_name_or_path),
    )
    trainer.train()
    trainer.save_model(config.output_dir)
    return config.output_dir
