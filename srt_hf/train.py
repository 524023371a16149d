"""Supervised fine-tuning with TRL and the srt-hf model card: the one training function of srt_hf.

    trainer = train_sft("default", train_ds, "outputs/round-1", max_steps=100)

``recipes/sft.py`` (the user-facing TRL script) and the recipes that train in a loop (DiverseEvol rounds,
self-improvement) all train through :func:`train_sft`. ``train_ds`` holds conversational ``prompt`` /
``completion`` records, so TRL's ``SFTTrainer`` computes the loss on the completion only. The model,
its tokenizer, ``loss_history.json``, ``loss_curve.png`` and the srt-hf model card (in place of TRL's)
are saved to the output directory. Without a GPU the run goes on the CPU in float32 (TRL would turn
bf16 on and fail).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

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


def train_sft(
    model_name_or_path: str | None,
    train_dataset,
    output_dir: str | Path | None = None,
    *,
    args=None,
    eval_dataset=None,
    revision: str | None = None,
    peft_config=None,
    card: dict[str, Any] | None = None,
    **overrides: Any,
):
    """Fine-tune ``model_name_or_path`` on conversational prompt/completion data; returns the trainer.

    ``args``: an ``SFTConfig`` to start from (e.g. parsed by a recipe); it is copied, never changed,
    and ``output_dir`` plus ``overrides`` are applied to the copy. Without ``args``, :func:`sft_config`.
    ``card``: keyword arguments of :func:`srt_hf.cards.write_model_card` (dataset, run_meta, repo_id…);
    the base model defaults to ``model_name_or_path``.
    """
    import torch

    for name, data in (("training", train_dataset), ("evaluation", eval_dataset)):
        if data is not None and not {"prompt", "completion"} <= set(data.column_names):
            raise InputError(
                f"the {name} data has no prompt/completion columns (it has {data.column_names})",
                fix="convert it with srt_hf.formats.to_prompt_completion or srt_hf.runs.write_sft",
            )
    if not len(train_dataset):
        raise InputError("the training data has no rows", fix="select at least one row before training")
    if args is None:
        config = sft_config(output_dir or "outputs/sft", **overrides)
    else:
        config = copy.deepcopy(args)
        if output_dir is not None:
            config.output_dir = str(output_dir)
        for key, value in overrides.items():
            setattr(config, key, value)
    path, extra = models.resolve(model_name_or_path)
    init = {**extra, **({"revision": revision} if revision else {}), **(config.model_init_kwargs or {})}
    if init.get("dtype") is None and not torch.cuda.is_available():
        init["dtype"] = torch.float32
    config.model_init_kwargs = init
    card = {
        "base_model": models.hub_id(model_name_or_path), "base_model_source": models.display_name(model_name_or_path),
        "dataset": f"{len(train_dataset)} prompt/completion rows passed in memory", **(card or {}),
    }
    trainer = _trainer_class()(
        model=path, args=config, train_dataset=train_dataset.select_columns(["prompt", "completion"]),
        eval_dataset=eval_dataset.select_columns(["prompt", "completion"]) if eval_dataset is not None else None,
        processing_class=models.load_tokenizer(model_name_or_path, **({"revision": revision} if revision else {})),
        peft_config=peft_config, card=card,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.create_model_card()
    return trainer


def _trainer_class():
    from trl import SFTTrainer

    class SRTSFTTrainer(SFTTrainer):
        """``SFTTrainer`` that writes the srt-hf model card and loss history instead of TRL's card."""

        def __init__(self, *args, card: dict[str, Any], **kwargs):
            self._card = card
            super().__init__(*args, **kwargs)

        def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None) -> None:
            if self.is_world_process_zero():
                write_card(self, self.args.output_dir, **self._card)

    return SRTSFTTrainer


def write_card(trainer, output_dir: str | Path, **card: Any) -> Path:
    """``loss_history.json``, ``loss_curve.png`` and ``README.md`` of a trained model in ``output_dir``."""
    from .cards import write_model_card

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    history = loss_history(trainer.state.log_history)
    (output_dir / "loss_history.json").write_text(json.dumps(history, indent=2))
    return write_model_card(
        output_dir, hyperparameters=training_hyperparameters(trainer.args, trainer.accelerator.num_processes),
        history=history, **card,
    )


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


def recipe_main(name: str, run: Callable[[Any, Any], Any], parser, argv: list[str] | None = None) -> int:
    """The ``main`` of a looping recipe: parse (recipe arguments, TRL ``SFTConfig``), run, and print an
    srt_hf error as one line (exit 2) instead of a traceback."""
    from .errors import SrtHfError

    args, training_args = parser.parse_args_and_config(argv)
    try:
        run(args, training_args)
    except SrtHfError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    return 0
