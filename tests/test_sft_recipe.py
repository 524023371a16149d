"""recipes/sft.py: configs, data loading, training on CPU (in process and under accelerate with 2 processes),
the model card replacing TRL's, and publishing through srt_hf.hub.upload."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_cards import DATASET_CARD_KEYS, MODEL_CARD_KEYS, make_run, no_network  # noqa: F401  (fixture re-used)

from srt_hf import hub, runs
from srt_hf.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "sft.py"
CONFIGS = ROOT / "recipes" / "configs"
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate_configs"
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def load_recipe():
    if "srt_recipe_sft" not in sys.modules:
        spec = importlib.util.spec_from_file_location("srt_recipe_sft", RECIPE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["srt_recipe_sft"] = module  # dataclass type hints resolve through sys.modules
        spec.loader.exec_module(module)
    return sys.modules["srt_recipe_sft"]


def parse(*argv: str):
    return load_recipe().make_parser().parse_args_and_config(list(argv))


def tiny_args(tmp_path: Path, dataset: Path, model: Path, *extra: str):
    return parse(
        "--dataset", str(dataset), "--model_name_or_path", str(model), "--base_model_id", BASE_ID,
        "--output_dir", str(tmp_path / "model"), "--use_cpu", "true", "--bf16", "false",
        "--activation_checkpointing", "false", "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--max_length", "128", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", *extra,
    )


# ----------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("config, accelerate_config", [("smollm2_srt.yaml", "ddp.yaml"), ("llama2_7b_srt.yaml", "zero3.yaml")])
def test_gpu_configs_hold_the_paper_hyperparameters(config, accelerate_config):
    script, training, model = parse("--config", str(CONFIGS / config), "--use_cpu", "true")  # bf16 needs a GPU or use_cpu
    processes = yaml.safe_load((ACCELERATE_CONFIGS / accelerate_config).read_text())["num_processes"]
    assert training.learning_rate == 2e-5
    assert training.num_train_epochs == 3
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps * processes == 128
    assert training.max_length == 2048
    assert training.warmup_steps == 0.03
    assert training.lr_scheduler_type.value == "cosine"
    assert training.completion_only_loss is True and training.bf16 is True
    assert script.dataset == "runs/alpaca-srt" and model.dtype == "bfloat16"
    if config.startswith("llama2"):
        assert (ROOT / training.chat_template_path).is_file() and script.license == "llama2"


def test_demo_config_runs_on_cpu():
    script, training, model = parse("--config", str(CONFIGS / "smollm2_srt_demo.yaml"))
    assert model.model_name_or_path == "default"
    assert training.use_cpu is True and training.bf16 is False
    assert script.dataset == "demo"  # the demo set in the package: the config runs from any folder
    train, _, _ = load_recipe().load_training_data(script)
    assert len(train) == 20 and train.column_names == ["prompt", "completion"]


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}
    for name, kind in kinds.items():
        config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
        assert config.distributed_type.value == kind, name
    zero3 = load_config_from_file(str(ACCELERATE_CONFIGS / "zero3.yaml"))
    assert zero3.deepspeed_config["zero_stage"] == 3 and zero3.deepspeed_config["zero3_save_16bit_model"] is True


def test_vicuna_template_prompt_is_a_prefix_of_the_conversation(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (CONFIGS / "vicuna_chat_template.jinja").read_text()
    prompt = [{"role": "user", "content": "Name a prime."}]
    full = [*prompt, {"role": "assistant", "content": "Seven."}]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(full, tokenize=False)
    assert prompt_text.endswith("USER: Name a prime. ASSISTANT:") and full_text.startswith(prompt_text)
    assert full_text.endswith("Seven." + tokenizer.eos_token)


# ----------------------------------------------------------------------------------------------
# Data


def test_data_formats_become_conversational_prompt_completion():
    import datasets

    from srt_hf.formats import prompt_completion_dataset

    alpaca = datasets.Dataset.from_dict({"instruction": ["Add 2 and 3."], "input": ["numbers"], "output": ["5"]})
    row = prompt_completion_dataset(alpaca)[0]
    assert row == {"prompt": [{"role": "user", "content": "Add 2 and 3.\n\nnumbers"}],
                   "completion": [{"role": "assistant", "content": "5"}]}
    chat = datasets.Dataset.from_dict({"messages": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello"}]]})
    row = prompt_completion_dataset(chat)[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"] and row["completion"][0]["content"] == "Hello"
    broken = datasets.Dataset.from_dict({"instruction": ["ok", None], "output": ["fine", "x"]})
    with pytest.raises(InputError, match="row 1"):
        prompt_completion_dataset(broken)


def test_training_data_from_a_run_folder_or_its_file(tmp_path):
    recipe = load_recipe()
    run = make_run(tmp_path / "run")
    for dataset in (run, run / runs.SFT):
        train, test, meta = recipe.load_training_data(recipe.ScriptArguments(dataset=str(dataset)))
        assert train.column_names == ["prompt", "completion"] and len(train) == 16 and test is None
        assert meta["teacher"]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    with pytest.raises(ConfigError, match="dataset"):
        recipe.load_training_data(recipe.ScriptArguments(dataset=""))
    (tmp_path / "unfinished").mkdir()
    runs.write_meta(tmp_path / "unfinished", {"kind": "recycle"})
    with pytest.raises(ConfigError, match="has not finished"):
        recipe.load_training_data(recipe.ScriptArguments(dataset=str(tmp_path / "unfinished")))


# ----------------------------------------------------------------------------------------------
# Training and publishing


def check_model_folder(folder: Path, *, steps: int, processes: int) -> None:
    """The folder loads with from_pretrained and carries our card, loss history and loss curve."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(folder).chat_template
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert set(data) <= MODEL_CARD_KEYS, set(data) - MODEL_CARD_KEYS
    assert data["base_model"] == BASE_ID and data["license"] == "apache-2.0"
    assert {"srt-hf", "reflection-tuning", "trl", "sft"} <= set(data["tags"])
    assert f"| num_processes | {processes} |" in card.text and f"| max_steps | {steps} |" in card.text
    assert "This model is a fine-tuned version of" not in card.text  # TRL's default card is replaced
    history = json.loads((folder / "loss_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, steps + 1))
    assert (folder / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_sft_then_both_folders_ready_to_push(tmp_path, tiny_model_dir, monkeypatch, hub_online):
    """Hand-made run folder → sft (2 steps, tiny, in process) → model card → both uploads (replaced)."""
    import datasets

    calls = []

    def fake_upload(folder, repo_id, *, repo_type, private=None, revision=None, allow_patterns=None,
                    ignore_patterns=None, delete_patterns=None, commit_message=None):
        folder = Path(folder)
        if repo_type == "model":
            check_model_folder(folder, steps=2, processes=1)
        else:
            assert len(datasets.load_dataset("parquet", data_files=str(folder / runs.SFT), split="train")) == 16
        assert delete_patterns == ["*"]  # a re-push leaves exactly this folder's files
        calls.append((repo_type, repo_id, folder, private, revision, ignore_patterns))
        return f"https://huggingface.co/{repo_id}"

    monkeypatch.setattr(hub, "upload", fake_upload)
    run = make_run(tmp_path / "alpaca-srt")
    hub.push_dataset(run, "me/alpaca-srt")

    recipe = load_recipe()
    script, training, model = tiny_args(tmp_path, run, tiny_model_dir, "--push_to_hub", "true",
                                        "--hub_model_id", "me/tiny-srt", "--hub_private_repo", "true")
    trainer = recipe.train(script, training, model)
    assert trainer.args.push_to_hub is True  # restored after our upload

    (_, ds_id, *_), (kind, repo_id, folder, private, revision, ignore) = calls
    assert (ds_id, kind, repo_id, folder, private, revision) == ("me/alpaca-srt", "model", "me/tiny-srt", tmp_path / "model", True, None)
    assert "checkpoint-*" in ignore
    card = (tmp_path / "model" / "README.md").read_text()
    assert "datasets:\n- me/alpaca-srt" in card  # the repo id `srt-hf push` recorded in run.json
    assert "meta-llama/Llama-3.1-8B-Instruct" in card and "| selected | 16 |" in card
    assert 'model="me/tiny-srt"' in card


def test_push_to_hub_offline_fails_before_training(tmp_path, tiny_model_dir, hub_offline):
    recipe = load_recipe()
    args = tiny_args(tmp_path, make_run(tmp_path / "run"), tiny_model_dir, "--push_to_hub", "true")
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE"):
        recipe.train(*args)
    assert not (tmp_path / "model" / "model.safetensors").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate(tmp_path, tiny_model_dir):
    """`accelerate launch` with 2 processes on CPU (torchrun, gloo) through ddp.yaml; a few steps of the tiny model."""
    run = make_run(tmp_path / "run")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": str(run), "model_name_or_path": str(tiny_model_dir), "base_model_id": BASE_ID,
        "output_dir": str(tmp_path / "model"), "use_cpu": True, "bf16": False, "activation_checkpointing": False,
        "max_steps": 2, "per_device_train_batch_size": 2, "max_length": 128, "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "ddp_find_unused_parameters": False,
    }))
    # GLOO_SOCKET_IFNAME: gloo binds to the address the host name resolves to unless told; loopback always connects.
    # PYTHONPATH: the script imports srt_hf; this checkout's, whatever else is installed.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / "ddp.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(_free_port()), str(RECIPE), "--config", str(config),
    ]
    # It takes ~15 s. A hang at exit (the recipe's end_training explains it) is a failure of the recipe, not luck.
    result = _run_killable(command, env, timeout=180, log=tmp_path / "launch")
    assert result.returncode == 0, result.stderr[-4000:]
    check_model_folder(tmp_path / "model", steps=2, processes=2)


