"""Meta replies (a new text about the text, not a text) are told from real ones, and rejected in a reflection."""

from __future__ import annotations

import pytest
from fault_server import FaultServer

from srt_hf.meta_replies import meta_reason
from srt_hf.reflection import ResponseReflection
from srt_hf.status import REJECTED, kind_of
from srt_hf.teachers import EndpointTeacher, GenerationConfig


@pytest.mark.parametrize("text", [
    "This is a high-quality answer to the provided instruction.",
    "The new answer is a great example of how to explain recursion to a beginner.",
    "The response provides a clear overview of the causes of the First World War.",
    "Overall, the answer effectively covers the main steps of making bread.",
    "The instruction is clear and asks for a detailed explanation of photosynthesis.",
    "Write a high-quality answer to the improved instruction.",
    "Here is the improved instruction: describe the water cycle.",
    "Here's a JSON object that provides more details: {",
    "This is the most accurate and helpful edit.",
    "This improvement enhances the quality of the response by adding context.",
    "Your revised question meets all requirements for an effective edit request.",
    "Water boils at 100 degrees Celsius at sea level. This is a very accurate answer, based on the right facts.",
])
def test_commentary_praise_and_the_task_restated_are_meta(text):
    assert meta_reason("New Answer", text)


@pytest.mark.parametrize("text", [
    "The answer is 42.",
    "To find the answer, first check that the input is correct, then divide.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Here is an example of a haiku:\nAn old silent pond / a frog jumps in / splash, silence again.",
    "Step 3: fold the egg whites into the batter.",
    "Rewrite the following response so that it sounds more polite.",
    "Explain why the answer to 0.1 + 0.2 is not exactly 0.3 in floating point.",
    "Ice melting in your hand takes heat from the skin. This is an example of an endothermic process.",
])
def test_real_texts_pass(text):
    assert meta_reason("New Answer", text) is None


def _praise(messages: list[dict], body: dict) -> str:
    return "Review: fine.\n\n[Better Answer]\nThe answer is clear, accurate and well written.\n[End]"


def test_a_meta_reply_is_rejected_and_keeps_the_original():
    fast = GenerationConfig(max_retries=0, timeout=5)
    with FaultServer(answer=_praise, structured="reject") as server:
        transform = ResponseReflection(EndpointTeacher(server.url, model="m", config=fast), structured="off")
        out = transform({"instruction": ["Name a prime number."], "input": [""], "output": ["7"]})
    status = out["response_reflection_status"][0]
    assert kind_of(status) == REJECTED and "meta reply" in status and "talks about the answer" in status
    assert out["response_reflected"] == ["7"]
    assert transform.counts[REJECTED] == 1
