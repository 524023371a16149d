"""Logits processors that keep a small local teacher's replies finite: no loops, JSON strings that end.

    processors = [ReplyRepeatGuard(5, prompt_length), StringLengthNudge(tokenizer, 400, prompt_length)]

A 135M model decoding greedily repeats itself until ``max_new_tokens``, and under a JSON grammar it
rarely closes a string on its own, so nearly every structured reply is cut off. Both processors act on
the reply only (tokens from ``prompt_length`` on) and change scores by finite amounts, so that a grammar
applied after them always keeps a token to choose; on a model that ends its replies well they change
nothing. :class:`.local.LocalTeacher` turns them on for the embedded model.
"""

from __future__ import annotations

import torch

PENALTY = 1e4  # "never, unless nothing else is allowed"


class ReplyRepeatGuard:
    """Keeps each reply from repeating one of its own n-grams.

    Unlike transformers' ``no_repeat_ngram_size`` it ignores the prompt, so a rewrite may still quote the
    text it improves. The n-grams seen are kept per row and grown by the new token each step.
    """

    def __init__(self, n: int, prompt_length: int):
        self.n, self.prompt_length = n, prompt_length
        self.seen: list[dict[tuple[int, ...], set[int]]] = []
        self.rows = _ReplyTokens(prompt_length)
        self.recorded = 0  # reply tokens already turned into n-grams

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = self.rows.update(input_ids)  # (B, T) reply tokens so far
        if not self.seen:
            self.seen = [{} for _ in rows]
        n = self.n
        for b, (row, seen) in enumerate(zip(rows, self.seen)):
            for end in range(max(self.recorded, n - 1) + 1, len(row) + 1):  # n-grams ending at new tokens
                seen.setdefault(tuple(row[end - n:end - 1]), set()).add(row[end - 1])
            banned = seen.get(tuple(row[len(row) - n + 1:])) if len(row) >= n - 1 else None
            if banned:
                scores[b, list(banned)] -= PENALTY
        self.recorded = len(rows[0]) if rows else 0
        return scores


class _ReplyTokens:
    """Each row's reply tokens as Python lists, grown by the new columns only.

    Reading the whole reply back every step costs O(T) per step (and a device-to-host copy of it on a GPU);
    reading only the tokens added since the last call keeps a guard's cost per step flat.
    """

    def __init__(self, prompt_length: int):
        self.prompt_length = prompt_length
        self.rows: list[list[int]] = []

    def update(self, input_ids: torch.Tensor) -> list[list[int]]:
        done = len(self.rows[0]) if self.rows else 0
        new = input_ids[:, self.prompt_length + done:].tolist()  # (B, new columns): one column per step
        if not self.rows:
            self.rows = new
        else:
            for row, tokens in zip(self.rows, new):
                row.extend(tokens)
        return self.rows


class StringLengthNudge:
    """Past ``soft_chars`` characters of a JSON string, favours the tokens that close it, more with each character.

    A soft limit, like transformers' ``exponential_decay_length_penalty`` for the end of a reply: the
    string still ends where the model finds a place to end it (after a sentence, mostly), not mid-word as
    a hard ``maxLength`` would cut it. Tracks each row's JSON string state (inside a string, escapes,
    length) from the decoded tokens.
    """

    def __init__(self, tokenizer, soft_chars: int, prompt_length: int, per_char: float = 0.02):
        self.pieces, self.closers = _pieces(tokenizer)
        self.soft_chars, self.prompt_length, self.per_char = soft_chars, prompt_length, per_char
        self.state: list[list] = []  # per row: [in string, after a backslash, string length, tokens read]
        self.rows = _ReplyTokens(prompt_length)
        self._closers_on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = self.rows.update(input_ids)
        if not self.state:
            self.state = [[False, False, 0, 0] for _ in rows]
        for b, (row, state) in enumerate(zip(rows, self.state)):
            for token in row[state[3]:]:
                _advance(state, self.pieces[token] if token < len(self.pieces) else "")
            state[3] = len(row)
            over = state[2] - self.soft_chars
            if state[0] and over > 0:
                scores[b, self._closers(scores.device)] += self.per_char * over
        return scores

    def _closers(self, device: torch.device) -> torch.Tensor:
        """The closing token ids on ``device``, copied there once (not once per row and step)."""
        if device not in self._closers_on:
            self._closers_on[device] = self.closers.to(device)
        return self._closers_on[device]


def _advance(state: list, text: str) -> None:
    for ch in text:
        if not state[0]:
            if ch == '"':
                state[0], state[2] = True, 0
        elif state[1]:
            state[1], state[2] = False, state[2] + 1
        elif ch == "\\":
            state[1] = True
        elif ch == '"':
            state[0] = False
        else:
            state[2] += 1


_PIECES: dict[int, tuple[list[str], torch.Tensor]] = {}


def _pieces(tokenizer) -> tuple[list[str], torch.Tensor]:
    """Each token id's text, and the ids whose text holds a quote but no backslash (those that can close a string)."""
    key = id(tokenizer)
    if key not in _PIECES:
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        closers = torch.tensor([i for i, p in enumerate(pieces) if '"' in p and "\\" not in p], dtype=torch.long)
        _PIECES[key] = (pieces, closers)
    return _PIECES[key]
