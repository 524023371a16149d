"""Supervised fine-tuning with TRL and the srt-hf model card: the one training function of srt_hf.

    trainer = train_sft("default", train_ds, "outputs/round-1", max_steps=100)

``recipes/sft.py`` (the user-facing TRL script) and the recipes that train in a loop (DiverseEvol rounds,
self-improvement) all train through :func:`train_sft`. ``train_ds`` holds conversational ``prompt`` /
``completion`` records, so TRL's ``SFTTrainer`` computes the loss on the completion only. The model,
its tokenizer, ``loss_history.json``, ``loss_curve.png`` and the srt-hf model card (in place of TRL's)
are saved to the output directory. Without a GPU the run goes on the CPU in float32 (TRL would turn
bf16 on and fail).

LoRA / QLoRA: :func:`model_loading` turns TRL's ``ModelConfig`` (``use_peft``, ``lora_*``, ``load_in_4bit`` /
``load_in_8bit``) into what :func:`train_sft` passes on, the way TRL's own scripts do: a ``BitsAndBytesConfig``
for the trainer, the k-bit device map (each process's own GPU) in the loading arguments, and a ``LoraConfig``::

    loading = model_loading(model_args)
    trainer = train_sft(model_args.model_name_or_path, train_ds, args=sft_args, **loading.trainer_kwargs())

A LoRA run saves the adapter only (``adapter_model.safetensors`` + ``adapter_config.json``).

Hub kernels: training uses them when they can be had and otherwise loads plain layers with one line
(:func:`srt_hf.models.use_hub_kernels`, ``SRT_HF_HUB_KERNELS``); an explicit ``use_kernels`` in
``model_init_kwargs`` wins.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from . import models
from .errors import ConfigError, InputError

logger = logging.getLogger(__name__)

PEFT_INSTALL = 'pip install "srt-hf[peft]"'
LIGER_INSTALL = 'pip install "srt-hf[liger]"'


def sft_config(output_dir: str | Path, **overrides: Any):
    """An ``SFTConfig`` with quiet, CPU-safe defaults for internal runs; ``overrides`` win."""
    import torch
    from trl import SFTConfig

    defaults: dict[str, Any] = {"report_to": "none", "save_strategy": "no", "logging_steps": 1, "seed": 42}
    if not torch.cuda.is_available():
        defaults.update(use_cpu=True, bf16=False)
    return SFTConfig(output_dir=str(output_dir), **{**defaults, **overrides})


@dataclass
class ModelLoading:
    """How the student is loaded for training: ``from_pretrained`` arguments, quantization and adapter."""

    init_kwargs: dict[str, Any] = field(default_factory=dict)
    quantization_config: Any = None  # transformers.BitsAndBytesConfig, handed to the trainer (not in SFTConfig)
    peft_config: Any = None  # peft.LoraConfig

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"quantization_config": self.quantization_config, "peft_config": self.peft_config,
                "model_init_kwargs": self.init_kwargs}


def model_loading(model_args, extra_init_kwargs: dict[str, Any] | None = None) -> ModelLoading:
    """The loading settings of a TRL ``ModelConfig``; ``extra_init_kwargs`` (``SFTConfig.model_init_kwargs``) win.

    Fails early, naming the setting, when 4/8-bit is asked without LoRA (a quantized model cannot be trained
    itself) or when peft / bitsandbytes is missing.
    """
    quantized = bool(getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False))
    use_peft = bool(getattr(model_args, "use_peft", False))
    if quantized and not use_peft:
        bits = 4 if model_args.load_in_4bit else 8
        raise ConfigError(
            f"load_in_{bits}bit is set without use_peft: a {bits}-bit model cannot be fine-tuned itself. Set "
            "`use_peft: true` (QLoRA: LoRA adapters on the quantized base) or drop the quantization setting"
        )
    if use_peft:
        require("peft", PEFT_INSTALL, "use_peft (LoRA)")
    if quantized:
        require("bitsandbytes", PEFT_INSTALL, "load_in_4bit / load_in_8bit (QLoRA)")
    init = {"dtype": getattr(model_args, "dtype", None), "attn_implementation": getattr(model_args, "attn_implementation", None)}
    quantization = peft = None
    if quantized:
        from trl import get_quantization_config

        quantization = get_quantization_config(model_args)
        init["device_map"] = kbit_device_map()
    if use_peft:
        from trl import get_peft_config

        peft = get_peft_config(model_args)
    init = {k: v for k, v in {**init, **(extra_init_kwargs or {})}.items() if v is not None}
    return ModelLoading(init, quantization, peft)


def kbit_device_map() -> dict[str, int] | None:
    """A quantized model sits whole on this process's GPU (``{"": local rank}``); None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


