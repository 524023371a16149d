"""The student's own output head, run on chosen hidden states: logits exactly as its ``forward`` makes them.

    head = OutputHead(model)
    losses = head.token_losses(hidden, targets)   # (K,) float64 cross-entropy of each target token

A causal LM's ``forward`` is: body → hidden states → (whatever the architecture does) → LM head →
(scaling, soft-capping, ...). Re-implementing that tail per architecture is how Granite's
``logits_scaling`` got lost once. Instead this runs the model's own ``forward`` with its body replaced by
a stand-in that hands back the hidden states it is given, so every post-processing step a model class
applies — Granite's division, Cohere's ``logit_scale``, Gemma's soft-capping, whatever a new
architecture adds — happens by construction, on only the rows that carry labels, in bounded chunks.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

# Float32 logits held at once: bounds the memory of the head whatever the vocabulary or batch size.
CHUNK_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}


class _BodyOutput:
    """What the stand-in body returns: the given hidden states, and None for every other output field."""

    def __init__(self, hidden: torch.Tensor):
        self.last_hidden_state = hidden

    def __getitem__(self, index):
        return (self.last_hidden_state,)[index]

    def __getattr__(self, name):  # cache, hidden_states, attentions, router_logits, ... (only missing names land here)
        if name.startswith("__"):
            raise AttributeError(name)


class _GivenHidden(torch.nn.Module):
    """Stands in for the model body: returns the hidden states passed as ``inputs_embeds``."""

    def forward(self, *args, inputs_embeds: torch.Tensor | None = None, **kwargs) -> _BodyOutput:
        return _BodyOutput(inputs_embeds)


class OutputHead:
    """The LM head and logit post-processing of ``model``, applied to hidden states of the body's last layer."""

    def __init__(self, model):
        prefix = model.base_model_prefix
        if prefix not in model._modules:
            raise TypeError(f"{type(model).__name__} keeps its body outside `{prefix}`; its head cannot be run alone")
        # A shallow copy shares every parameter; only its body is swapped, the user's model is left as it is.
        view = copy.copy(model)
        view._modules = dict(model._modules)
        view._modules[prefix] = _GivenHidden()
        self.view = view
        self.forward = type(model).forward  # the class's forward: instance-level wrappers (accelerate hooks) call the real body
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        device = model.get_output_embeddings().weight.device
        self.chunk_rows = max(1, CHUNK_BYTES.get(device.type, CHUNK_BYTES["cuda"]) // (4 * self.vocab_size))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(K, hidden) → (K, vocab) logits in the model's dtype, as the model's own forward computes them."""
        out = self.forward(self.view, inputs_embeds=hidden[None])
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[0]

    def token_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        """Cross-entropy of each target under the head, computed in float32 like transformers' loss."""
        return self.token_losses_on_device(hidden, targets).double().cpu().numpy()

    def token_losses_on_device(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(K,) float32 cross-entropy of each target, left on the model's device (no host sync)."""
        out = []
        for i in range(0, hidden.shape[0], self.chunk_rows):
            logits = self.logits(hidden[i : i + self.chunk_rows]).float()  # (k, V)
            out.append(torch.nn.functional.cross_entropy(logits, targets[i : i + self.chunk_rows], reduction="none"))
        return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)
