"""How a `srt-hf` command reads its options: a YAML config file, and either spelling of an option.

    # recycle.yaml                                   srt-hf recycle demo --config recycle.yaml --temperature 0
    out: runs/demo-srt
    teacher: http://127.0.0.1:8000/v1
    max_new_tokens: 768        # or max-new-tokens
    student: default

``--config FILE.yaml`` (every command but the recipes, whose TRL parser has its own) holds a mapping whose keys
are the command's option names without the dashes, in either spelling; a flag on the command line overrides the
file's value, a repeatable option (``teacher``) takes a list, and an unknown key is an error naming the file, the
key and the option it probably meant. Positional arguments (``IN``, ``RUN_DIR``) stay on the command line. Every
option is accepted as ``--max-new-tokens`` or ``--max_new_tokens``, as TRL's parser accepts both.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_OPTION = "--config"
CONFIG_HELP = ("YAML file of option values (keys: the option names, e.g. max_new_tokens: 512); flags on the command "
               "line override it.")
SPELLINGS_NOTE = "Every option may also be spelled with underscores (--max_new_tokens for --max-new-tokens)."


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE.yaml`` and the note on spellings to a command's parser."""
    parser.add_argument(CONFIG_OPTION, metavar="FILE.yaml", type=Path, default=None, help=CONFIG_HELP)
    parser.epilog = f"{parser.epilog}\n\n{SPELLINGS_NOTE}" if parser.epilog else SPELLINGS_NOTE


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option string (``--max-new-tokens``) -> its action, for every option of ``parser``."""
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def dashed(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` with ``--max_new_tokens[=V]`` written ``--max-new-tokens[=V]`` where that is an option of ``parser``.

    Values are never touched: only a token that starts with ``--`` and names a known option is rewritten, so an
    unknown spelling still reaches argparse's own error as typed.
    """
    known, out, after_separator = _options(parser), [], False
    for token in argv:
        if token == "--":
            after_separator = True
        if not after_separator and token.startswith("--") and "_" in token:
            name, eq, value = token.partition("=")
            candidate = "--" + name[2:].replace("_", "-")
            if candidate in known:
                token = candidate + eq + value
        out.append(token)
    return out


def config_path(argv: Sequence[str]) -> Path | None:
    """The value of ``--config`` in ``argv`` (``--config X`` or ``--config=X``), if any."""
    for i, token in enumerate(argv):
        if token == CONFIG_OPTION and i + 1 < len(argv):
            return Path(argv[i + 1])
        if token.startswith(CONFIG_OPTION + "="):
            return Path(token.split("=", 1)[1])
    return None


def read_config(path: Path, parser: argparse.ArgumentParser, argv: Sequence[str], command: str) -> dict[str, Any]:
    """``dest -> value`` from the YAML file ``path`` for ``parser``'s options that ``argv`` does not set itself.

    Options the file sets are no longer required on the command line (``--out``, a selection rule). Raises a
    :class:`ConfigError` naming the file and the key for an unreadable file or an unknown key.
    """
    import yaml

    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file; pass the path of a YAML file of option values")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML ({err}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the file must hold a mapping of option names to values (e.g. "
                          "`max_new_tokens: 512`), not a {type(data).__name__}")
    options = _options(parser)
    given = {options[t.partition("=")[0]].dest for t in argv if t.partition("=")[0] in options}
    values: dict[str, Any] = {}
    for key, value in data.items():
        flag = "--" + str(key).replace("_", "-")
        action = options.get(flag)
        if action is None or flag == CONFIG_OPTION or flag.startswith("--no-") or action.dest == "help":
            raise ConfigError(_unknown_key(path, key, parser, command))
        if action.dest in given:
            continue  # the command line wins
        if isinstance(action, argparse._AppendAction):
            value = [_convert(action, v, path, key) for v in (value if isinstance(value, (list, tuple)) else [value])]
        else:
            value = _convert(action, value, path, key)
        values[action.dest] = value
        action.required = False
    for group in parser._mutually_exclusive_groups:
        dests = {a.dest for a in group._group_actions}
        if dests & given:  # a choice on the command line replaces the file's choice in the same group
            for dest in dests:
                values.pop(dest, None)
        if dests & (set(values) | given):
            group.required = False
    return values


def _convert(action: argparse.Action, value: Any, path: Path, key: Any) -> Any:
    """``value`` as the option's type would read it from the command line (a path, an int …)."""
    flag = action.option_strings[0]
    if action.nargs == 0:  # a switch: --dry-run, --x / --no-x
        if not isinstance(value, bool):
            raise ConfigError(f"--config {path}: key {key!r} is a switch ({flag}); set it to true or false")
        return value
    if value is not None and action.type is not None and not isinstance(value, (list, dict)):
        try:
            value = action.type(value if isinstance(value, (int, float)) and action.type in (int, float) else str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise ConfigError(f"--config {path}: key {key!r}: {value!r} is not a valid value of {flag} ({err})") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"--config {path}: key {key!r}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _unknown_key(path: Path, key: Any, parser: argparse.ArgumentParser, command: str) -> str:
    names = sorted({s[2:].replace("-", "_") for s in _options(parser) if s not in (CONFIG_OPTION, "--help")
                    and not s.startswith("--no-")})
    positionals = [a.metavar or a.dest for a in parser._actions if not a.option_strings and a.dest != "help"]
    if str(key) in {a.dest for a in parser._actions if not a.option_strings}:
        return (f"--config {path}: key {key!r} is a positional argument of `srt-hf {command}`; give it on the "
                f"command line ({' '.join(map(str, positionals))}) and remove it from the file")
    close = difflib.get_close_matches(str(key).replace("-", "_"), names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"--config {path}: unknown key {key!r} for `srt-hf {command}`; {hint}use an option name of "
            f"`srt-hf {command} --help` without the dashes, or remove the key")


def parse_command(parser: argparse.ArgumentParser, argv: Sequence[str], command: str) -> argparse.Namespace:
    """Parse one command's ``argv``: both spellings, ``--config`` values under the command-line flags."""
    argv = dashed(argv, parser)
    namespace = argparse.Namespace(command=command)
    path = config_path(argv)
    if path is not None:
        for dest, value in read_config(path, parser, argv, command).items():
            setattr(namespace, dest, value)  # argparse keeps a value already in the namespace as the default
    return parser.parse_args(argv, namespace)