def require(module: str, install: str, setting: str) -> None:
    """Raise :class:`ConfigError` with the install line when an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{setting} needs the `{module}` package, which is not installed: `{install}`")


def liger_fallback(config) -> None:
    """Liger kernels need a CUDA GPU and the liger-kernel package: without them, say so once and train without."""
    import torch

    if not getattr(config, "use_liger_kernel", False):
        return
    missing = ("no CUDA GPU" if not torch.cuda.is_available() else
               f"liger-kernel is not installed (`{LIGER_INSTALL}`)" if importlib.util.find_spec("liger_kernel") is None else None)
    if missing:
        logger.warning("srt-hf: use_liger_kernel is set but %s; training without Liger kernels", missing)
        config.use_liger_kernel = False


def train_sft(
    model_name_or_path: str | None,
    train_dataset,
    output_dir: str | Path | None = None,
    *,
    args=None,
    eval_dataset=None,
    revision: str | None = None,
    peft_config=None,
    quantization_config=None,
    model_init_kwargs: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    **overrides: Any,
):
    """Fine-tune ``model_name_or_path`` on conversational prompt/completion data; returns the trainer.

    ``args``: an ``SFTConfig`` to start from (e.g. parsed by a recipe); it is copied, never changed,
    and ``output_dir`` plus ``overrides`` are applied to the copy. Without ``args``, :func:`sft_config`.
    ``card``: keyword arguments of :func:`srt_hf.cards.write_model_card` (dataset, run_meta, repo_id…);
    the base model defaults to ``model_name_or_path``. ``peft_config`` / ``quantization_config`` /
    ``model_init_kwargs``: see :func:`model_loading` (``model_init_kwargs`` is merged over the config's).
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
    liger_fallback(config)
    path, extra = models.resolve(model_name_or_path)
    init = {**extra, **({"revision": revision} if revision else {}), **(config.model_init_kwargs or {}), **(model_init_kwargs or {})}
    if init.get("dtype") is None and not torch.cuda.is_available():
        init["dtype"] = torch.float32
    if "use_kernels" not in init:
        device = "cuda" if torch.cuda.is_available() and not config.use_cpu else "cpu"
        init["use_kernels"] = models.use_hub_kernels(path, training=True, device=device, config_kwargs=init)
    config.model_init_kwargs = init
    card = {
        "base_model": models.hub_id(model_name_or_path), "base_model_source": models.display_name(model_name_or_path),
        "dataset": f"{len(train_dataset)} prompt/completion rows passed in memory", **(card or {}),
    }
    trainer = _trainer_class()(
        model=path, args=config, train_dataset=train_dataset.select_columns(["prompt", "completion"]),
        eval_dataset=eval_dataset.select_columns(["prompt", "completion"]) if eval_dataset is not None else None,
        processing_class=models.load_tokenizer(model_name_or_path, **({"revision": revision} if revision else {})),
        peft_config=peft_config, quantization_config=quantization_config, card=card,
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


CARD_INPUTS, LOSS_HISTORY = "srt_hf_card.json", "loss_history.json"


def write_card(trainer, output_dir: str | Path, **card: Any) -> Path:
    """``loss_history.json``, ``loss_curve.png`` and ``README.md`` of a trained model in ``output_dir``.

    What the card is rendered from is kept in ``srt_hf_card.json``, so a later step (``srt-hf compare --card``)
    can render it again with more on it.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / LOSS_HISTORY).write_text(json.dumps(loss_history(trainer.state.log_history), indent=2))
    inputs = {
        **card, "hyperparameters": training_hyperparameters(trainer.args, trainer.accelerator.num_processes),
        "adapter": adapter_info(trainer.model),
    }
    (output_dir / CARD_INPUTS).write_text(json.dumps(inputs, indent=2, ensure_ascii=False, default=str))
    return render_card(output_dir)


def render_card(output_dir: str | Path, comparison: dict[str, Any] | None = None) -> Path:
    """Render ``README.md`` from ``srt_hf_card.json``, ``loss_history.json`` and the comparison in
    ``compare/summary.json`` (when there is one), then validate it with huggingface_hub."""
    from .cards import validate_model_card, write_model_card
    from .compare import SUMMARY

    output_dir = Path(output_dir)
    inputs = _card_inputs(output_dir)
    history_file = output_dir / LOSS_HISTORY
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    if comparison is None and (output_dir / "compare" / SUMMARY).is_file():
        comparison = json.loads((output_dir / "compare" / SUMMARY).read_text())
    card = write_model_card(output_dir, history=history, comparison=_on_card(comparison, output_dir), **inputs)
    validate_model_card(card)
    return card


def add_comparison_to_card(model_dir: str | Path, result) -> Path:
    """Put a :class:`srt_hf.compare.ComparisonResult` on the card of a model trained by :func:`train_sft`.

    A comparison written outside ``model_dir`` is copied into ``model_dir/compare`` (without its cache), so the
    folder that is uploaded holds the table and chart the card shows.
    """
    import shutil

    from .compare import CHART, SUMMARY, TABLE

    model_dir = Path(model_dir)
    _card_inputs(model_dir)
    target = model_dir / "compare"
    if Path(result.out).resolve() != target.resolve():
        target.mkdir(parents=True, exist_ok=True)
        for name in (TABLE, SUMMARY, CHART):
            if (Path(result.out) / name).is_file():
                shutil.copy2(Path(result.out) / name, target / name)
    return render_card(model_dir, result.as_dict())


def _on_card(comparison: dict[str, Any] | None, output_dir: Path) -> dict[str, Any] | None:
    """The comparison with the paths the card links to (relative to the model folder)."""
    if not comparison:
        return None
    files = comparison.get("files") or {}
    return {**comparison, "chart_path": f"compare/{files.get('chart', 'comparison.png')}",
            "table_path": f"compare/{files.get('table', 'compare.parquet')}"}


def _card_inputs(output_dir: Path) -> dict[str, Any]:
    path = output_dir / CARD_INPUTS
    if not path.is_file():
        raise ConfigError(f"{output_dir} has no {CARD_INPUTS}: it was not trained by `srt-hf sft` (srt_hf.train), so "
                          "srt-hf cannot render its card; compare without --card")
    return json.loads(path.read_text())


def adapter_info(model) -> dict[str, Any] | None:
    """What the card says about a PEFT adapter (None for a full fine-tune): method, rank, alpha, targets, quantization."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    config = next(iter(configs.values()))
    peft_type = str(getattr(config.peft_type, "value", config.peft_type))
    targets = config.target_modules
    info: dict[str, Any] = {"peft_type": peft_type, "r": getattr(config, "r", None), "lora_alpha": getattr(config, "lora_alpha", None),
                            "lora_dropout": getattr(config, "lora_dropout", None),
                            "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
                            "use_dora": getattr(config, "use_dora", False), "use_rslora": getattr(config, "use_rslora", False)}
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant
    if isinstance(quant, dict) and (quant.get("load_in_4bit") or quant.get("load_in_8bit")):
        info["quantization"] = (f"4-bit {quant.get('bnb_4bit_quant_type', 'nf4')}" + (" (double quantization)" if quant.get("bnb_4bit_use_double_quant") else "")
                                if quant.get("load_in_4bit") else "8-bit")
    method = "DoRA" if info["use_dora"] else peft_type.replace("LORA", "LoRA")
    info["method"] = f"Q{method}" if "quantization" in info and method == "LoRA" else method
    return {k: v for k, v in info.items() if v is not None}


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
    """The ``main`` of a looping recipe: parse (recipe arguments, TRL ``SFTConfig``; ``--config`` a file or a
    packaged config's name), run, and print an srt_hf error as one line (exit 2) instead of a traceback."""
    from .errors import SrtHfError
    from .recipes import resolve_config_argument

    try:
        args, training_args = parser.parse_args_and_config(resolve_config_argument(sys.argv[1:] if argv is None else argv))
        run(args, training_args)
    except SrtHfError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    return 0


def recipe_entry_points(name: str, run: Callable[[Any, Any], Any], arguments: type) -> tuple[Callable[[], Any], Callable[..., int]]:
    """``make_parser`` and ``main`` of a looping recipe whose options are ``arguments`` and TRL's ``SFTConfig``."""

    def make_parser(prog: str | None = None):
        from trl import SFTConfig, TrlParser

        return TrlParser((arguments, SFTConfig), prog=prog)

    def main(argv: list[str] | None = None, prog: str | None = None) -> int:
        return recipe_main(name, run, make_parser(prog), argv)

    return make_parser, main


def recipe_options(config: type, names: Mapping[str, str]) -> type:
    """A dataclass of some of ``config``'s fields as recipe options (``names``: option -> field of ``config``).

    Each option takes its type, default and help from ``config``, so a recipe and the library cannot disagree on
    them; a recipe's arguments dataclass inherits from the result.
    """
    import dataclasses
    import typing

    fields, hints = {f.name: f for f in dataclasses.fields(config)}, typing.get_type_hints(config)
    spec = []
    for option, name in names.items():
        f = fields[name]
        default = (dict(default=f.default) if f.default is not dataclasses.MISSING else dict(default_factory=f.default_factory))
        spec.append((option, hints[name], dataclasses.field(metadata=f.metadata, **default)))
    return dataclasses.make_dataclass(f"{config.__name__}Options", spec)
