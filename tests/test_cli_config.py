"""`srt-hf` options: a YAML --config file for every command (flags override it, unknown keys are named), both
spellings of every option, and recycle's --help grouped by purpose."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from srt_hf import cli
from srt_hf.cli_options import parse_command
from srt_hf.errors import ConfigError


def parse(argv: list[str]):
    return parse_command(cli._subparser(cli.build_parser(), argv[0]), argv[1:], argv[0])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "options.yaml"
    path.write_text(text)
    return path


def test_both_spellings_of_every_option(tmp_path):
    dashed = parse(["recycle", "demo", "--out", "r", "--max-new-tokens", "7", "--teacher-model", "m", "--no-retry-failed"])
    snake = parse(["recycle", "demo", "--out", "r", "--max_new_tokens", "7", "--teacher_model=m", "--no_retry_failed"])
    for args in (dashed, snake):
        assert (args.max_new_tokens, args.teacher_model, args.retry_failed, args.out) == (7, "m", False, Path("r"))
    assert parse(["select", "scored.parquet", "--out", "o", "--top_n", "3", "--max_ifd", "inf"]).max_ifd == float("inf")


def test_config_file_values_and_command_line_overrides(tmp_path):
    config = write(tmp_path, "out: runs/x\nteacher: [http://a/v1, http://b/v1]\nmax-new-tokens: 64\n"
                             "temperature: 0.2\nretry_failed: false\nlimit: 5\n")
    args = parse(["recycle", "demo", "--config", str(config), "--temperature", "0.9"])
    assert args.out == Path("runs/x")  # typed as on the command line; --out is no longer required
    assert args.teacher == ["http://a/v1", "http://b/v1"] and args.max_new_tokens == 64 and args.limit == 5
    assert args.temperature == 0.9 and args.retry_failed is False
    args = parse(["recycle", "demo", f"--config={config}", "--teacher", "http://c/v1", "--out", "elsewhere"])
    assert args.teacher == ["http://c/v1"] and args.out == Path("elsewhere")  # flags replace, never extend


def test_config_file_chooses_a_selection_rule(tmp_path):
    config = write(tmp_path, "top_n: 4\nmax_ifd: inf\nout: sel\n")
    args = parse(["select", "scored.parquet", "--config", str(config)])
    assert (args.top_n, args.max_ifd, args.kcenter) == (4, float("inf"), None)
    args = parse(["select", "scored.parquet", "--config", str(config), "--kcenter", "2"])
    assert (args.top_n, args.kcenter) == (None, 2)  # the command line's rule replaces the file's


@pytest.mark.parametrize("text, message", [
    ("max_new_token: 5\n", r"options.yaml: unknown key 'max_new_token' for `srt-hf recycle`; did you mean 'max_new_tokens'"),
    ("input: data.jsonl\n", r"key 'input' is a positional argument .*IN"),
    ("retry_failed: maybe\n", r"key 'retry_failed' is a switch"),
    ("limit: many\n", r"key 'limit': 'many' is not a valid value of --limit"),
    ("- out\n", r"must hold a mapping"),
])
def test_bad_config_files_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        parse(["recycle", "demo", "--config", str(write(tmp_path, text))])


def test_bad_config_file_is_one_line_exit_2(tmp_path, capsys):
    assert cli.main(["score", "demo", "--config", str(write(tmp_path, "studnet: default\n"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("srt-hf score: error: --config ") and "'studnet'" in err and "'student'" in err
    assert cli.main(["push", "run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_every_command_takes_a_config_file():
    parser = cli.build_parser()
    for name in cli.COMMANDS:
        if cli.COMMANDS[name] == "srt_hf.commands.recipes":
            continue  # TRL's parser: --config of the recipe (tests/test_recipes_package.py)
        options = {s for a in cli._subparser(parser, name)._actions for s in a.option_strings}
        assert "--config" in options, name


def test_recycle_help_is_grouped_by_purpose(capsys):
    from srt_hf.commands.recycle import GROUPS
    from srt_hf.pipeline import RecycleConfig
    from srt_hf.teachers import GenerationConfig
    from srt_hf.teachers.batch_teacher import BatchConfig

    fields = [f.name for cls in (RecycleConfig, GenerationConfig, BatchConfig) for f in dataclasses.fields(cls)]
    listed = [name for names in GROUPS.values() for name in names]
    assert sorted(fields) == sorted(listed)  # each option under exactly one heading, none under "other options"
    with pytest.raises(SystemExit):
        cli.main(["recycle", "--help"])
    out = capsys.readouterr().out
    headings = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings[-len(GROUPS):] == list(GROUPS)
    student = out.split("\nstudent (scoring):\n")[1].split("\nselection:\n")[0]
    assert "--preset" in student and "--max-new-tokens" not in student
