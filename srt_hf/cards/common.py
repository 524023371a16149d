"""What both cards share: Jinja rendering, the YAML front matter and the run.json provenance readers.

    text = render(DATASET_TEMPLATE, {"card_data": card_yaml(metadata, "dataset"), **provenance(meta)})

The templates are ``hub_cards/*.md.jinja``, shipped in the package as ``srt_hf/hub_cards``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent.parent
TEMPLATE_DIRS = (_PACKAGE / "hub_cards", _PACKAGE.parent / "hub_cards")
DATASET_TEMPLATE, MODEL_TEMPLATE = "dataset_card.md.jinja", "model_card.md.jinja"
BASE_TAGS = ["srt-hf", "reflection-tuning"]


def render(template: str, context: Mapping[str, Any]) -> str:
    """``template`` (a file of TEMPLATE_DIRS) filled with ``context``."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in TEMPLATE_DIRS]),
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.ChainableUndefined,
    )
    env.filters["num"] = _fmt_number
    env.filters["fence"] = _fence
    env.filters["cell"] = _cell
    env.filters["pct"] = percent
    return env.get_template(template).render(**context)


def card_yaml(metadata: Mapping[str, Any], kind: str) -> str:
    """The YAML metadata block, through huggingface_hub's card data classes (which validate it)."""
    from huggingface_hub import DatasetCardData, ModelCardData

    cls = DatasetCardData if kind == "dataset" else ModelCardData
    return cls(**metadata).to_yaml()


def _fmt_number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent(value: Any, whole: Any = None) -> str:
    """A share as a percentage: ``percent(0.9)`` → '90%', ``percent(3, 20)`` → '15%'; one decimal unless whole."""
    if value is None or whole == 0:
        return "–"
    share = value / whole if whole is not None else value
    text = f"{100 * share:.1f}"
    return (text.removesuffix(".0")) + "%"


def _fence(text: str) -> str:
    """A Markdown code fence long enough for ``text`` (prompts may contain backticks)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(value: Any) -> str:
    """A value safe inside a Markdown table cell."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (str, bool, int)):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def as_dict(value: Any, key: str) -> dict[str, Any]:
    """run.json values may be a dict or a bare string (taken as ``{key: value}``)."""
    if isinstance(value, Mapping):
        return dict(value)
    return {key: value} if value not in (None, "") else {}


def provenance(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Teacher, student, scoring and selection of a run, as the card templates read them."""
    return {
        "teacher": as_dict(meta.get("teacher"), "model"),
        "student": as_dict(meta.get("student"), "model"),
        "scoring": as_dict(meta.get("scoring"), "preset"),
        "selection": as_dict(meta.get("selection"), "rule"),
    }


def looks_like_hub_id(name: Any) -> bool:
    """True for ``owner/name`` or ``name`` strings that are not existing local paths."""
    if not isinstance(name, str) or not name or Path(name).exists() or os.path.isabs(name):
        return False
    if name.endswith((".parquet", ".json", ".jsonl", ".csv")):
        return False
    return re.fullmatch(r"(?:[\w.-]+/)?[\w.-]+", name) is not None
