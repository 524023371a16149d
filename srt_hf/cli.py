"""`srt-hf` command line: one subcommand per module in ``srt_hf.commands``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import types
import typing
from typing import Any, Sequence

from .errors import BatchPending, SrtHfError

# name -> module; each module defines add_parser(subparsers) and run(args) -> int.
COMMANDS = {
    "score": "srt_hf.commands.score",
    "recycle": "srt_hf.commands.recycle",
    "select": "srt_hf.commands.select",
    "push": "srt_hf.commands.push",
    "report": "srt_hf.commands.report",
    "compare": "srt_hf.commands.compare",
    # the training recipes: their own parser (TRL's) takes every argument after the name
    "sft": "srt_hf.commands.recipes",
    "diverse-evol": "srt_hf.commands.recipes",
    "self-improve": "srt_hf.commands.recipes",
}


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                            skip: Sequence[str] = (), only: Sequence[str] | None = None) -> None:
    """``--field-name`` options from a config dataclass, with its help text; bools get ``--x/--no-x``.

    ``parser`` may be an argument group (a heading in ``--help``); ``only`` limits the options to those fields.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        kind = hints[f.name]
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in args if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        help_text = _with_default(f.metadata.get("help", ""), default, flag if kind is bool else None)
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, help=help_text)


def _with_default(help_text: str, default: Any, bool_flag: str | None = None) -> str:
    """The help text, ``%``-escaped for argparse, ending in the default unless the text already names it.

    A boolean's default is stated as the flag that is on by default (``--x`` or ``--no-x``).
    """
    escaped = help_text.replace("%", "%%")
    if default is None or default == [] or "default" in help_text.lower():
        return escaped
    if bool_flag is not None:
        return f"{escaped} (default: {bool_flag if default else '--no-' + bool_flag[2:]})"
    return f"{escaped} (default: %(default)s)"


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **overrides})


def build_parser() -> argparse.ArgumentParser:
    from .cli_options import add_config_option

    parser = argparse.ArgumentParser(prog="srt-hf", description="Selective Reflection-Tuning for the Hugging Face ecosystem.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(module).add_parser(sub)
    for name, command in sub.choices.items():
        if COMMANDS.get(name) != "srt_hf.commands.recipes":  # the recipes' TRL parser reads its own --config
            add_config_option(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .cli_options import parse_command
    from .invocation import recording

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        if command and COMMANDS[command] == "srt_hf.commands.recipes":
            from .commands.recipes import run_recipe

            args = argparse.Namespace(command=command, run=lambda _: run_recipe(command, argv[1:]))
        elif command:
            parser = build_parser()
            args = parse_command(_subparser(parser, command), argv[1:], command)
        else:
            args = build_parser().parse_args(argv)  # help, or argparse's error naming the commands
    except SrtHfError as err:  # a bad --config file
        print(f"srt-hf {command}: error: {err}", file=sys.stderr)
        return 2
    try:
        with recording(argv):  # a run folder written by this command records it (secrets redacted)
            return int(args.run(args) or 0)
    except BatchPending as stop:  # not a failure: the run waits for teacher batch results
        print(f"srt-hf {args.command}: {stop}")
        return stop.exit_code
    except SrtHfError as err:
        print(f"srt-hf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write the file system refused where no srt_hf code could name the output
        from .durable import disk_errno, output_error

        if disk_errno(err) is None:
            raise
        print(f"srt-hf {args.command}: error: {output_error(err.filename or 'the output', err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"srt-hf {args.command}: interrupted; finished work is kept, rerun the same command to resume.", file=sys.stderr)
        return 130


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of command ``name`` (argparse keeps it in the subparsers action's ``choices``)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


if __name__ == "__main__":
    sys.exit(main())
