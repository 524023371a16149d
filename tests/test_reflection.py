"""Reflection: the tolerant parser, the prompts, and the two transforms on datasets through fault servers."""

from __future__ import annotations

import json
import pickle
import re

import pytest
from fault_server import FaultServer, reflection_answer

from srt_hf.errors import ConfigError
from srt_hf.reflection import (
    InstructionReflection,
    ReflectionConfig,
    ResponseReflection,
    builtin_template,
    is_placeholder,
    parse_instruction_reflection,
    parse_response_reflection,
)
from srt_hf.status import kind_of as status_kind
from srt_hf.teachers import EndpointTeacher, GenerationConfig

FAST = GenerationConfig(backoff_base=0.01, backoff_max=0.05, timeout=2.0, max_retries=2)


# -- parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply, instruction, answer",
    [
        ("[New Instruction] Write a poem. [End] [New Answer] Roses are red. [End]", "Write a poem.", "Roses are red."),
        ("[new instruction]\nWrite a poem.\n[END]\n[NEW ANSWER]\nRoses.\n[end]", "Write a poem.", "Roses."),
        ("[ New   Instruction ]:  Write a poem.  [ End ]\n[New Answer]: Roses. [End]", "Write a poem.", "Roses."),
        ("Analysis.\n**[New Instruction]**\nWrite a poem.\n**[End]**\n\n**[New Answer]**\nRoses.\n**[End]**", "Write a poem.", "Roses."),
        ("[New Instruction]\nWrite a poem.\n[End]\n[New Answer]\nRoses are red.", "Write a poem.", "Roses are red."),  # no final [End]
        ("[New Instruction]\nWrite a poem.\n[New Answer]\nRoses.", "Write a poem.", "Roses."),  # no [End] at all
        ("[New Instruction] Tell a story. [End]\n[New Answer] An Endless road.\nEnd of story. The End\n[End]",
         "Tell a story.", "An Endless road.\nEnd of story. The End"),
        ("### New Instruction\nWrite a poem.\n\n**New Answer:** Roses are **red**.", "Write a poem.", "Roses are **red**."),
        ("I will fill in the [New Instruction] below.\n[New Instruction]\nWrite a poem.\n[End]\n[New Answer]\nRoses.\n[End]",
         "Write a poem.", "Roses."),
    ],
)
def test_parser_is_tolerant(reply, instruction, answer):
    parsed = parse_instruction_reflection(reply)
    assert parsed.status == "ok"
    assert parsed.sections == {"New Instruction": instruction, "New Answer": answer}


def test_only_the_bracketed_end_ends_a_section():
    parsed = parse_response_reflection("Review.\n[Better Answer]\nEndless summer. End of story.\nEnding here.\n")
    assert parsed.sections["Better Answer"] == "Endless summer. End of story.\nEnding here."


@pytest.mark.parametrize(
    "reply, status",
    [
        ("", "parse_failed: empty reply"),
        (None, "parse_failed: empty reply"),
        ("Voici une réponse en français.", "parse_failed: no [New Instruction] section"),
        ("[New Instruction] Write a poem. [End] and nothing else", "parse_failed: no [New Answer] section"),
        ("[New Instruction] your instruction [End] [New Answer] An answer. [End]", "placeholder: [New Instruction] is 'your instruction'"),
        ("[New Instruction] Do it. [End] [New Answer] N/A [End]", "placeholder: [New Answer] is 'N/A'"),
        ("[New Instruction] ... [End] [New Answer] ok [End]", "placeholder: [New Instruction] is '...'"),
        ("[New Instruction] [End] [New Answer] ok [End]", "placeholder: [New Instruction] is empty"),
        ("[New Instruction]\nnew instruction here\n[End]\n[New Answer]\nok\n[End]", "placeholder: [New Instruction] is 'new instruction here'"),
    ],
)
def test_parse_failures_have_reasons(reply, status):
    assert parse_instruction_reflection(reply).status == status


@pytest.mark.parametrize("text", ["your instruction", "N/A", "...", "", "  ", "<your answer>", "(the better answer)",
                                  "Your new instruction here", "[Insert answer here]", "**TBD**"])
def test_placeholders(text):
    assert is_placeholder(text)


@pytest.mark.parametrize("text", ["Explain photosynthesis.", "No.", "4", "(a) and (b) are both correct because of X", "Answer: 42"])
def test_not_placeholders(text):
    assert not is_placeholder(text)


