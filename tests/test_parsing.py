"""The hardened marker parser and the structured (JSON) parser, on realistic teacher replies (issue 9)."""

from __future__ import annotations

import json

import pytest

from srt_hf.errors import ConfigError
from srt_hf.parsing import (
    INSTRUCTION_FIELDS,
    RESPONSE_FIELDS,
    json_schema,
    parse_instruction_reflection,
    parse_json_reflection,
    parse_response_reflection,
    strip_reasoning,
)
from srt_hf.reflection import builtin_template

FENCE = "```"


# -- code answers ----------------------------------------------------------------------------------
def test_python_indexing_with_a_variable_named_end_never_closes_the_answer():
    code = (
        f"{FENCE}python\n"
        "def window(s: str, start: int, end: int) -> str:\n"
        "    if end >= len(s):\n"
        "        raise IndexError(end)\n"
        "    last = s[end]\n"
        "    return s[start:end] + last\n"
        f"{FENCE}"
    )
    body = (f"Slice up to `end`, then add the character at that index:\n\n{code}\n\n"
            "For s = 'reflect', window(s, 1, 3) is 'efl'.")
    reply = f"The original answer has no code and no bounds check.\n\n[Better Answer]\n{body}\n[End]"
    parsed = parse_response_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections == {"Better Answer": body}


def test_unfenced_code_ending_in_s_end_is_not_an_end_marker():
    body = ("Keep the index in a variable and read the character:\n\n"
            "    end = len(s) - 1\n    last = s[end]\n\nThat is the last character.")
    parsed = parse_response_reflection(f"[Better Answer]\n{body}\n[End]")
    assert parsed.status == "ok"
    assert parsed.sections["Better Answer"] == body


def test_julia_end_indexing_survives_inside_and_outside_code():
    answer = (
        "In Julia, `end` inside brackets means the last index, so the last element is x[end]\n"
        "and the one before it is x[end-1]:\n\n"
        f"{FENCE}julia\n"
        "function lastpair(x::AbstractVector)\n"
        "    length(x) < 2 && throw(ArgumentError(\"need two elements\"))\n"
        "    return (x[end-1], x[end])\n"
        "end\n"
        f"{FENCE}\n\n"
        "lastpair([3, 1, 4]) returns (1, 4)."
    )
    reply = (
        "The instruction is vague about the language.\n\n"
        "[New Instruction]\nWrite a Julia function that returns the last two elements of a vector as a tuple.\n"
        "[End]\n\n"
        f"[New Answer]\n{answer}\n[End]"
    )
    parsed = parse_instruction_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections == {
        "New Instruction": "Write a Julia function that returns the last two elements of a vector as a tuple.",
        "New Answer": answer,
    }


@pytest.mark.parametrize("fence", ["```", "~~~"])
def test_a_literal_end_marker_in_a_fenced_block_is_content(fence):
    answer = (
        "Ask the teacher to close each section with a line of its own, for example:\n\n"
        f"{fence}text\n[Better Answer]\nThe improved answer goes here.\n[End]\n{fence}\n\n"
        "The parser then reads everything up to that closing line."
    )
    reply = f"Review: the answer never shows the layout.\n\n[Better Answer]\n{answer}\n[End]\n"
    parsed = parse_response_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections["Better Answer"] == answer


def test_an_end_marker_mentioned_mid_sentence_is_content():
    answer = "Close each section with [End] on a line of its own, and write nothing after it."
    parsed = parse_response_reflection(f"[Better Answer]\n{answer}\n[End]")
    assert (parsed.status, parsed.sections["Better Answer"]) == ("ok", answer)


def test_a_fence_that_never_closes_is_read_as_text():
    parsed = parse_response_reflection("[Better Answer]\n```python\nprint(sorted(words, key=len))\n[End]\n")
    assert parsed.status == "ok"
    assert parsed.sections["Better Answer"] == "```python\nprint(sorted(words, key=len))"


# -- reasoning models ------------------------------------------------------------------------------
def test_a_draft_inside_think_loses_to_the_final_unclosed_version():
    reply = (
        "<think>\nThe answer only names the city. A first try:\n"
        "[Better Answer]\nParis.\n[End]\n"
        "Too short; it should say why and give a fact or two.\n</think>\n\n"
        "[Better Answer]\nThe capital of France is Paris. It has been the seat of government for most of the "
        "last thousand years and is home to the National Assembly and the Senate."
    )
    parsed = parse_response_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections["Better Answer"] == (
        "The capital of France is Paris. It has been the seat of government for most of the "
        "last thousand years and is home to the National Assembly and the Senate."
    )