def _run_killable(command: list[str], env: dict, timeout: float, log: Path) -> subprocess.CompletedProcess:
    """Run ``command`` with its output in files; on timeout kill it and every process below it, and fail.

    torchrun starts each worker in a session of its own, so killing the launcher's process group leaves them
    running; and a pipe they inherited would block the wait for them forever. Hence files, and the process tree.
    """
    import psutil

    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tree = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"hung for {timeout} s and was killed: {' '.join(command)}\n{err.read_text()[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out.read_text(), err.read_text())


def test_pipeline_end_to_end(tmp_path, tiny_model_dir, demo_path):
    """recycle (tiny) → select → sft (2 steps, tiny) → both cards → both folders ready to push, offline, on CPU."""
    import datasets
    from huggingface_hub import DatasetCard

    from srt_hf import cli
    from srt_hf.pipeline import recycle
    from srt_hf.teachers import GenerationConfig

    ds = datasets.load_dataset("json", data_files=str(demo_path), split="train").select(range(6))
    recycled, selected = tmp_path / "recycled", tmp_path / "selected"
    recycle(ds, teacher=str(tiny_model_dir), student=str(tiny_model_dir), out=recycled,
            generation=GenerationConfig(max_new_tokens=16, batch_size=6))
    assert cli.main(["select", str(recycled), "--top-n", "4", "--max-ifd", "inf", "--out", str(selected)]) == 0

    recipe = load_recipe()
    trainer = recipe.train(*tiny_args(tmp_path, selected, tiny_model_dir))
    assert trainer.state.global_step == 2
    for run in (recycled, selected):
        card = DatasetCard.load(hub.prepare_dataset_folder(run, tmp_path / "upload" / run.name, license="cc-by-nc-4.0") / "README.md")
        assert set(card.data.to_dict()) <= DATASET_CARD_KEYS
        loaded = datasets.load_dataset(str(tmp_path / "upload" / run.name), split="train", cache_dir=str(tmp_path / "hf"))
        assert len(loaded) == len(
            datasets.Dataset.from_parquet(str(run / runs.SFT)))
    check_model_folder(tmp_path / "model", steps=2, processes=1)
