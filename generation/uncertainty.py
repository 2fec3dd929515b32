"""How unsure is a model about its next token? Entropy, and LogU's aleatoric / epistemic uncertainty.

Entropy (bits) is `entropy_bits` from generation/entropy.py. LogU (Ma et al. 2025, "Estimating LLM Uncertainty
with Logits", arXiv:2502.00290) reads the top-K logits as the evidence of a Dirichlet distribution over
the K best tokens, in the style of evidential deep learning:

    alpha_k = max(0, logit_k) for the K largest logits      (evidence; a negative logit is no evidence)
    alpha_0 = sum_k alpha_k                                  (Dirichlet strength)
    aleatoric  AU = -sum_k (alpha_k / alpha_0) (psi(alpha_k + 1) - psi(alpha_0 + 1))   (expected entropy)
    epistemic  EU = K / sum_k (alpha_k + 1)                                             (lack of evidence)

AU is high when the evidence is spread over several tokens (the data allow many continuations); EU is high
when there is little evidence at all (the model has not seen enough to say), however it is spread.
With no evidence (alpha_0 = 0) the expected probabilities are taken uniform, 1/K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .entropy import entropy_bits


def logu_uncertainty(logits: torch.Tensor, top_k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) raw logits -> (aleatoric, epistemic), each (...), from the top_k logits (formulas above)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"logu top_k must be an integer in [1, {logits.shape[-1]}], got {top_k!r}")
    evidence = logits.float().topk(top_k, dim=-1).values.clamp(min=0)  # (..., K) alpha_k
    strength = evidence.sum(-1, keepdim=True)  # (..., 1) alpha_0
    expected = torch.where(strength > 0, evidence / strength.clamp(min=1e-12), torch.full_like(evidence, 1 / top_k))
    aleatoric = -(expected * (torch.digamma(evidence + 1) - torch.digamma(strength + 1))).sum(-1)
    epistemic = top_k / (evidence + 1).sum(-1)
    return aleatoric, epistemic


@dataclass(frozen=True)
class TokenUncertainty:
    """The three measures for one position (floats)."""

    entropy: float  # bits
    aleatoric: float
    epistemic: float


ROUTING_METRICS = ("entropy", "aleatoric", "epistemic")


def token_uncertainty(logits: torch.Tensor, top_k: int = 10) -> TokenUncertainty:
    """(V,) raw logits of one position -> its TokenUncertainty."""
    aleatoric, epistemic = logu_uncertainty(logits, top_k)
    return TokenUncertainty(float(entropy_bits(logits)), float(aleatoric), float(epistemic))