def test_a_reply_with_only_the_closing_think_tag():
    reply = (
        "Okay, let me draft it.\n[New Instruction]\nConvert 5 km to miles.\n[End]\n"
        "[New Answer]\n3.1 miles\n[End]\nBetter to ask for the working and a unit check.\n</think>\n\n"
        "[New Instruction]\nConvert 5 kilometres to miles, showing the conversion factor you use.\n[End]\n\n"
        "[New Answer]\nOne kilometre is about 0.621 miles, so 5 km x 0.621 = 3.11 miles.\n[End]"
    )
    parsed = parse_instruction_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections == {
        "New Instruction": "Convert 5 kilometres to miles, showing the conversion factor you use.",
        "New Answer": "One kilometre is about 0.621 miles, so 5 km x 0.621 = 3.11 miles.",
    }


@pytest.mark.parametrize(
    "reply, status",
    [
        ("<think>\nThe user wants a better answer. [Better Answer]\nDraft.\n[End]\n",
         "parse_failed: the <think> block never closes"),
        ("<think>I could say Paris.\n[Better Answer]\nParis.\n[End]</think>\n",
         "parse_failed: nothing follows the </think> block"),
    ],
)
def test_reasoning_alone_is_not_an_answer(reply, status):
    assert parse_response_reflection(reply).status == status


def test_think_tags_inside_code_do_not_count():
    reply = "[Better Answer]\nStrip the reasoning first:\n\n```python\ntext = reply.split('</think>')[-1]\n```\n[End]"
    assert strip_reasoning(reply) == (reply, None)
    assert parse_response_reflection(reply).sections["Better Answer"].endswith("split('</think>')[-1]\n```")


def test_the_last_version_wins_over_an_earlier_closed_draft():
    reply = (
        "[Better Answer]\nWater boils at 100 degrees.\n[End]\n\n"
        "On reflection, that ignores pressure.\n\n"
        "[Better Answer]\nAt sea level water boils at 100 °C; higher up, where the pressure is lower, "
        "it boils sooner."
    )
    parsed = parse_response_reflection(reply)
    assert parsed.sections["Better Answer"] == (
        "At sea level water boils at 100 °C; higher up, where the pressure is lower, it boils sooner."
    )


def test_a_placeholder_rewrite_does_not_replace_a_real_version():
    reply = ("[Better Answer]\nPhotosynthesis turns light, water and CO2 into sugar and oxygen.\n[End]\n"
             "[Better Answer]\n(the better answer)\n[End]")
    parsed = parse_response_reflection(reply)
    assert parsed.sections["Better Answer"] == "Photosynthesis turns light, water and CO2 into sugar and oxygen."


# -- decorated markdown and headings inside answers ------------------------------------------------
def test_markdown_decorated_markers():
    reply = (
        "## Review\nThe task is too easy.\n\n"
        "### [New Instruction]:\nList three causes of the French Revolution and rank them by importance.\n"
        "**[End]**\n\n"
        "**[New Answer]:**\n1. Fiscal crisis\n2. Food prices\n3. Enlightenment ideas\n\n**[End]**"
    )
    parsed = parse_instruction_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections == {
        "New Instruction": "List three causes of the French Revolution and rank them by importance.",
        "New Answer": "1. Fiscal crisis\n2. Food prices\n3. Enlightenment ideas",
    }


def test_bold_marker_with_text_on_the_same_line():
    parsed = parse_response_reflection("**[Better Answer]** *Mitochondria* make most of the cell's ATP. [End]")
    assert (parsed.status, parsed.sections["Better Answer"]) == ("ok", "*Mitochondria* make most of the cell's ATP.")


@pytest.mark.parametrize("marker", ["1. [Better Answer]", "> [Better Answer]", "- **[Better Answer]:**",
                                    "  [ better   ANSWER ]"])
def test_list_quote_and_spacing_variants_of_a_marker(marker):
    reply = f"Review: too terse.\r\n{marker}\r\nUse `git rebase -i` to reorder commits.\r\n[End]\r\n"
    parsed = parse_response_reflection(reply)
    assert (parsed.status, parsed.sections["Better Answer"]) == ("ok", "Use `git rebase -i` to reorder commits.")


def test_heading_like_lines_inside_an_answer_are_content():
    answer = (
        "A good rewriting prompt names the audience and the length. For example:\n\n"
        "New instruction: Rewrite the paragraph below for a ten-year-old, in at most three sentences.\n\n"
        "**Better answer:**\nThe rewritten paragraph should keep every fact and drop the jargon.\n\n"
        "### New Answer\nCheck the result against the original, sentence by sentence."
    )
    reply = (
        "[New Instruction]\nExplain how to write a prompt that asks a model to simplify a text.\n[End]\n"
        f"[New Answer]\n{answer}\n[End]"
    )
    parsed = parse_instruction_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections["New Answer"] == answer


