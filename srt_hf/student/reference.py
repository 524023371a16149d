"""The public reference scripts' per-row computation of the reflection preset (the yardstick of tests and benchmarks).

    rows = [{"instruction": ..., "input": ..., "response": ...}, ...]
    expected = reference_losses(model, tokenizer, rows, template="vicuna")   # [{"loss_A_cond": ..., ...}, ...]

What Selective Reflection-Tuning's ``selection_code/data_analysis.py`` does for every row: four separate
forward passes at batch size 1 through ``model(input_ids, labels=labels)`` — full logits at every
position, the loss over the whole vocabulary — with the preset's tokenization and truncation. Slow on
purpose: it is what :class:`srt_hf.IFDScorer` must equal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..templates import format_prompt, format_reverse_prompt


def reference_losses(
    model,
    tokenizer,
    rows: list[dict],
    template: str = "vicuna",
    max_length: int = 2048,
    on_pass: Callable[[int], None] | None = None,
) -> list[dict[str, float]]:
    """The four losses of every row, the reference way; ``on_pass(n_tokens)`` is told the length of each pass."""
    device = model.device

    def encode(text: str, budget: int) -> torch.Tensor:
        return tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=budget).to(device)

    def loss(ids: torch.Tensor, start: int) -> float:
        labels = ids.clone()
        labels[0, :start] = -100
        if on_pass is not None:
            on_pass(ids.shape[1])
        return model(ids, labels=labels, output_hidden_states=True).loss.item()  # the scripts ask for the states too

    def whole_text(text: str, budget: int) -> float:
        return loss(encode(text, budget), 0)

    def part_text(text: str, target: str, budget: int) -> float:
        start = len(tokenizer.encode(text[: text.rfind(target)]))
        return loss(encode(text, budget), start)

    out = []
    with torch.no_grad():
        for r in rows:
            prompt = format_prompt(template, r["instruction"], r["input"])
            reverse = format_reverse_prompt(template, r["response"])
            prompt_len = encode(prompt, max_length).shape[1]
            reverse_len = encode(reverse, max_length).shape[1]
            out.append({
                "loss_Q_direct": whole_text(r["instruction"] + r["input"], max_length - reverse_len + 1),
                "loss_A_direct": whole_text(r["response"], max_length - prompt_len + 1),
                "loss_Q_cond": part_text(reverse + r["instruction"] + r["input"], r["instruction"], max_length),
                "loss_A_cond": part_text(prompt + r["response"], r["response"], max_length),
            })
    return out