def test_an_echoed_prompt_is_a_failure():
    transform = InstructionReflection(EndpointTeacher("http://127.0.0.1:1", model="m"))
    prompt = transform.render(_example("Name a colour.", "", "Blue."))[0]["content"]
    skeleton = transform._templates()[2]
    assert parse_instruction_reflection(prompt, skeleton=skeleton).status == "parse_failed: reply echoes the prompt"
    # without the skeleton the template's own slots are caught as placeholders
    assert parse_instruction_reflection(prompt).status.startswith("placeholder")
    good = reflection_answer([{"role": "user", "content": prompt}], {})
    assert parse_instruction_reflection(good, skeleton=skeleton).ok


def test_reusing_the_template_questions_is_not_an_echo():
    transform = InstructionReflection(EndpointTeacher("http://127.0.0.1:1", model="m"))
    skeleton = transform._templates()[2]
    questions = [line for line in skeleton.splitlines() if line.startswith("- ")]
    reply = "\n".join(f"{q}\nYes, mostly.\n" for q in questions)
    reply += "\n[New Instruction]\nName three primary colours.\n[End]\n[New Answer]\nRed, yellow, blue.\n[End]"
    parsed = parse_instruction_reflection(reply, skeleton=skeleton)
    assert parsed.ok and parsed.sections["New Answer"] == "Red, yellow, blue."
    # the same reply with sections copied from the prompt is an echo
    copied = "\n".join(questions) + "\n[New Instruction] Step 1. [End] [New Answer] Review the answer. [End]"
    assert parse_instruction_reflection(copied, skeleton=skeleton).status == "parse_failed: reply echoes the prompt"


def test_an_echoed_custom_prompt_is_a_failure():
    template = ("Read the task below and think about how clear and specific it is for a student.\n"
                "Then think carefully about whether the answer is helpful, relevant and accurate.\n"
                "Write the improved task between [New Instruction] and [End], and its answer between [New Answer] and [End].\n"
                "Task: {{ instruction }}\nAnswer: {{ response }}")
    transform = InstructionReflection(EndpointTeacher("http://127.0.0.1:1", model="m"), template=template)
    prompt = transform.render(_example("Name a colour.", "", "Blue."))[0]["content"]
    # markers in the middle of a line are not markers (issue 9): the bare parser is not fooled by "and" between them
    assert parse_instruction_reflection(prompt).status == "parse_failed: no [New Instruction] section"
    skeleton = transform._templates()[2]
    assert parse_instruction_reflection(prompt, skeleton=skeleton).status == "parse_failed: reply echoes the prompt"
    # markers on their own lines around filler that is not a placeholder fool the bare parser, not the skeleton
    template = template.replace("between [New Instruction] and [End], and its answer between [New Answer] and [End].",
                                "and its answer like this:\n[New Instruction]\nthe improved task\n[End]\n"
                                "[New Answer]\nits worked solution\n[End]")
    transform = InstructionReflection(EndpointTeacher("http://127.0.0.1:1", model="m"), template=template)
    prompt = transform.render(_example("Name a colour.", "", "Blue."))[0]["content"]
    assert parse_instruction_reflection(prompt).sections == {"New Instruction": "the improved task",
                                                             "New Answer": "its worked solution"}
    skeleton = transform._templates()[2]
    assert parse_instruction_reflection(prompt, skeleton=skeleton).status == "parse_failed: reply echoes the prompt"


def _example(instruction, input, response):
    from srt_hf.formats import Example

    return Example(instruction, input, response, [{"role": "user", "content": instruction}])


# -- prompts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["instruction_reflection", "instruction_reflection_input", "response_reflection", "response_reflection_input"])
def test_builtin_prompts_ask_for_the_markers(name):
    text = builtin_template(name)
    markers = ["[Better Answer]", "[End]"] if name.startswith("response") else ["[New Instruction]", "[New Answer]", "[End]"]
    assert all(m in text for m in markers)
    assert ("{{ input }}" in text) == name.endswith("_input")
    for criterion in ("helpfulness", "relevance", "accuracy", "level of detail"):
        assert criterion in text
    if name.startswith("instruction"):
        for criterion in ("complexity", "level of detail", "knowledge", "ambiguity", "reasoning"):
            assert criterion in text


