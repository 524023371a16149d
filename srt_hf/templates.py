"""Scoring presets: the prompt templates and constants of the public IFD / reverse-IFD references.

Each preset reproduces one reference implementation per sample (docs/ARCHITECTURE.md):

* ``cherry`` — Cherry LLM (``data_analysis.py --mod cherry`` + ``data_by_IFD_vic.py``), alpaca template.
* ``reflection`` — Selective Reflection-Tuning (``selection_code/data_analysis.py``), vicuna or alpaca.
* ``superfiltering`` — Superfiltering (``code_ifd/data_analysis.py``), no template.
* ``chat`` — ours: the student's own chat template (no reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from .errors import ConfigError

PROMPT_TEMPLATES: dict[str, dict[str, str]] = {
    "alpaca": {
        "prompt_input": (
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
        ),
        "prompt_no_input": (
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:"
        ),
    },
    "vicuna": {
        "prompt_input": (
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions. USER: {instruction}\nInput:\n{input} ASSISTANT:"
        ),
        "prompt_no_input": (
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions. USER: {instruction} ASSISTANT:"
        ),
    },
    "none": {"prompt_input": "{instruction}\n{input}\n", "prompt_no_input": "{instruction}\n"},
}

# The reverse prompt of reverse IFD: the student guesses the instruction from the response.
REVERSE_INSTRUCTION = (
    "Below is the response to an instruction, please guess the corresponding instruction for the given response.\n"
    "{response}\nGenerate the instruction for the above response."
)

Ratio = Literal["loss", "perplexity"]


@dataclass(frozen=True)
class Preset:
    """Constants of one reference computation.

    ``direct_prefix``: text put before the response in the unconditioned (direct) pass; its tokens are
    masked. ``direct_budget_offset``: the direct text is truncated to ``max_length - prompt_len + offset``
    tokens. ``skip_over_length``: Cherry's rule that drops rows whose prompt + direct response exceed
    ``max_length`` (the others score the truncated text). ``methods``: the method keys of the cards'
    citations (:mod:`srt_hf.cards.citations`) that scoring with this preset uses.
    """

    name: str
    template: str
    max_length: int | None
    ratio: Ratio
    direct_prefix: str
    direct_budget_offset: int
    skip_over_length: bool
    rifd_default: bool
    templates: tuple[str, ...]
    methods: tuple[str, ...] = ("ifd",)


PRESETS: dict[str, Preset] = {
    "cherry": Preset("cherry", "alpaca", 512, "loss", "### Response:", 4, True, False, ("alpaca",)),
    "reflection": Preset("reflection", "vicuna", 2048, "perplexity", "", 1, False, True, ("vicuna", "alpaca")),
    "superfiltering": Preset("superfiltering", "none", 1024, "perplexity", "", 1, False, False, ("none",),
                             ("ifd", "superfiltering")),
    "chat": Preset("chat", "chat", None, "perplexity", "", 1, False, False, ("chat",)),
}


def get_preset(name: str, template: str | None = None) -> Preset:
    """The preset ``name``, with its template replaced by ``template`` when the preset allows it."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}. Set `preset` to one of {sorted(PRESETS)}.")
    preset = PRESETS[name]
    if template is None or template == preset.template:
        return preset
    if template not in preset.templates:
        raise ConfigError(
            f"Template {template!r} is not part of preset {name!r}. Set `template` to one of {list(preset.templates)}."
        )
    return Preset(**{**preset.__dict__, "template": template})


def preset_methods(scoring: Mapping[str, Any] | str | None) -> list[str]:
    """The method keys of a run's ``scoring`` record (run.json: a dict or the preset name); [] if no known preset."""
    name = scoring.get("preset") if isinstance(scoring, Mapping) else scoring
    preset = PRESETS.get(name) if isinstance(name, str) else None
    return list(preset.methods) if preset else []


def format_prompt(template: str, instruction: str, input: str) -> str:
    """The reference prompt: the ``prompt_input`` variant when ``input`` is non-empty."""
    variants = PROMPT_TEMPLATES[template]
    if input == "":
        return variants["prompt_no_input"].format_map({"instruction": instruction})
    return variants["prompt_input"].format_map({"instruction": instruction, "input": input})


def format_reverse_prompt(template: str, response: str) -> str:
    """The reverse-IFD prompt: the template's no-input variant asking to guess the instruction."""
    instruction = REVERSE_INSTRUCTION.format_map({"response": response})
    return PROMPT_TEMPLATES[template]["prompt_no_input"].format_map({"instruction": instruction})