def test_better_answer_heading_inside_a_better_answer_is_content():
    answer = "Use a table.\n\n**Better answer:**\n| unit | metres |\n|---|---|\n| foot | 0.3048 |"
    parsed = parse_response_reflection(f"[Better Answer]\n{answer}\n[End]")
    assert parsed.sections["Better Answer"] == answer


def test_unbracketed_headings_still_open_sections_in_order():
    reply = (
        "**New Instruction:** Give two uses of vinegar in cleaning.\n\n"
        "**New Answer:** It removes limescale from kettles.\nNew instruction: it also cuts grease on glass."
    )
    parsed = parse_instruction_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections == {
        "New Instruction": "Give two uses of vinegar in cleaning.",
        "New Answer": "It removes limescale from kettles.\nNew instruction: it also cuts grease on glass.",
    }


def test_bracketed_versions_win_over_an_unbracketed_heading_after_them():
    reply = "[Better Answer]\nTokyo is the capital of Japan.\n[End]\n\nBetter answer: more concise than the original."
    assert parse_response_reflection(reply).sections["Better Answer"] == "Tokyo is the capital of Japan."


@pytest.mark.parametrize(
    "reply, answer",
    [
        ("[Better Answer]\nThe proof ends here.[End]", "The proof ends here."),
        ("[Better Answer]\nUse a[End] marker? No: a[End] is code.\n[End]", "Use a[End] marker? No: a[End] is code."),
        ("[Better Answer] Short. [END] [New Answer] stray", "Short."),
    ],
)
def test_end_marker_positions(reply, answer):
    parsed = parse_response_reflection(reply)
    assert (parsed.status, parsed.sections["Better Answer"]) == ("ok", answer)


# -- the JSON layout -------------------------------------------------------------------------------
def test_json_schema_is_plain_and_ordered():
    assert INSTRUCTION_FIELDS == ("review", "new_instruction", "new_answer")
    assert RESPONSE_FIELDS == ("review", "better_answer")
    assert json_schema("instruction") == {
        "type": "object",
        "properties": {
            "review": {"type": "string"}, "new_instruction": {"type": "string"}, "new_answer": {"type": "string"}
        },
        "required": ["review", "new_instruction", "new_answer"],
        "additionalProperties": False,
    }
    assert list(json_schema("response")["properties"]) == ["review", "better_answer"]
    bounded = json_schema("response", review_max_length=300)["properties"]
    assert bounded == {"review": {"type": "string", "maxLength": 300}, "better_answer": {"type": "string"}}
    assert "maxLength" not in json_schema("response")["properties"]["review"]  # a fresh dict each time
    with pytest.raises(ConfigError, match="'instruction', 'response'"):
        json_schema("review")


INSTRUCTION_OBJECT = {
    "review": "The instruction is vague and the answer gives no reason.",
    "new_instruction": "Explain why the sky looks blue at noon and red at sunset.",
    "new_answer": "Air scatters short (blue) wavelengths most. At sunset light crosses more air, so red is left.",
}
EXPECTED_SECTIONS = {
    "Review": INSTRUCTION_OBJECT["review"],
    "New Instruction": INSTRUCTION_OBJECT["new_instruction"],
    "New Answer": INSTRUCTION_OBJECT["new_answer"],
}


@pytest.mark.parametrize(
    "reply",
    [
        json.dumps(INSTRUCTION_OBJECT),
        f"```json\n{json.dumps(INSTRUCTION_OBJECT, indent=2)}\n```",
        f"Here is my reflection:\n\n{json.dumps(INSTRUCTION_OBJECT)}\n\nLet me know if you want changes.",
        ('<think>\nDraft: {"review": "ok", "new_instruction": "Why is the sky blue?", "new_answer": "Scattering."}\n'
         f"Needs the sunset too.\n</think>\n{json.dumps(INSTRUCTION_OBJECT)}"),
        json.dumps({"Review": INSTRUCTION_OBJECT["review"], "New Instruction": INSTRUCTION_OBJECT["new_instruction"],
                    "NEW_ANSWER": INSTRUCTION_OBJECT["new_answer"]}),
    ],
    ids=["bare", "fenced", "prose-around", "think-before", "keys-in-another-case"],
)
def test_json_replies_that_parse(reply):
    parsed = parse_json_reflection(reply, "instruction")
    assert parsed.status == "ok"
    assert parsed.sections == EXPECTED_SECTIONS