def test_rows_with_input_use_the_input_template():
    transform = ResponseReflection(EndpointTeacher("http://127.0.0.1:1", model="m"))
    with_input = transform.render(_example("Summarise.", "A long text.", "Short."))[0]["content"]
    without = transform.render(_example("Summarise.", "", "Short."))[0]["content"]
    assert "### Input\nA long text." in with_input and "### Input" not in without


def test_custom_templates(tmp_path):
    teacher = EndpointTeacher("http://127.0.0.1:1", model="m")
    path = tmp_path / "mine.jinja"
    path.write_text("Improve: {{ instruction }} / {{ response }}{% if input %} / {{ input }}{% endif %}")
    transform = ResponseReflection(teacher, template=str(path))
    assert transform.render(_example("Q", "I", "A"))[0]["content"] == "Improve: Q / A / I"
    inline = ResponseReflection(teacher, template="Just {{ response }}")
    assert inline.render(_example("Q", "", "A"))[0]["content"] == "Just A"
    with pytest.raises(ConfigError, match="`template`"):
        ResponseReflection(teacher, template="missing-file.jinja")
    with pytest.raises(ConfigError, match="not a valid Jinja"):
        ResponseReflection(teacher, template="{{ broken")
    with pytest.raises(ConfigError, match="`template_with_input` cannot be rendered"):
        ResponseReflection(teacher, template_with_input="{{ instruction }} {{ reference }}")


# -- transforms on datasets ------------------------------------------------------------------------
ROWS = [
    {"instruction": "Describe item-0.", "input": "", "output": "It is red."},
    {"instruction": "Describe item-1.", "input": "Context for item-1.", "output": "It is blue."},
    {"instruction": "Describe item-2.", "input": "", "output": "It is green."},
    {"instruction": "", "input": "", "output": "Nothing asked."},
    {"instruction": None, "input": "", "output": "Unreadable."},
    {"instruction": "Describe item-5.", "input": "", "output": ""},
]


def tagged_answer(messages, body):
    """A well-formed reflection that names the row it came from."""
    tag = re.search(r"item-\d+", messages[-1]["content"]).group(0)
    if "[Better Answer]" in messages[-1]["content"]:
        return f"Review.\n[Better Answer]\nA better answer about {tag}.\n[End]"
    return f"Review.\n[New Instruction]\nExplain {tag} fully.\n[End]\n[New Answer]\n{tag} explained.\n[End]"


def dataset(rows=ROWS):
    import datasets

    return datasets.Dataset.from_list(rows)


def test_instruction_reflection_on_a_dataset():
    with FaultServer(answer=tagged_answer) as server:
        transform = InstructionReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off")
        out = dataset().map(transform, batched=True, batch_size=4, features=None)
    assert len(out) == len(ROWS)
    assert out.column_names == ["instruction", "input", "output", *transform.output_columns()]
    assert transform.output_columns() == ["instruction_reflected", "input_reflected", "response_reflected", "instruction_reflection_status"]
    status = out["instruction_reflection_status"]
    assert status == ["ok", "ok", "ok", "empty_input: empty instruction", "invalid: 'instruction' is None", "ok"]
    assert out["instruction_reflected"][:3] == ["Explain item-0 fully.", "Explain item-1 fully.", "Explain item-2 fully."]
    assert out["response_reflected"][1] == "item-1 explained." and out["input_reflected"][1] == ""
    assert out["instruction_reflected"][3] == "" and out["response_reflected"][3] == "Nothing asked."  # original kept
    assert out["response_reflected"][4] == ""  # an unreadable row has no original to keep
    assert all(isinstance(v, str) for c in transform.output_columns() for v in out[c])
    assert server.requests == 4 and not server.repeated_prompts()


def test_response_reflection_with_prefix_and_features():
    with FaultServer(answer=tagged_answer) as server:
        transform = ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off", output_prefix="rr_", keep_raw_reply=True)
        out = dataset(ROWS[:3]).map(transform, batched=True, features=None)
        assert transform.output_columns() == ["rr_response_reflected", "rr_response_reflection_status", "rr_response_reflection_raw"]
        assert out["rr_response_reflected"] == [f"A better answer about item-{i}." for i in range(3)]
        assert out["rr_response_reflection_status"] == ["ok"] * 3
        assert out["rr_response_reflection_raw"][0].startswith("Review.")
        assert set(transform.features) == set(transform.output_columns())
        assert all(f.dtype == "string" for f in transform.features.values())


