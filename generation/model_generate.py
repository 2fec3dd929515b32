"""`model.generate(**inputs, ...)`: transformers' way of calling generate(), so seed 000's calls run as written.

    inputs = tokenizer(["Hello"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=64, entropy_decoding="trough", return_dict_in_generate=True)
    out.sequences, out.scores, out.logits, out.entropy_selected_layer_indices

What changes against `generate(model, input_ids, attention_mask, ...)` (generation/api.py), as in transformers:
- the prompt comes as `inputs` (positional) or `input_ids=` (by name), the mask as `attention_mask=`;
- it returns the (B, T + new) sequences tensor, or the whole GenerateOutput with return_dict_in_generate=True;
- without a `generator`, sampling and random_after draw from torch's global generator, so torch.manual_seed(...)
  makes a run reproducible (transformers samples with torch.multinomial on that generator).
"""

from __future__ import annotations

from typing import Any

import torch

from .api import generate
from .loop import GenerateOutput, global_generator


def generate_like_transformers(model, inputs: torch.Tensor | None = None, *, input_ids: torch.Tensor | None = None,
                               attention_mask: torch.Tensor | None = None, return_dict_in_generate: bool = False,
                               **options: Any) -> torch.Tensor | GenerateOutput:
    """inputs or input_ids (B, T) left-padded, attention_mask (B, T); options: those of generate().
    Returns the sequences (B * num_return_sequences, T + new), or with return_dict_in_generate=True the
    GenerateOutput (.sequences, .scores with output_scores=True, .logits with output_logits=True, the records)."""
    if inputs is not None and input_ids is not None:
        raise ValueError("give the prompt once: as inputs (the first argument) or as input_ids=, not both")
    prompt = inputs if inputs is not None else input_ids
    if not isinstance(prompt, torch.Tensor):
        raise ValueError("model.generate needs the prompt ids as a (B, T) tensor: model.generate(**tokenizer(texts, "
                         f"return_tensors='pt'), ...) or model.generate(input_ids, ...), got {type(prompt).__name__}")
    if not isinstance(return_dict_in_generate, bool):
        raise ValueError(f"return_dict_in_generate must be True or False, got {return_dict_in_generate!r}")
    if options.get("generator") is None:
        options["generator"] = global_generator(model.device)
    out = generate(model, prompt, attention_mask, **options)
    return out if return_dict_in_generate else out.sequences
