"""`srt-hf sft|diverse-evol|self-improve ARGS`: the training recipes of :mod:`srt_hf.recipes`, from the package.

    srt-hf sft --config smollm2_srt_demo --max_steps 10
    srt-hf sft --config smollm2_srt --accelerate_config ddp --num_processes 4
    srt-hf diverse-evol --config diverse_evol_demo
    srt-hf self-improve --config self_improve_demo --num_samples 8

Each takes exactly its recipe's options (TRL's parser: ``--config FILE_OR_NAME``, either spelling of an option).
``sft`` is started as TRL starts ``trl sft``: through ``accelerate launch -m srt_hf.recipes.sft``, with the options
the recipe does not know (``--num_processes 2``, ``--mixed_precision no`` …) passed to ``accelerate launch`` and
``--accelerate_config NAME`` turned into ``--config_file`` of a packaged accelerate config. The DiverseEvol and
self-improvement loops run in this process, as ``python recipes/<name>.py`` does.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    module: str
    help: str
    launch: bool  # started under `accelerate launch` (its processes) rather than run in this process


RECIPES = {
    "sft": Recipe("srt_hf.recipes.sft", "Fine-tune a model on srt-hf data with TRL (accelerate launch "
                  "-m srt_hf.recipes.sft; `srt-hf sft --help` lists the options).", launch=True),
    "diverse-evol": Recipe("srt_hf.recipes.diverse_evol", "DiverseEvol: the model picks its own diverse training "
                           "data, round by round (`srt-hf diverse-evol --help`).", launch=False),
    "self-improve": Recipe("srt_hf.recipes.self_improve", "Self-improvement with DS weight on the model's own "
                           "majority-consistent answers (`srt-hf self-improve --help`).", launch=False),
}


def add_parser(sub) -> None:
    """List the recipes in `srt-hf --help`; their arguments are parsed by the recipe (see :func:`run_recipe`)."""
    for name, recipe in RECIPES.items():
        sub.add_parser(name, help=recipe.help, add_help=False)


def run_recipe(name: str, argv: Sequence[str]) -> int:
    """Run recipe ``name`` with ``argv`` (everything after the command's name); returns the exit code."""
    from ..recipes import ACCELERATE_CONFIGS, resolve_config_argument

    recipe = RECIPES[name]
    module = importlib.import_module(recipe.module)
    argv = resolve_config_argument(argv)
    prog = f"srt-hf {name}"
    if not recipe.launch:
        return module.main(argv, prog=prog)
    # Parse here first (as `trl sft` does): --help, a bad option value or a bad config fails before any launch.
    *_, config_remaining, cli_remaining = module.make_parser(prog).parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True)
    launch_args = resolve_config_argument(config_remaining + cli_remaining, option="--accelerate_config",
                                          folder=ACCELERATE_CONFIGS)
    launch_args = [("--config_file" if a == "--accelerate_config" else a) for a in launch_args]
    launch_args = [a.replace("--accelerate_config=", "--config_file=", 1) for a in launch_args]
    return launch(recipe.module, launch_args, _without(argv, cli_remaining))


def launch(module: str, launch_args: list[str], script_args: list[str]) -> int:
    """``accelerate launch LAUNCH_ARGS -m MODULE SCRIPT_ARGS``; returns the recipe's exit code."""
    import subprocess

    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args([*launch_args, "-m", module, *script_args])
    try:
        launch_command(args)
    except subprocess.CalledProcessError as err:  # the recipe printed its own error
        return err.returncode or 1
    return 0


def _without(argv: Sequence[str], subsequence: Sequence[str]) -> list[str]:
    """``argv`` without the ordered ``subsequence`` (the launch options found in it)."""
    rest, out = iter(subsequence), []
    current = next(rest, None)
    for item in argv:
        if current is not None and item == current:
            current = next(rest, None)
        else:
            out.append(item)
    return out
