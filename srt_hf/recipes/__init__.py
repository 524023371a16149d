"""The training recipes, shipped in the package with their configs.

    srt-hf sft --config smollm2_srt_demo                      # = accelerate launch recipes/sft.py --config ...
    srt-hf sft --config smollm2_srt --accelerate_config ddp   # a packaged accelerate config, by name
    accelerate launch -m srt_hf.recipes.sft --config smollm2_srt_demo
    srt-hf diverse-evol --config diverse_evol_demo            # = python recipes/diverse_evol.py --config ...
    srt-hf self-improve --config self_improve_demo

``sft`` (TRL's SFTTrainer), ``diverse_evol`` and ``self_improve`` are modules of this package; the scripts in
the repository's ``recipes/`` folder only call them. A ``--config`` value is a YAML file or the name of a
packaged config (:data:`CONFIGS`, with or without ``.yaml``); ``--accelerate_config`` likewise names a file
or one of :data:`ACCELERATE_CONFIGS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError

CONFIGS = Path(__file__).parent / "configs"
ACCELERATE_CONFIGS = Path(__file__).parent / "accelerate_configs"


def config_names(folder: Path = CONFIGS) -> list[str]:
    """The names of the packaged YAML configs in ``folder``, without ``.yaml``."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def find_config(value: str, *, folder: Path = CONFIGS, option: str = "--config") -> Path:
    """``value`` as a file if it is one, else the packaged config of that name; a :class:`ConfigError` otherwise."""
    path = Path(value)
    if path.is_file():
        return path
    for candidate in (folder / value, folder / f"{value}.yaml"):
        if candidate.is_file() and candidate.parent == folder:
            return candidate
    raise ConfigError(f"{option} {value!r} is neither a file nor a packaged config: pass a YAML file or one of "
                      f"{', '.join(config_names(folder))}")


def packaged_file(value: str) -> str:
    """``value`` if it names an existing file, else the packaged config file of the same name when there is one.

    Lets a config written for the repository (``chat_template_path: recipes/configs/vicuna_chat_template.jinja``)
    run from an installed package, where only the packaged copy exists.
    """
    if Path(value).is_file() or not (CONFIGS / Path(value).name).is_file():
        return value
    return str(CONFIGS / Path(value).name)


def resolve_config_argument(argv: Sequence[str], *, option: str = "--config", folder: Path = CONFIGS) -> list[str]:
    """``argv`` with the value of ``option`` (``--config X`` or ``--config=X``) turned into a file path."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            argv[i + 1] = str(find_config(argv[i + 1], folder=folder, option=option))
        elif arg.startswith(option + "="):
            argv[i] = f"{option}={find_config(arg.split('=', 1)[1], folder=folder, option=option)}"
    return argv
