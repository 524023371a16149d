"""The recipes in the package: `srt-hf sft|diverse-evol|self-improve`, configs found by name, the wheel's contents,
and one tiny training run through `srt-hf sft` (accelerate launch -m srt_hf.recipes.sft) on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_cards import make_run
from test_sft_recipe import BASE_ID, check_model_folder

from srt_hf import cli
from srt_hf.commands import recipes as recipe_commands
from srt_hf.errors import ConfigError
from srt_hf.recipes import ACCELERATE_CONFIGS, CONFIGS, find_config, packaged_file, resolve_config_argument

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_configs_are_the_repositorys():
    assert sorted(p.name for p in CONFIGS.iterdir()) == sorted(p.name for p in (ROOT / "recipes" / "configs").iterdir())
    assert sorted(p.name for p in ACCELERATE_CONFIGS.iterdir()) == sorted(
        p.name for p in (ROOT / "recipes" / "accelerate_configs").iterdir())


def test_configs_are_found_by_name_or_path(tmp_path):
    assert find_config("smollm2_srt_demo") == CONFIGS / "smollm2_srt_demo.yaml"
    assert find_config("smollm2_srt_demo.yaml") == CONFIGS / "smollm2_srt_demo.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("max_steps: 1\n")
    assert find_config(str(own)) == own
    with pytest.raises(ConfigError, match="'smollm2_typo'.*smollm2_srt_demo"):
        find_config("smollm2_typo")
    argv = resolve_config_argument(["--max_steps", "3", "--config", "diverse_evol_demo"])
    assert argv == ["--max_steps", "3", "--config", str(CONFIGS / "diverse_evol_demo.yaml")]
    assert resolve_config_argument(["--config=self_improve_demo"]) == [f"--config={CONFIGS / 'self_improve_demo.yaml'}"]
    # a repository path inside a config falls back to the packaged file of that name
    assert packaged_file("elsewhere/vicuna_chat_template.jinja") == str(CONFIGS / "vicuna_chat_template.jinja")
    assert packaged_file(str(own)) == str(own) and packaged_file("not/there.jinja") == "not/there.jinja"


def test_sft_help_lists_the_recipes_options(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["sft", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: srt-hf sft") and "--model_name_or_path" in out and "--compare_with" in out


def test_sft_splits_launch_options_from_the_recipes(monkeypatch, tmp_path):
    """As `trl sft`: unknown options go to `accelerate launch`, --accelerate_config names a packaged config."""
    launched = []
    monkeypatch.setattr(recipe_commands, "launch", lambda *a: launched.append(a) or 0)
    argv = ["sft", "--config", "smollm2_srt_demo", "--accelerate_config", "ddp", "--num_processes", "2",
            "--max-steps", "3", "--output_dir", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    (module, launch_args, script_args), = launched
    assert module == "srt_hf.recipes.sft"
    assert launch_args == ["--config_file", str(ACCELERATE_CONFIGS / "ddp.yaml"), "--num_processes", "2"]
    assert script_args == ["--config", str(CONFIGS / "smollm2_srt_demo.yaml"), "--max-steps", "3",
                           "--output_dir", str(tmp_path / "out")]

    assert cli.main(["sft", "--config", "no_such_config"]) == 2  # one line, before any launch
    assert len(launched) == 1


def test_loop_recipes_run_in_process(monkeypatch):
    from srt_hf.recipes import diverse_evol

    seen = []
    monkeypatch.setattr(diverse_evol, "main", lambda argv, prog: seen.append((argv, prog)) or 0)
    assert cli.main(["diverse-evol", "--config", "diverse_evol_demo", "--rounds", "1"]) == 0
    assert seen == [(["--config", str(CONFIGS / "diverse_evol_demo.yaml"), "--rounds", "1"], "srt-hf diverse-evol")]


@pytest.mark.slow
def test_wheel_holds_the_recipes_and_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    (wheel,) = tmp_path.glob("srt_hf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"srt_hf/recipes/{n}.py" for n in ("__init__", "sft", "diverse_evol", "self_improve")}
    expected |= {f"srt_hf/recipes/configs/{p.name}" for p in (ROOT / "recipes" / "configs").iterdir()}
    expected |= {f"srt_hf/recipes/accelerate_configs/{p.name}" for p in (ROOT / "recipes" / "accelerate_configs").iterdir()}
    assert expected <= names, expected - names


@pytest.mark.slow
def test_a_tiny_sft_through_srt_hf_sft(tmp_path, tiny_model_dir):
    """`srt-hf sft` → accelerate launch -m srt_hf.recipes.sft → a trained model folder with our card."""
    run = make_run(tmp_path / "run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "srt_hf", "sft", "--dataset", str(run), "--model_name_or_path", str(tiny_model_dir),
               "--base_model_id", BASE_ID, "--output_dir", str(tmp_path / "model"), "--use_cpu", "true", "--bf16", "false",
               "--activation_checkpointing", "false", "--max_steps", "2", "--per_device_train_batch_size", "2",
               "--max_length", "128", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
               "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "srt-hf sft: model and card saved to" in result.stdout
    check_model_folder(tmp_path / "model", steps=2, processes=1)



def test_training_on_the_packaged_demo_set(tmp_path, tiny_model_dir):
    """`--dataset demo` trains on the demo set in the package; the card does not take `demo` for a Hub dataset."""
    from huggingface_hub import ModelCard
    from test_sft_recipe import load_recipe, tiny_args

    trainer = load_recipe().train(*tiny_args(tmp_path, "demo", tiny_model_dir))
    assert trainer.state.global_step == 2 and len(trainer.train_dataset) == 20
    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert "datasets" not in card.data.to_dict() and "huggingface.co/datasets/demo" not in card.text
    assert "srt_hf/data/demo_alpaca.jsonl" in card.text
