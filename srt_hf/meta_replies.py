"""Meta replies: a teacher's "new" text that talks about a text instead of being one.

    meta_reason("New Answer", "This is a high-quality answer to the provided instruction.")
    # 'the [New Answer] talks about the answer ("This is a high-quality answer to the provided instruction.")'
    meta_reason("New Answer", "The answer is 42.")       # None: an answer that happens to start so

Small teachers often fill a section with commentary ("The new answer is a great example of …"), praise ("This is
a high-quality answer to the provided instruction.") or the task restated ("Write a high-quality answer to the
improved instruction."). Such a text parses, and a student may even prefer it, but it teaches nothing: the
reflection transforms mark the row ``rejected: meta reply …`` and keep the original.

The rule, on the text's first sentence (the whole text when it is short):

* a sentence about "the/this/your (new|improved|original|provided …) answer|response|instruction|question|example"
  that judges it (great, good, clear, accurate, high-quality, well written, covers, addresses, follows …);
* "This is a/an … answer|response|instruction|example";
* the task's own wording: "the provided/given/original/above instruction", "the improved instruction",
  "your review", "step 3", "the requested layout", "high-quality answer";
* a text that opens by announcing itself ("Here is the improved instruction", "Below is a better answer");
* a text that ends by praising itself ("This is a very accurate answer.", "This is a great example …").

A plain answer that mentions "the answer" without judging it ("The answer is 42.") passes.
"""

from __future__ import annotations

import re

_TEXT = r"(?:answer|response|instruction|question|prompt|reply|example|text|version|task|improvement|revision|edit|json object)s?"
_QUALIFIER = (r"(?:new|improved|revised|better|original|provided|given|above|following|updated|rewritten|previous|"
              r"initial|same|recorded|model'?s?|assistant'?s?)")
# "the answer", "this new answer", "your improved instruction", "the provided response"
_SUBJECT = rf"\b(?:the|this|that|your|my|our)\s+(?:{_QUALIFIER}\s+){{0,3}}{_TEXT}\b"
# what a sentence about a text goes on with: "is", "provides", "effectively covers" …
_VERB = (r"(?:is|was|are|were|does|do|has|have|provides|gives|offers|seems|looks|reads|remains|now|also|already|"
         r"effectively|clearly|successfully|accurately|nicely|well|meets|enhances|improves|makes|adds|requires)")
_JUDGEMENT = (
    r"\b(?:great|good|excellent|perfect|high[- ]quality|well[- ](?:written|structured|organi[sz]ed|crafted)|clear(?:ly)?|"
    r"concise|comprehensive|accurate|correct|helpful|relevant|detailed|informative|thorough|appropriate|effective(?:ly)?|"
    r"improv(?:es|ed|ement)|covers?|address(?:es|ed)?|follows?|meets?|captures?|demonstrates?|provides? (?:a|an|the)|"
    r"quality|clarity|requirements?|"
    r"is (?:a|an) (?:\w+ ){0,2}(?:example|answer|response|instruction))\b"
)
_ABOUT_TEXT = re.compile(rf"^\W*(?:[\w']+,?\s+){{0,3}}?{_SUBJECT}\s+{_VERB}\b(?:\W+\S+){{0,6}}?\W+{_JUDGEMENT}",
                         re.IGNORECASE)
_THIS_IS_A = re.compile(rf"^\W*(?:this|that|it)\s+is\s+(?:a|an|the|my)\b.{{0,60}}?\b{_TEXT}\b", re.IGNORECASE)
_TASK_WORDS = re.compile(
    r"\b(?:the|this|that)\s+(?:provided|given|original|above|improved)\s+(?:instruction|answer|response)|"
    r"\byour review\b|\brequested layout\b|\bhigh[- ]quality answer\b|\bimproved instruction\b",
    re.IGNORECASE,
)
_ANNOUNCES = re.compile(
    r"^\W*(?:here\s+is|here's|below\s+is|i\s+have|i've|i\s+will|i'll)\b.{0,40}?"
    r"\b(?:(?:improved|new|better|revised|rewritten|updated)\s+(?:instruction|answer|response|version)|json object)\b",
    re.IGNORECASE,
)
_PRAISE = (r"(?:great|good|excellent|perfect|high[- ]quality|accurate|detailed|interesting|clear|comprehensive|"
           r"thorough|helpful|informative|well[- ]written)")
_SELF_PRAISE = re.compile(rf"^\W*(?:this|that|it)\s+is\s+(?:a|an)\s+(?:very\s+|really\s+|truly\s+)?{_PRAISE}\b"
                          rf"(?:[\s,-]+\w+){{0,2}}?\s+(?:answer|response|explanation|instruction|example|question)\b",
                          re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
_SHORT_WORDS = 40


def _first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0][:300]


def _last_sentence(text: str) -> str:
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    return sentences[-1][:300] if sentences else ""


def _what(sentence: str) -> str:
    """What the sentence talks about: the instruction or the answer (whichever it names first)."""
    found = re.search(r"instruction|question|prompt|task|answer|response|reply", sentence, re.IGNORECASE)
    word = found.group(0).lower() if found else "answer"
    return "the instruction" if word in ("instruction", "question", "prompt", "task") else "the answer"


def meta_reason(section: str, text: str) -> str | None:
    """Why ``text`` (the new text of ``section``, e.g. "New Answer") is a meta reply, or None when it is a real one."""
    core = " ".join(text.split())
    if not core:
        return None
    first = _first_sentence(text)
    short = len(core.split()) <= _SHORT_WORDS
    scope = core if short else first
    quote = core if len(core) <= 80 else core[:79].rstrip() + "…"
    if _ABOUT_TEXT.search(first) or _THIS_IS_A.search(first):
        return f'the [{section}] talks about {_what(first)} ("{quote}")'
    if _ANNOUNCES.search(first) and short:
        return f'the [{section}] announces a text instead of being one ("{quote}")'
    if _TASK_WORDS.search(scope):
        return f'the [{section}] restates the task ("{quote}")'
    last = _last_sentence(text)
    if _SELF_PRAISE.search(last):
        return f'the [{section}] ends by praising itself ("{last[:80]}")'
    return None


def first_meta_reason(sections: dict[str, str], names: tuple[str, ...]) -> str | None:
    """The first section among ``names`` whose text is a meta reply, and why (None: all are real texts)."""
    for name in names:
        reason = meta_reason(name, sections.get(name, ""))
        if reason:
            return reason
    return None


__all__ = ["first_meta_reason", "meta_reason"]
