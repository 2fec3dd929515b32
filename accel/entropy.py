"""The fused entropy kernel (accel/entropy.cpp) for entropy decoding (generation/entropy.py).

For each row of scores it computes the Shannon entropy in bits of softmax(row) and the row's argmax in two reads
of the row and no temporaries, where PyTorch makes several passes over fresh (rows, V) tensors. generation/entropy.py
keeps the formula (`entropy_bits`) and calls this only for a model that `accel.accelerate` marked; a test holds the
kernel to the formula and to float64.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from .matvec import load_kernel

KERNEL_SOURCE = Path(__file__).with_name("entropy.cpp")


@functools.cache
def entropy_kernel_available() -> bool:
    """Whether accel/entropy.cpp can run here (built once per machine, like accel/matvec.cpp; switched off with
    SCRATCH_LM_ENTROPY_KERNEL=0)."""
    return load_kernel(KERNEL_SOURCE, "SCRATCH_LM_ENTROPY_KERNEL")


def fused_entropy_and_top_token(scores: torch.Tensor,
                                normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(entropy in bits, argmax) of scores (..., V), each (...), through the kernel; None where it does not apply
    (not float32 on the CPU, gradients wanted, an empty vocabulary, or the kernel cannot be built)."""
    if not (scores.dtype == torch.float32 and scores.device.type == "cpu" and scores.shape[-1] > 0
            and not (scores.requires_grad and torch.is_grad_enabled()) and entropy_kernel_available()):
        return None
    rows = scores.reshape(-1, scores.shape[-1]).contiguous()  # (R, V)
    entropy, top = torch.ops.scratch_lm.entropy_and_argmax(rows)  # (R,) bits, (R,) token ids
    if normalize:
        entropy = entropy / math.log2(scores.shape[-1])
    return entropy.view(scores.shape[:-1]), top.view(scores.shape[:-1])
