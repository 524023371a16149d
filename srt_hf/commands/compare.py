"""`srt-hf compare MODEL_A MODEL_B --judge URL|default`: pairwise evaluation of two models by a judge.

    srt-hf compare outputs/smollm2-srt default --judge http://127.0.0.1:8000/v1 --judge-model Qwen/Qwen2.5-72B-Instruct
    srt-hf compare outputs/smollm2-srt-lora default --judge default --limit 5 --card    # results onto the model card
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def add_parser(sub) -> None:
    from ..cli import add_dataclass_arguments
    from ..compare import CompareConfig

    p = sub.add_parser(
        "compare", help="Compare two models pairwise with a judge model (both orders; win / tie / loss).", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_a", metavar="MODEL_A", help="The model to evaluate: a folder (full model or LoRA adapter), a Hub id, "
                                                      "'default' or an OpenAI-compatible URL (then --model-a-name).")
    p.add_argument("model_b", metavar="MODEL_B", help="The model to compare with (usually the base model), in the same forms.")
    p.add_argument("--out", type=Path, default=None,
                   help="Output folder (resumable: rerun the same command to finish it). Default: MODEL_A/compare with --card, "
                        "else runs/compare/A-vs-B.")
    p.add_argument("--card", action="store_true",
                   help="MODEL_A is a folder trained by `srt-hf sft` (recipes/sft.py): put the result (table, chart, Hub evaluation metadata) "
                        "on its model card.")
    add_dataclass_arguments(p, CompareConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import dataclass_from_args
    from ..compare import CompareConfig, compare, print_summary
    from ..errors import ConfigError

    config = dataclass_from_args(CompareConfig, args)
    if args.card and not Path(args.model_a).is_dir():
        raise ConfigError(f"--card needs MODEL_A to be the output folder of `srt-hf sft` (recipes/sft.py); {args.model_a!r} is not a folder")
    out = args.out or (Path(args.model_a) / "compare" if args.card else Path("runs/compare") / f"{_slug(args.model_a)}-vs-{_slug(args.model_b)}")
    result = compare(args.model_a, args.model_b, out, config)
    print_summary(result)
    if args.card:
        from ..train import add_comparison_to_card

        card = add_comparison_to_card(args.model_a, result)
        print(f"model card updated: {card}")
    return 0


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name.rstrip("/").split("/")[-1] or name).strip("_") or "model"
