"""Supervised fine-tuning on srt-hf data with TRL, with the srt-hf model card.

    # CPU demo: the embedded SmolLM2-135M-Instruct on the demo data (configs are found by name or path)
    srt-hf sft --config smollm2_srt_demo
    accelerate launch --cpu recipes/sft.py --config recipes/configs/smollm2_srt_demo.yaml   # the same, from a clone
    accelerate launch --cpu -m srt_hf.recipes.sft --config smollm2_srt_demo                  # the same, as a module
    # two CPU processes (gloo)
    srt-hf sft --config smollm2_srt_demo --accelerate_config ddp --num_processes 2 --mixed_precision no

    # GPUs: the paper's hyperparameters (lr 2e-5, 3 epochs, global batch 128, max length 2048, warmup 0.03, cosine)
    srt-hf sft --config smollm2_srt --accelerate_config ddp
    srt-hf sft --config llama2_7b_srt --accelerate_config zero3

    # One GPU: QLoRA (4-bit base + LoRA adapters) of an 8B student; the adapter is what is saved
    srt-hf sft --config llama3_8b_srt_qlora --accelerate_config single_gpu

    # LoRA on the CPU demo, then the pairwise comparison against the base model put on the card
    srt-hf sft --config smollm2_srt_lora_demo --compare_with default

``srt-hf sft ARGS`` is ``accelerate launch [launch options] -m srt_hf.recipes.sft ARGS``: options this recipe
does not know (``--num_processes``, ``--mixed_precision`` …) go to ``accelerate launch``, and
``--accelerate_config NAME`` picks a packaged accelerate config (:mod:`srt_hf.recipes`).
Any setting can be overridden on the command line (``--dataset runs/alpaca-srt --max_steps 10``).
``--dataset`` (or TRL's spelling, ``--dataset_name``) takes a run folder of `srt-hf recycle` / `srt-hf select` (its ``sft/train.parquet``),
a data file (Parquet/JSONL/JSON/CSV), a Hub dataset id or ``demo`` (the demo set shipped with srt_hf); data in another format (alpaca, messages,
plain prompt/completion) is converted to conversational prompt/completion, so the loss covers the
completion only. ``--push_to_hub`` uploads the output folder, with the srt-hf model card in place of
TRL's, through :func:`srt_hf.hub.upload`. LoRA / QLoRA: TRL's ``--use_peft``, ``--lora_r`` …, ``--load_in_4bit`` /
``--load_in_8bit`` (see :func:`srt_hf.train.model_loading`; needs ``pip install "srt-hf[peft]"``).
``--compare_with MODEL`` runs ``srt-hf compare`` after training (the trained model against MODEL, judged by
``--compare_judge``) and puts the result on the model card before any upload.

TRL turns bf16 on by default, which fails without a GPU: CPU configs set ``bf16: false`` and
``use_cpu: true``. ``accelerate launch --cpu`` starts one process; for several CPU processes (gloo)
use a multi-process launcher, e.g. ``--config_file recipes/accelerate_configs/ddp.yaml --num_processes 2
--mixed_precision no`` with ``use_cpu: true`` in the recipe config.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FILE_LOADERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
COMPARE_DIR = "compare"
DEMO_LABEL = "srt_hf/data/demo_alpaca.jsonl"  # how the card names `--dataset demo`
# Never uploaded: checkpoints, and the comparison's response cache and lock.
NOT_UPLOADED = ["checkpoint-*", "checkpoint-*/**", f"{COMPARE_DIR}/cache.sqlite*", f"{COMPARE_DIR}/.srt-hf.lock"]


@dataclass
class ScriptArguments:
    """What to train on, and what the model card should say about it."""

    dataset: str = field(
        default="",
        metadata={"help": "Training data: a srt-hf run folder (uses its sft/train.parquet), a data file "
                          "(.parquet/.jsonl/.json/.csv), a Hub dataset id or 'demo' (the demo set shipped with srt_hf)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "TRL's name for `dataset` (either may be set; both must then agree)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of a Hub dataset (srt-hf datasets: sft, selected, rows)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (Hub datasets and save_to_disk folders)."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on when eval_strategy is not 'no' (Hub datasets and save_to_disk folders)."}
    )
    dataset_repo_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the training data for the model card's `datasets`. Default: the dataset itself "
                          "if it is a Hub id, else the repo id recorded in run.json by `srt-hf push`."},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id recorded as `base_model` in the model card. Default: srt_hf.models.hub_id(model_name_or_path); "
                          "a local model directory without a recorded Hub id leaves it out."},
    )
    license: str | None = field(
        default=None, metadata={"help": "License of the trained model for its card (e.g. apache-2.0, llama2). Default: the base model's when known, else 'other'."}
    )
    compare_with: str | None = field(
        default=None,
        metadata={"help": "After training, compare the trained model pairwise with this model (usually the base model: a Hub id, "
                          "a folder, 'default' or an http(s) URL) and put the result on the model card. Default: no comparison."},
    )
    compare_judge: str = field(
        default="default",
        metadata={"help": "Judge of --compare_with: an OpenAI-compatible URL (comma-separated for several) or a local model "
                          "('default' is the embedded SmolLM2-135M, a smoke test, not a real judge)."},
    )
    compare_judge_model: str | None = field(default=None, metadata={"help": "Model name the judge server serves (vLLM, transformers serve)."})
    compare_prompts: str = field(default="builtin", metadata={"help": "Test prompts of --compare_with: 'builtin' or a JSONL/JSON/Parquet/CSV file."})
    compare_limit: int | None = field(default=None, metadata={"help": "Use only the first N test prompts (a quick look)."})
    compare_max_new_tokens: int = field(default=512, metadata={"help": "Most tokens each model may write per answer."})

    def __post_init__(self) -> None:
        if self.dataset_name and self.dataset and self.dataset_name != self.dataset:
            from srt_hf.errors import ConfigError

            raise ConfigError(f"`dataset` ({self.dataset!r}) and `dataset_name` ({self.dataset_name!r}) disagree: set only one")
        self.dataset = self.dataset or self.dataset_name or ""
        self.dataset_name = self.dataset or None


# ----------------------------------------------------------------------------------------------
# Data


def load_training_data(script_args: ScriptArguments):
    """``(train, eval or None, run_meta)``: the data as conversational prompt/completion records."""
    import datasets

    from srt_hf.dataio import demo_path
    from srt_hf.errors import ConfigError
    from srt_hf.formats import prompt_completion_dataset
    from srt_hf.runs import META, SFT, read_meta

    source = script_args.dataset
    if not source:
        raise ConfigError("no training data: set `dataset` (--dataset or --dataset_name) to a run folder, a data file or a Hub dataset id")
    path = demo_path() if source == "demo" else Path(source)
    run_dir: Path | None = None
    test = None
    if path.is_dir() and ((path / SFT).is_file() or (path / META).is_file()):
        run_dir = path
        if not (path / SFT).is_file():
            raise ConfigError(f"the run folder {path} has no {SFT}: the run has not finished (rerun `srt-hf recycle` / `srt-hf select`)")
        train = datasets.load_dataset("parquet", data_files=str(path / SFT), split="train")
    elif path.is_file():
        loader = _FILE_LOADERS.get(path.suffix.lower())
        if loader is None:
            raise ConfigError(f"cannot read {path}: set `dataset` to a {'/'.join(_FILE_LOADERS)} file, a run folder or a Hub id")
        train = datasets.load_dataset(loader, data_files=str(path), split="train")
        run_dir = next((p for p in (path.parent, path.parent.parent) if (p / META).is_file()), None)
    else:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        else:
            try:
                loaded = datasets.load_dataset(source, name=script_args.dataset_config)
            except Exception as err:  # noqa: BLE001 - datasets raises many types; all mean "cannot load"
                raise ConfigError(
                    f"could not load the dataset {source!r}: {err}. Set `dataset` to a run folder, a data file or a Hub id "
                    "(check the id, `dataset_config`, your network and HF_TOKEN)"
                ) from None
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        train = _split(loaded, script_args.dataset_train_split, "dataset_train_split")
        if script_args.dataset_test_split:
            test = _split(loaded, script_args.dataset_test_split, "dataset_test_split")
    meta = read_meta(run_dir) if run_dir is not None and (run_dir / META).is_file() else _hub_run_meta(source, path)
    return prompt_completion_dataset(train), (prompt_completion_dataset(test) if test is not None else None), meta


def _split(loaded, split: str, setting: str):
    from srt_hf.errors import ConfigError

    if split not in loaded:
        raise ConfigError(f"the dataset has no split {split!r} (it has {list(loaded)}): set `{setting}`")
    return loaded[split]


def _hub_run_meta(source: str, path: Path) -> dict[str, Any]:
    """run.json of a dataset pushed by `srt-hf push`, when the Hub can be reached; else ``{}``."""
    if path.exists() or source.count("/") != 1:
        return {}
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(source, "run.json", repo_type="dataset")).read_text())
    except Exception:  # noqa: BLE001 - provenance is optional: offline, missing file, private repo
        return {}


# ----------------------------------------------------------------------------------------------
# Training


def train(script_args: ScriptArguments, training_args, model_args):
    """Fine-tune ``model_args.model_name_or_path`` on ``script_args.dataset``; returns the trainer.

    Saves the model, tokenizer, loss history and model card to ``training_args.output_dir`` and, with
    ``push_to_hub``, uploads that folder (checkpoints excluded) to ``hub_model_id``.
    """
    from srt_hf import hub
    from srt_hf.errors import ConfigError
    from srt_hf.locks import output_lock
    from srt_hf.recipes import packaged_file

    if training_args.chat_template_path:  # a repository path in a config also runs from the installed package
        training_args.chat_template_path = packaged_file(training_args.chat_template_path)
    push = bool(training_args.push_to_hub)
    if push:
        hub.check_online()  # fail now, not after training
    training_args.push_to_hub = False  # uploads go through srt_hf.hub.upload, with our card
    repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
    if getattr(training_args, "completion_only_loss", None) is False:
        raise ConfigError("completion_only_loss is false: srt-hf recipes train on the completion only; remove the setting or set it to true")

    with output_lock(Path(training_args.output_dir), folder=True, command="recipes/sft.py",
                     then="rerun this command", elsewhere="--output_dir"):  # one run per output_dir
        trainer = _train_locked(script_args, training_args, model_args, push=push, repo_id=repo_id)
    training_args.push_to_hub = trainer.args.push_to_hub = push
    return trainer


def _train_locked(script_args: ScriptArguments, training_args, model_args, *, push: bool, repo_id: str):
    from srt_hf import hub, models
    from srt_hf.errors import ConfigError
    from srt_hf.locks import LOCK_NAME
    from srt_hf.train import model_loading, train_sft

    train_ds, eval_ds, run_meta = load_training_data(script_args)
    if training_args.eval_strategy != "no" and eval_ds is None:
        raise ConfigError("eval_strategy is set but there is no eval data: set `dataset_test_split` or `eval_strategy: no`")

    loading = model_loading(model_args, training_args.model_init_kwargs)
    card = {
        "base_model": script_args.base_model_id or models.hub_id(model_args.model_name_or_path),
        # `demo` is the file shipped with srt_hf, not a Hub dataset of that name
        "dataset": DEMO_LABEL if script_args.dataset == "demo" else script_args.dataset,
        "dataset_repo_id": script_args.dataset_repo_id,
        "run_meta": run_meta,
        "repo_id": repo_id if push or training_args.hub_model_id else None,
        "license": script_args.license,
    }
    compare_config = None
    if script_args.compare_with:  # bad settings fail before training
        base = script_args.compare_with in (model_args.model_name_or_path, card["base_model"])
        compare_config = _compare_config(script_args, model_a_label=card["repo_id"] or Path(training_args.output_dir).name,
                                         model_b_label=card["base_model"] if base else None)
    trainer = train_sft(
        model_args.model_name_or_path, train_ds, args=training_args, eval_dataset=eval_ds,
        revision=model_args.model_revision, card=card, **loading.trainer_kwargs(),
    )
    if trainer.is_world_process_zero():
        trainer.accelerator.print(f"srt-hf sft: model and card saved to {training_args.output_dir}")
        if compare_config is not None:
            compare_after_training(script_args.compare_with, training_args.output_dir, compare_config, trainer)
        if push:
            url = hub.upload(
                training_args.output_dir, repo_id, repo_type="model", private=training_args.hub_private_repo,
                revision=training_args.hub_revision, ignore_patterns=[*NOT_UPLOADED, LOCK_NAME],
                delete_patterns=hub.REPLACE_ALL,  # a re-push leaves exactly this folder's files
                commit_message="srt-hf sft: model, tokenizer and card",
            )
            trainer.accelerator.print(f"srt-hf sft: pushed to {url}")
    return trainer


def _compare_config(script_args: ScriptArguments, **labels: str | None):
    from srt_hf.compare import CompareConfig

    return CompareConfig(
        judge=script_args.compare_judge, judge_model=script_args.compare_judge_model, prompts=script_args.compare_prompts,
        limit=script_args.compare_limit, max_new_tokens=script_args.compare_max_new_tokens, **labels,
    )


def compare_after_training(other: str, output_dir: str, config, trainer=None) -> None:
    """``srt-hf compare OUTPUT_DIR OTHER`` into ``OUTPUT_DIR/compare``, then the card shows the result."""
    from srt_hf.compare import compare, print_summary
    from srt_hf.train import add_comparison_to_card

    if trainer is not None:  # free the training copy before the comparison loads the saved model
        trainer.accelerator.free_memory()
        trainer.model = trainer.model_wrapped = trainer.optimizer = None
        _free_memory()
    result = compare(output_dir, other, Path(output_dir) / COMPARE_DIR, config)
    print_summary(result)
    add_comparison_to_card(output_dir, result)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_parser(prog: str | None = None):
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((ScriptArguments, SFTConfig, ModelConfig), prog=prog)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from srt_hf.errors import SrtHfError
    from srt_hf.recipes import resolve_config_argument

    try:
        argv = resolve_config_argument(sys.argv[1:] if argv is None else argv)
        script_args, training_args, model_args = make_parser(prog).parse_args_and_config(argv)
        trainer = train(script_args, training_args, model_args)
    except SrtHfError as err:
        print(f"srt-hf sft: error: {err}", file=sys.stderr)
        return 2
    # No barrier here: the other processes may finish while the main one compares and uploads.
    end_training(trainer)
    return 0


def end_training(trainer) -> None:
    """Drop the process-wrapped model, then finish the trackers and destroy the process group.

    A DDP wrapper's reducer holds the gloo group. Freed after the group is destroyed, it is the group's last
    reference, and its destructor joins gloo's worker threads while holding the GIL: a worker that needs the GIL
    to free a finished all-gather's tensors then waits for ever (4 of 45 CPU launches hung so at exit).
    """
    import gc

    if trainer.model_wrapped is not trainer.model:
        trainer.model_wrapped = trainer.model
        trainer.accelerator.free_memory()  # accelerate's references to the prepared (wrapped) model
        gc.collect()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish trackers, destroy the process group
        trainer.end()


if __name__ == "__main__":
    sys.exit(main())
