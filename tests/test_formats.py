"""Every supported format reads to the same canonical view; bad columns fail with the fix."""

from __future__ import annotations

import pytest

from srt_hf.errors import InputError
from srt_hf.formats import ColumnMapping, Example, RowProblem, detect_format, flatten_context, read_batch


def read_one(row: dict, mapping: ColumnMapping | None = None) -> Example | RowProblem:
    batch = {k: [v] for k, v in row.items()}
    return read_batch(batch, detect_format(list(batch), mapping))[0]


def test_alpaca_with_and_without_input():
    ex = read_one({"instruction": "Add.", "input": "2 and 3", "output": "5"})
    assert (ex.instruction, ex.input, ex.response) == ("Add.", "2 and 3", "5")
    assert ex.context == [{"role": "user", "content": "Add.\n\n2 and 3"}]
    ex = read_one({"instruction": "Hi", "output": "Hello"})
    assert ex.input == ""


def test_none_input_is_empty():
    assert read_one({"instruction": "Hi", "input": None, "output": "Hello"}).input == ""


def test_prompt_completion_strings_and_conversational():
    ex = read_one({"prompt": "Capital of France?", "completion": "Paris."})
    assert (ex.instruction, ex.response) == ("Capital of France?", "Paris.")
    ex = read_one({
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "completion": [{"role": "assistant", "content": "Paris."}],
    })
    assert (ex.instruction, ex.response, ex.context[-1]["role"]) == ("Capital of France?", "Paris.", "user")


def test_messages_last_assistant_turn_given_everything_before():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    ex = read_one({"messages": messages})
    assert ex.response == "4"
    assert ex.context == messages[:4]
    assert ex.instruction == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: 2+2?"


def test_single_turn_with_system_keeps_the_user_text_plain():
    assert flatten_context([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]) == "S\n\nQ"
    assert flatten_context([{"role": "user", "content": "Q"}]) == "Q"


def test_sharegpt():
    ex = read_one({"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]})
    assert (ex.instruction, ex.response) == ("Name a colour.", "Blue.")


def test_custom_column_names():
    mapping = ColumnMapping(instruction_column="q", input_column="ctx", response_column="a")
    ex = read_one({"q": "Sum?", "ctx": "1, 2", "a": "3"}, mapping)
    assert (ex.instruction, ex.input, ex.response) == ("Sum?", "1, 2", "3")


def test_missing_column_names_it_and_the_fix():
    with pytest.raises(InputError) as err:
        detect_format(["question", "answer"])
    assert "instruction_column" in str(err.value) and "--instruction-column" in str(err.value)
    with pytest.raises(InputError) as err:
        detect_format(["instruction", "output"], ColumnMapping(response_column="answer"))
    assert "'answer'" in str(err.value) and "response_column" in str(err.value)


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"instruction": None, "output": "x"}, "'instruction' is None"),
        ({"instruction": "x", "output": {"n": 3}}, "'output' is not a string (dict)"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": "hello"}, "not a list of messages"),
    ],
)
def test_bad_values_become_row_problems(row, reason):
    problem = read_one(row)
    assert isinstance(problem, RowProblem) and reason in str(problem)


def test_numbers_in_text_columns_are_read_as_written():
    ex = read_one({"instruction": "What is 2+2?", "input": None, "output": 4})
    assert (ex.instruction, ex.input, ex.response) == ("What is 2+2?", "", "4")
    assert read_one({"instruction": "Half?", "output": 0.5}).response == "0.5"


def test_rows_of_mixed_formats_are_read_per_row():
    from srt_hf.formats import describe

    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    batch = {"instruction": ["Name a colour.", None, None], "output": ["Blue.", None, None],
             "messages": [None, chat, None]}
    fmt = detect_format(list(batch))
    assert fmt.kind == "messages" and [f.kind for f in fmt.fallbacks] == ["alpaca"]
    assert "rows without those columns are read as alpaca" in describe(fmt)
    first, second, third = read_batch(batch, fmt)
    assert (first.instruction, first.response) == ("Name a colour.", "Blue.")
    assert (second.instruction, second.response) == ("Hi", "Hello!")
    assert isinstance(third, RowProblem) and "'messages'" in str(third)  # empty in every format: the chosen one's reason
    # An explicit mapping reads every row in that format only.
    only = detect_format(list(batch), ColumnMapping(messages_column="messages"))
    assert not only.fallbacks and isinstance(read_batch(batch, only)[0], RowProblem)


def test_read_report_counts_rows_per_format():
    from datasets import Dataset

    from srt_hf.formats import read_report

    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    ds = Dataset.from_list([{"instruction": "a", "output": "b", "messages": None}] * 2
                           + [{"instruction": None, "output": None, "messages": chat}]
                           + [{"instruction": None, "output": None, "messages": None}])
    assert read_report(ds, detect_format(ds.column_names)) == "alpaca 2, messages 1, unreadable 1"