def test_chat_formats_are_read():
    rows = [
        {"messages": [{"role": "user", "content": "Describe item-7."}, {"role": "assistant", "content": "Gray."}]},
        {"messages": [{"role": "system", "content": "Be brief."}]},
    ]
    with FaultServer(answer=tagged_answer) as server:
        out = dataset(rows).map(ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off"), batched=True)
        pc = dataset([{"prompt": "Describe item-8.", "completion": "Pink."}]).map(
            InstructionReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off"), batched=True)
    assert out["response_reflected"][0] == "A better answer about item-7." and out["response_reflection_status"][0] == "ok"
    assert out["response_reflection_status"][1].startswith("invalid:")
    assert pc["instruction_reflected"] == ["Explain item-8 fully."]


def test_column_mapping_settings():
    rows = [{"q": "Describe item-9.", "a": "Teal."}]
    with FaultServer(answer=tagged_answer) as server:
        transform = ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off", instruction_column="q", response_column="a")
        assert dataset(rows).map(transform, batched=True)["response_reflected"] == ["A better answer about item-9."]


def test_a_parse_failure_is_retried_once_as_a_new_request():
    asked: dict[str, int] = {}

    def flaky(messages, body):
        key = messages[-1]["content"]
        asked[key] = asked.get(key, 0) + 1
        return "no markers this time" if asked[key] == 1 else tagged_answer(messages, body)

    with FaultServer(answer=flaky) as server:
        transform = InstructionReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off")
        out = dataset(ROWS[:2]).map(transform, batched=True)
        assert out["instruction_reflection_status"] == ["ok", "ok"]
        assert server.requests == 4
        assert transform.counts == {"ok": 2, "parse_retries": 2, "layout_markers": 2}
        first, retry = sorted((e["body"] for e in server.log), key=lambda b: b["seed"])[1:3]
        assert (first["seed"], first["temperature"]) == (0, 0.0) and (retry["seed"], retry["temperature"]) == (1, 0.7)


@pytest.mark.parametrize(
    "answer, fault, status",
    [
        ("garbage", None, "parse_failed: no [New Instruction] section (after retry)"),
        ("french", None, "parse_failed: no [New Instruction] section (after retry)"),
        ("echo", None, "parse_failed: reply echoes the prompt (after retry)"),
        ("empty", None, "parse_failed: empty reply (after retry)"),
        ("null", None, "parse_failed: empty reply (after retry)"),
        ("reflection", "malformed", "request_failed: malformed reply"),
        ("reflection", "500", "request_failed: HTTP 500"),
    ],
)
def test_bad_teachers_give_statuses_never_lost_rows(answer, fault, status):
    rows = ROWS[:3]
    with FaultServer(answer=answer, failure_rate=1.0 if fault else 0.0, failure_kind=fault or "500") as server:
        transform = InstructionReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off")
        out = dataset(rows).map(transform, batched=True, batch_size=2)
    assert out["instruction_reflection_status"] == [status] * 3
    assert out["instruction_reflected"] == [r["instruction"] for r in rows]
    assert out["input_reflected"] == [r["input"] for r in rows]
    assert out["response_reflected"] == [r["output"] for r in rows]
    assert {status_kind(s) for s in out["instruction_reflection_status"]} <= {"parse_failed", "request_failed"}


def test_placeholder_replies_are_reported():
    def lazy(messages, body):
        return "[Better Answer]\n(the better answer)\n[End]"

    with FaultServer(answer=lazy) as server:
        transform = ResponseReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off", retry_parse_failures=False)
        out = dataset(ROWS[:2]).map(transform, batched=True)
        assert server.requests == 2  # no retry when switched off
    assert out["response_reflection_status"] == ["placeholder: [Better Answer] is '(the better answer)'"] * 2
    assert out["response_reflected"] == ["It is red.", "It is blue."]


def test_rerun_is_served_from_the_cache(tmp_path):
    with FaultServer(answer=tagged_answer) as server:
        teacher = EndpointTeacher(server.url, model="m", config=FAST, cache_path=tmp_path / "cache.sqlite")
        first = dataset().map(InstructionReflection(teacher, structured="off"), batched=True)
        sent = server.requests
        again = dataset().map(InstructionReflection(teacher, structured="off"), batched=True)
        assert server.requests == sent
        assert again["instruction_reflected"] == first["instruction_reflected"]


def test_num_proc_workers_build_their_own_clients(tmp_path):
    rows = [{"instruction": f"Describe item-{i}.", "input": "", "output": "x"} for i in range(8)]
    with FaultServer(answer=tagged_answer) as server:
        transform = InstructionReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off")
        out = dataset(rows).map(transform, batched=True, batch_size=2, num_proc=2)
        assert server.requests == 8
    assert out["instruction_reflected"] == [f"Explain item-{i} fully." for i in range(8)]


# -- fingerprints and pickling ---------------------------------------------------------------------
def _hash(obj) -> str:
    from datasets.fingerprint import Hasher

    return Hasher.hash(obj)


def test_fingerprint_is_stable_and_follows_what_matters():
    def make(**kw):
        teacher = EndpointTeacher("http://127.0.0.1:1", model=kw.pop("model", "m"), config=kw.pop("config", GenerationConfig()))
        return InstructionReflection(teacher, **kw)

    base = _hash(make())
    assert base == _hash(make())
    assert base != _hash(make(model="other"))
    assert base != _hash(make(config=GenerationConfig(temperature=0.5)))
    assert base != _hash(make(template="Reflect on {{ instruction }} and {{ response }}"))
    assert base != _hash(make(output_prefix="x_"))
    assert base != _hash(ResponseReflection(EndpointTeacher("http://127.0.0.1:1", model="m")))


def test_pickle_holds_no_client_after_use():
    with FaultServer(answer=tagged_answer) as server:
        transform = InstructionReflection(EndpointTeacher(server.url, model="m", config=FAST), structured="off")
        before = _hash(transform)
        dataset(ROWS[:2]).map(transform, batched=True)
        blob = pickle.dumps(transform)
        assert b"AsyncInferenceClient" not in blob and b"httpx" not in blob and b"Semaphore" not in blob
        assert _hash(transform) == before  # using it changed nothing datasets hashes
        clone = pickle.loads(blob)
        assert clone.templates == transform.templates and clone.output_columns() == transform.output_columns()
        assert dataset(ROWS[:1]).map(clone, batched=True)["instruction_reflection_status"] == ["ok"]


def test_reduce_names_version_config_prompt_and_teacher():
    from srt_hf import __version__

    transform = ResponseReflection(EndpointTeacher("http://127.0.0.1:1", model="m"))
    _, (cls, version, config, templates, identity, _teacher) = transform.__reduce__()
    assert cls is ResponseReflection and version == __version__
    assert config == json.loads(json.dumps(config)) and templates[0][0] == builtin_template("response_reflection")
    assert templates[1] == (builtin_template("response_reflection_json"), builtin_template("response_reflection_input_json"))
    assert identity == {"kind": "endpoint", "model": "m", "generation": GenerationConfig().generation_settings()}


# -- the local teacher end to end ------------------------------------------------------------------
@pytest.mark.slow
def test_local_teacher_reflection(tiny_model_dir):
    from srt_hf.teachers import LocalTeacher

    teacher = LocalTeacher(str(tiny_model_dir), config=GenerationConfig(max_new_tokens=8, batch_size=4), device="cpu")
    out = dataset(ROWS[:3]).map(InstructionReflection(teacher, structured="off"), batched=True)
    assert len(out) == 3
    # a random model never stops by itself within 8 tokens: truncated, final (not retried), originals kept
    assert all(status_kind(s) == "truncated" for s in out["instruction_reflection_status"])
    assert out["instruction_reflected"] == [r["instruction"] for r in ROWS[:3]]
    assert teacher.stats.requests_sent == 3


def test_config_object_or_keywords():
    teacher = EndpointTeacher("http://127.0.0.1:1", model="m")
    assert InstructionReflection(teacher, ReflectionConfig(output_prefix="a_")).output_columns()[0] == "a_instruction_reflected"
    with pytest.raises(ConfigError, match="not both"):
        InstructionReflection(teacher, ReflectionConfig(), output_prefix="x_")
    with pytest.raises(ConfigError, match="needs a teacher"):
        InstructionReflection("http://127.0.0.1:1")
