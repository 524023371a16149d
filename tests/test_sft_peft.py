"""LoRA / QLoRA in recipes/sft.py and srt_hf.train: the settings reach the model and the trainer as in TRL's
scripts, a LoRA run saves only the adapter (which loads with peft and merges), the one-GPU configs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from test_sft_recipe import (
    ACCELERATE_CONFIGS,
    CONFIGS,
    ROOT,
    load_recipe,
    make_run,
    parse,
    tiny_args,
)

from srt_hf import train as srt_train
from srt_hf.errors import ConfigError

LORA = ("--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bitsandbytes 4-bit in bfloat16, Liger kernels)")


@pytest.fixture
def bitsandbytes_found(monkeypatch):
    """The dependency check sees bitsandbytes even where it is not installed: these tests read loading arguments only."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real(name, *a))


def test_lora_saves_only_the_adapter_which_loads_with_peft_and_merges(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = load_recipe()
    trainer = recipe.train(*tiny_args(tmp_path, make_run(tmp_path / "run"), tiny_model_dir, *LORA, "--learning_rate", "1e-2"))
    out = tmp_path / "model"
    assert trainer.state.global_step == 2
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not list(out.glob("model*.safetensors"))  # the adapter only, not the full weights
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {"q_proj", "v_proj"}

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_q = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = PeftModel.from_pretrained(base, out).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        adapted = model(ids).logits
        merged = model.merge_and_unload()
        after = merged(ids).logits
    assert torch.allclose(adapted, after, atol=1e-5)
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base_q)  # training moved the adapter


def test_4bit_settings_reach_the_model_loading_arguments(tmp_path, tiny_model_dir, monkeypatch, bitsandbytes_found):
    """--load_in_4bit becomes a BitsAndBytesConfig and the k-bit device map in from_pretrained's arguments (no GPU)."""
    from trl.trainer import sft_trainer

    seen = {}

    class Loaded(Exception):
        pass

    def fake_create(model_id, **kwargs):
        seen.update(kwargs, model_id=model_id)
        raise Loaded

    monkeypatch.setattr(sft_trainer, "create_model_from_path", fake_create)
    monkeypatch.setattr(srt_train, "kbit_device_map", lambda: {"": 0})  # what a GPU process gets
    args = tiny_args(tmp_path, make_run(tmp_path / "run"), tiny_model_dir, *LORA, "--load_in_4bit", "true",
                     "--dtype", "bfloat16", "--use_bnb_nested_quant", "true", "--attn_implementation", "sdpa")
    with pytest.raises(Loaded):
        load_recipe().train(*args)
    quant = seen["quantization_config"]
    assert quant.load_in_4bit and not quant.load_in_8bit and quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16 and quant.bnb_4bit_use_double_quant is True
    assert seen["device_map"] == {"": 0} and seen["dtype"] in ("bfloat16", torch.bfloat16) and seen["attn_implementation"] == "sdpa"
    assert seen["model_id"] == str(tiny_model_dir)

    _, _, model_args = parse("--model_name_or_path", "x", "--use_cpu", "true", "--use_peft", "true", "--load_in_8bit", "true")
    assert srt_train.model_loading(model_args).quantization_config.load_in_8bit


def test_kbit_device_map_puts_the_model_on_this_process_gpu(monkeypatch):
    import accelerate

    assert srt_train.kbit_device_map() is None or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(accelerate, "PartialState", lambda: type("State", (), {"local_process_index": 3})())
    assert srt_train.kbit_device_map() == {"": 3}


def test_lora_settings_become_a_lora_config():
    _, _, model_args = parse("--model_name_or_path", "x", "--use_cpu", "true", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
                             "--lora_dropout", "0.1", "--lora_target_modules", "all-linear")
    loading = srt_train.model_loading(model_args)
    assert loading.quantization_config is None and "device_map" not in loading.init_kwargs
    peft = loading.peft_config
    assert (peft.r, peft.lora_alpha, peft.lora_dropout, peft.target_modules, peft.task_type) == (8, 16, 0.1, "all-linear", "CAUSAL_LM")
    _, _, plain = parse("--model_name_or_path", "x", "--use_cpu", "true")
    assert srt_train.model_loading(plain).peft_config is None