def test_json_code_answer_with_braces_and_markers_in_strings():
    obj = {"review": "Correct but unexplained.",
           "better_answer": "Use a dict comprehension:\n\n```python\n"
                            "counts = {w: words.count(w) for w in set(words)}\n```\n[End]"}
    parsed = parse_json_reflection(json.dumps(obj), "response")
    assert parsed.status == "ok"
    assert parsed.sections == {"Review": "Correct but unexplained.", "Better Answer": obj["better_answer"]}


def test_json_with_raw_newlines_in_a_string_is_read():
    parsed = parse_json_reflection('{"review": "Fine.", "better_answer": "Line one.\nLine two."}', "response")
    assert (parsed.status, parsed.sections["Better Answer"]) == ("ok", "Line one.\nLine two.")


def test_the_last_complete_json_object_wins():
    draft = {"review": "Short.", "better_answer": "Paris."}
    final = {"review": "Short and bare.", "better_answer": "Paris is the capital of France."}
    parsed = parse_json_reflection(f"{json.dumps(draft)}\nActually, a fuller one:\n{json.dumps(final)}", "response")
    assert parsed.sections["Better Answer"] == "Paris is the capital of France."


CUT_OFF = "parse_failed: reply is not a complete JSON object"


@pytest.mark.parametrize(
    "reply, status",
    [
        ("", "parse_failed: empty reply"),
        (None, "parse_failed: empty reply"),
        ("Sure! A better answer is that Paris is the capital.", "parse_failed: reply is not a JSON object"),
        ('["review", "better_answer"]', "parse_failed: reply is not a JSON object"),
        ('{"review": "Too short."}', "parse_failed: no 'better_answer' field"),
        ('{"review": "Fine.", "better_answer": "N/A"}', "placeholder: 'better_answer' is 'N/A'"),
        ('{"review": "Fine.", "better_answer": "  "}', "placeholder: 'better_answer' is empty"),
        ('{"review": "Fine.", "better_answer": "your better answer"}',
         "placeholder: 'better_answer' is 'your better answer'"),
        ('{"review": "Fine.", "better_answer": ["Step 1", "Step 2"]}',
         "parse_failed: 'better_answer' is a list, not a string"),
        ('{"review": "Fine.", "better_answer": 42}', "parse_failed: 'better_answer' is a number, not a string"),
        ('{"review": null, "better_answer": "Paris."}', "parse_failed: 'review' is null, not a string"),
        ('{"review": "The answer lacks units.", "better_answer": "The car travels at 60 km/h, so in 2', CUT_OFF),
        ('```json\n{"review": "Fine.", "better_answer": "def f():\\n    return {}', CUT_OFF),
        ('Use {} for an empty dict:\n{"review": "ok", "better_answer": "d = {}; d[\'a\'] = ', CUT_OFF),
        ('{"review": "Fine", "better_answer": "Paris",}',
         "parse_failed: reply is not valid JSON (Expecting property name enclosed in double quotes)"),
        ("<think>\nI will answer {\"review\": ...", "parse_failed: the <think> block never closes"),
    ],
)
def test_json_replies_that_fail(reply, status):
    assert parse_json_reflection(reply, "response").status == status


def test_an_echoed_json_prompt_is_a_failure():
    template = builtin_template("response_reflection_json")
    skeleton = template.replace("{{ instruction }}", "").replace("{{ response }}", "")
    prompt = template.replace("{{ instruction }}", "Name a colour.").replace("{{ response }}", "Blue.")
    assert parse_json_reflection(prompt, "response").status == "parse_failed: reply is not a JSON object"
    echoed = parse_json_reflection(prompt, "response", skeleton=skeleton)
    assert echoed.status == "parse_failed: reply echoes the prompt"
    good = json.dumps({"review": "Too short.", "better_answer": "Blue, like a clear sky at noon."})
    assert parse_json_reflection(good, "response", skeleton=skeleton).ok


def _skeleton(name: str) -> str:
    import jinja2

    return jinja2.Template(builtin_template(name)).render(instruction="", input="", response="")


