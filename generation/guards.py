"""Numbers the decode loop must never act on silently: non-finite logits, and length penalties that overflow.

A NaN weight (or an MXFP4 scale byte 0xFF, which decodes to NaN) makes NaN logits; greedy's argmax then picks
whatever index the NaN lands on, and sampling fails somewhere unrelated. A temperature such as 1e-45 turns
finite logits into infinite scores, and softmax of those is NaN. Both are named here, at the step they happen.
"""

from __future__ import annotations

import math

import torch

from .options import OptionError

LARGEST_EXPONENT = 700.0  # exp(709.8) is the largest float64; keep a margin


class NonFiniteLogitsError(ValueError):
    """The logits or the scores made from them hold NaN or +inf: no token can be chosen from them."""


def check_logits(logits: torch.Tensor, scores: torch.Tensor, step: int) -> None:
    """NonFiniteLogitsError when the model's logits (B, V) hold NaN/inf, or the steps made NaN / +inf scores (B, V).

    -inf scores are fine: they are tokens a step banned. `step` counts from 0 (the first new token)."""
    if not bool(torch.isfinite(logits).all()):
        kind = "NaN" if bool(torch.isnan(logits).any()) else "infinite"
        raise NonFiniteLogitsError(f"the model produced {kind} logits at step {step + 1}: the weights or the temperature are "
                         "not usable (check the weights with load_pretrained(..., check_finite=True))")
    if bool(torch.isnan(scores).any()) or bool(torch.isposinf(scores).any()):
        kind = "NaN" if bool(torch.isnan(scores).any()) else "infinite"
        raise NonFiniteLogitsError(f"the logits steps turned finite logits into {kind} scores at step {step + 1}: the "
                         "temperature (or another step's setting) is not usable, e.g. a temperature so small that "
                         "logits / temperature overflows; use temperature >= 1e-3 or greedy decoding")


def check_length_penalty(length_penalty: float, max_new_tokens: int) -> None:
    """Beam scores divide by (generated length) ** length_penalty: it must stay a finite, non-zero float."""
    exponent = abs(length_penalty) * math.log(max(max_new_tokens, 1))
    if exponent > LARGEST_EXPONENT:
        largest = LARGEST_EXPONENT / math.log(max_new_tokens)
        raise OptionError(f"length_penalty {length_penalty:g} is too large for max_new_tokens {max_new_tokens}: "
                          f"length ** length_penalty overflows; use a length_penalty between {-largest:.0f} and "
                          f"{largest:.0f}", "length_penalty", "max_new_tokens")