def test_quantization_without_lora_or_without_the_packages_fails_early(monkeypatch):
    import importlib.util

    _, _, quant_only = parse("--model_name_or_path", "x", "--use_cpu", "true", "--load_in_4bit", "true")
    with pytest.raises(ConfigError, match="use_peft"):
        srt_train.model_loading(quant_only)
    _, _, qlora = parse("--model_name_or_path", "x", "--use_cpu", "true", "--use_peft", "true", "--load_in_4bit", "true")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install "srt-hf\[peft\]"'):
        srt_train.model_loading(qlora)


def test_liger_falls_back_with_one_warning_without_cuda(caplog):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine keeps Liger on")
    config = srt_train.sft_config("unused", use_liger_kernel=True)
    with caplog.at_level(logging.WARNING, logger="srt_hf.train"):
        srt_train.liger_fallback(config)
    assert config.use_liger_kernel is False and "no CUDA GPU" in caplog.text


def test_dataset_name_is_trl_spelling_of_dataset(tmp_path, capsys):
    script, _, _ = parse("--dataset_name", "runs/x", "--model_name_or_path", "x", "--use_cpu", "true")
    assert script.dataset == "runs/x"
    script, _, _ = parse("--dataset", "runs/x", "--dataset_name", "runs/x", "--model_name_or_path", "x", "--use_cpu", "true")
    assert script.dataset == "runs/x"
    code = load_recipe().main(["--dataset", "a", "--dataset_name", "b", "--model_name_or_path", "x", "--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert code == 2 and "disagree" in capsys.readouterr().err


def test_qlora_config_for_one_gpu_has_the_paper_data_settings(bitsandbytes_found):
    script, training, model = parse("--config", str(CONFIGS / "llama3_8b_srt_qlora.yaml"), "--use_cpu", "true")
    accelerate = yaml.safe_load((ACCELERATE_CONFIGS / "single_gpu.yaml").read_text())
    assert accelerate["num_processes"] == 1 and accelerate["distributed_type"] == "NO"
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps * accelerate["num_processes"] == 128
    assert (training.num_train_epochs, training.max_length, training.warmup_steps) == (3, 2048, 0.03)
    assert training.lr_scheduler_type.value == "cosine" and training.use_liger_kernel and training.bf16
    assert model.use_peft and model.load_in_4bit and model.bnb_4bit_quant_type == "nf4" and model.lora_target_modules == "all-linear"
    assert "8B" in model.model_name_or_path and script.dataset == "runs/alpaca-srt"
    assert (ROOT / training.chat_template_path).is_file()
    loading = srt_train.model_loading(model)
    assert loading.quantization_config.load_in_4bit and loading.peft_config.r == 64
    for name in ("smollm2_srt.yaml", "llama2_7b_srt.yaml"):
        assert parse("--config", str(CONFIGS / name), "--use_cpu", "true")[1].use_liger_kernel, name
    demo = parse("--config", str(CONFIGS / "smollm2_srt_lora_demo.yaml"))
    assert demo[2].use_peft and demo[1].use_cpu and not demo[1].use_liger_kernel


@pytest.mark.slow
def test_qlora_trains_4bit_on_cpu_where_bitsandbytes_can(tmp_path, tiny_model_dir):
    """bitsandbytes >= 0.45 quantizes on the CPU too: the base layers are 4-bit, only the adapter is saved."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    args = tiny_args(tmp_path, make_run(tmp_path / "run"), tiny_model_dir, *LORA, "--load_in_4bit", "true")
    try:
        trainer = load_recipe().train(*args)
    except (RuntimeError, NotImplementedError) as err:  # an older bitsandbytes without its CPU backend
        pytest.skip(f"bitsandbytes cannot quantize on this CPU: {err}")
    layer = trainer.model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit)
    assert (Path(args[1].output_dir) / "adapter_model.safetensors").is_file()


@needs_gpu
def test_qlora_with_liger_on_a_gpu(tmp_path, tiny_model_dir):
    """The one-GPU QLoRA path as configured: bf16, 4-bit NF4 base, Liger kernels."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("liger_kernel")
    args = tiny_args(tmp_path, make_run(tmp_path / "run"), tiny_model_dir, *LORA, "--load_in_4bit", "true",
                     "--dtype", "bfloat16", "--use_cpu", "false", "--bf16", "true", "--use_liger_kernel", "true")
    trainer = load_recipe().train(*args)
    assert trainer.args.use_liger_kernel and trainer.model.is_loaded_in_4bit
    assert (Path(args[1].output_dir) / "adapter_model.safetensors").is_file()