def test_texts_copied_from_the_prompt_are_placeholders():
    skeleton = _skeleton("instruction_reflection_input_json")
    copied = json.dumps({"review": "Good.", "new_instruction": "Sort the list [3, 1, 2] in ascending order.",
                         "new_answer": "The answer to the improved instruction."})
    parsed = parse_json_reflection(copied, "instruction", skeleton=skeleton)
    assert parsed.status == "placeholder: 'new_answer' copies the prompt: 'The answer to the improved instruction.'"
    assert parse_json_reflection(copied, "instruction").ok  # the copy is only visible against the prompt
    marker = ("[New Instruction]\nSort the list [3, 1, 2].\n[End]\n"
              "[New Answer]\nthe answer to the improved instruction\n[End]")
    parsed = parse_instruction_reflection(marker, skeleton=_skeleton("instruction_reflection"))
    assert parsed.status == "placeholder: [New Answer] copies the prompt: 'the answer to the improved instruction'"
    short = json.dumps({"review": "Fine.", "new_instruction": "Which quality of a measurement is bias about?",
                        "new_answer": "accuracy"})
    assert parse_json_reflection(short, "instruction", skeleton=skeleton).ok  # one or two words are not a copy


# -- the JSON prompts ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["instruction", "response"])
@pytest.mark.parametrize("with_input", [False, True])
def test_json_prompts_ask_for_the_fields_in_order(kind, with_input):
    text = builtin_template(f"{kind}_reflection{'_input' if with_input else ''}_json")
    fields = INSTRUCTION_FIELDS if kind == "instruction" else RESPONSE_FIELDS
    positions = [text.index(f'"{name}"') for name in fields]
    assert positions == sorted(positions)
    assert "JSON object" in text and "[End]" not in text
    assert ("{{ input }}" in text) == with_input
    assert "{{ instruction }}" in text and "{{ response }}" in text
    criteria = ["helpfulness", "relevance", "accuracy", "level of detail"]
    if kind == "instruction":
        criteria += ["complexity", "knowledge", "ambiguity", "reasoning"]
    assert all(c in text for c in criteria)
    assert len(text) < 1300  # short enough for a small teacher under a JSON grammar


# -- replies wrapped in a fence, closing tags (issue 21) -------------------------------------------
_PAIR = ("[New Instruction]\nName three everyday uses of baking soda and say why each one works.\n[End]\n\n"
         "[New Answer]\n1. Fridge odours: it neutralises acidic smells.\n2. Scouring pans: its fine grains are mildly "
         "abrasive.\n3. Heartburn: it is a base that neutralises stomach acid.")
_PAIR_SECTIONS = {
    "New Instruction": "Name three everyday uses of baking soda and say why each one works.",
    "New Answer": "1. Fridge odours: it neutralises acidic smells.\n2. Scouring pans: its fine grains are mildly "
                  "abrasive.\n3. Heartburn: it is a base that neutralises stomach acid.",
}


@pytest.mark.parametrize("opening", ["```", "```text", "```markdown", "~~~"])
@pytest.mark.parametrize("preface", ["", "Here is step 3 in the requested layout:\n"])
@pytest.mark.parametrize("end_inside", [True, False])
def test_a_layout_wrapped_in_one_fence_is_read_without_it(opening, preface, end_inside):
    closing = opening[:3]
    body = f"{_PAIR}\n[End]\n{closing}" if end_inside else f"{_PAIR}\n{closing}\n[End]"
    parsed = parse_instruction_reflection(f"{preface}{opening}\n{body}\n")
    assert parsed.status == "ok"
    assert parsed.sections == _PAIR_SECTIONS


def test_code_fences_inside_a_wrapped_answer_keep_their_pairs():
    answer = "Slice with a negative step:\n\n```python\nwords = words[::-1]\n```\n\nIt returns a new list."
    reply = f"```\n[New Instruction]\nReverse a Python list without a loop.\n[End]\n[New Answer]\n{answer}\n[End]\n```"
    parsed = parse_instruction_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections["New Answer"] == answer


def test_a_fenced_answer_between_readable_markers_stays_as_it_is():
    answer = "```text\nDear Ms Patel,\nThank you for the quick reply.\n```"
    parsed = parse_response_reflection(f"Review: too curt.\n\n[Better Answer]\n{answer}\n[End]")
    assert (parsed.status, parsed.sections["Better Answer"]) == ("ok", answer)


def test_closing_tags_end_their_sections():
    reply = ("[New Instruction]\nExplain what a leap year is and give the rule for it.\n[/New Instruction]\n\n"
             "[New Answer]\nA leap year has 366 days. It is every year divisible by 4, except centuries, "
             "unless divisible by 400.\n[/New Answer]")
    parsed = parse_instruction_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections == {
        "New Instruction": "Explain what a leap year is and give the rule for it.",
        "New Answer": "A leap year has 366 days. It is every year divisible by 4, except centuries, unless divisible by 400.",
    }
    better = parse_response_reflection("[Better Answer]\nBoil the eggs for nine minutes. [/Better Answer]\nThanks!")
    assert better.sections["Better Answer"] == "Boil the eggs for nine minutes."
