"""srt_hf: Selective Reflection-Tuning for the Hugging Face ecosystem.

The public names load on first use, so ``import srt_hf`` (and the CLI) start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/srt-hf/srt-hf"  # the project's own page (pyproject [project.urls]); cards link it

_EXPORTS = {
    "errors": ("ConfigError", "InputError", "ModelUnavailableError", "SrtHfError"),
    "formats": ("ColumnMapping",),
    "student": ("IFDScorer", "ScoringConfig"),
    "teachers": ("EndpointTeacher", "GenerationConfig", "LocalTeacher", "load_teacher"),
    "reflection": ("InstructionReflection", "ReflectionConfig", "ResponseReflection"),
    "pipeline": ("RecycleConfig", "RecycleResult", "recycle"),
    "selection": ("select_top_ifd", "top_ifd_decisions"),
    "diversity": ("EmbedConfig", "Embedder", "kcenter_greedy"),
    "dsweight": ("DSWeightConfig", "SRT_HF_VARIANT", "ds_weight_filter", "extract_answer_is", "extract_last_number", "self_consistency"),
    "cards": ("write_dataset_card", "write_model_card"),
    "hub": ("push_dataset", "push_space", "upload"),
    "report": ("write_report",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'srt_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
