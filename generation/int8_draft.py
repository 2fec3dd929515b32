"""A draft for speculative decoding on one machine: the target's own int8 copy (`int8_draft(target)`).

The copy shares every tensor of the target that quantization leaves alone (the embedding, the norms, the
rotary tables) and holds its matrices as int8 with one scale per row (`quantize_int8`): about a quarter of a
float32 target's matrix bytes more, and no second checkpoint. It predicts almost what the target predicts, so
most drafts are accepted, and the target's verification keeps the output exactly the target's (greedy: token
for token; sampling: the same distribution). Whether it is faster depends on how much cheaper an int8 token is
than a float32 one on the machine (docs/performance.md).
"""

from __future__ import annotations

import copy

from accel.quantize import quantize_int8


def int8_draft(target):
    """A new model: `target`'s modules, its linears quantized to int8, every other tensor shared (not copied)."""
    if getattr(target.config, "model_type", None) == "gpt_oss":
        raise ValueError("an int8 draft needs a LLaMA-style target; GPT-OSS keeps its MXFP4 experts")
    shared = {id(t): t for t in [*target.parameters(), *target.buffers()]}  # deepcopy reuses what memo holds
    draft = copy.deepcopy(target, memo=shared)
    return quantize_int8(draft)
