"""Hub kernels are a choice, never a failure (issue 20).

transformers 5 loads models with ``use_kernels=True`` by default; on CUDA it then fetches
``kernels-community/rotary``, and offline that raises in ``from_pretrained``. The CPU has no hub kernel in
transformers' mapping, so these tests give the CPU the same rotary entry CUDA has and put the Hub offline with an
empty kernels cache: the real ``kernels`` code then fails exactly as it does on an offline GPU machine.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from test_sft_recipe import check_model_folder, load_recipe, make_run, tiny_args

from srt_hf import models
from srt_hf.errors import ConfigError

NOTICE = models.HUB_KERNELS_ENV


@pytest.fixture
def offline_rotary_on_cpu(monkeypatch, tmp_path):
    """The CPU needs ``kernels-community/rotary`` v2 (as CUDA does); the Hub is offline and the kernel not cached."""
    import huggingface_hub.constants
    from kernels._internals.layer.globals import _KERNEL_MAPPING
    from transformers.integrations import hub_kernels

    mapping = copy.deepcopy(hub_kernels.get_kernel_mapping_transformers())
    mapping["rotary_pos_emb"]["cpu"] = dict(mapping["rotary_pos_emb"]["cuda"])
    monkeypatch.setattr(hub_kernels, "_KERNEL_MAPPING_CACHE", mapping)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path / "kernels-cache"))
    monkeypatch.delenv(NOTICE, raising=False)
    monkeypatch.setattr(models, "_hub_kernel_notices", set())
    token = _KERNEL_MAPPING.set(copy.deepcopy(_KERNEL_MAPPING.get()))  # kernels registers mappings globally
    yield
    _KERNEL_MAPPING.reset(token)


def notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "srt_hf.models" and NOTICE in r.getMessage()]


def test_the_simulation_fails_like_an_offline_gpu(offline_rotary_on_cpu, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="kernels-community/rotary.*offline mode"):
        AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # transformers' default: use_kernels=True


def test_training_falls_back_with_one_line_and_saves(offline_rotary_on_cpu, tiny_model_dir, tmp_path, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING, logger="srt_hf.models"):
        trainer = load_recipe().train(*tiny_args(tmp_path, make_run(tmp_path / "run"), tiny_model_dir))
    lines = notices(caplog)
    assert len(lines) == 1, lines
    assert "kernels-community/rotary" in lines[0] and f"{NOTICE}=off" in lines[0] and "\n" not in lines[0]
    assert trainer.state.global_step == 2 and not trainer.model.use_kernels
    monkeypatch.setenv("USE_HUB_KERNELS", "0")  # the folder check loads with plain from_pretrained
    check_model_folder(tmp_path / "model", steps=2, processes=1)


def test_scorer_keeps_plain_layers_without_asking(offline_rotary_on_cpu, tiny_model_dir, caplog, monkeypatch):
    monkeypatch.setattr(models, "_hub_kernels_problem", lambda *a: pytest.fail("the scorer must not probe by default"))
    with caplog.at_level(logging.WARNING, logger="srt_hf.models"):
        model = models.load_causal_lm(tiny_model_dir, device="cpu")
    assert not notices(caplog) and not model.use_kernels
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[:2] == (1, 3)


def test_on_asks_everywhere_and_still_falls_back(offline_rotary_on_cpu, tiny_model_dir, caplog, monkeypatch):
    monkeypatch.setenv(NOTICE, "on")
    with caplog.at_level(logging.WARNING, logger="srt_hf.models"):
        first = models.load_causal_lm(tiny_model_dir, device="cpu")
        models.load_causal_lm(tiny_model_dir, device="cpu")  # the same reason is said once per process
    assert len(notices(caplog)) == 1 and not first.use_kernels
    assert first(torch.tensor([[1, 2, 3]])).logits.shape[:2] == (1, 3)


def test_off_never_probes(offline_rotary_on_cpu, tiny_model_dir, monkeypatch):
    monkeypatch.setenv(NOTICE, "off")
    monkeypatch.setattr(models, "_hub_kernels_problem", lambda *a: pytest.fail("off must not probe"))
    assert models.use_hub_kernels(str(tiny_model_dir), training=True, device="cuda") is False


def test_transformers_switch_means_off(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(NOTICE, "on")
    monkeypatch.setenv("USE_HUB_KERNELS", "0")
    assert models.hub_kernels_setting() == "off"


def test_training_uses_them_when_they_can_be_had(tiny_model_dir, monkeypatch):
    monkeypatch.delenv(NOTICE, raising=False)  # the CPU needs no hub kernel: nothing to fetch, nothing missing
    assert models.use_hub_kernels(str(tiny_model_dir), training=True, device="cpu") is True
    assert models.use_hub_kernels(str(tiny_model_dir), training=False, device="cpu") is False


def test_a_bad_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(NOTICE, "maybe")
    with pytest.raises(ConfigError, match=f"{NOTICE}='maybe'.*auto, on, off"):
        models.hub_kernels_setting()
