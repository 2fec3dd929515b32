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
METRIC_ALIASES = {"uncertainty": "aleatoric"}  # seed 003's name for LogU's aleatoric uncertainty


def routing_metric_name(name: str) -> str:
    """A routing metric's canonical name ("uncertainty" -> "aleatoric"); refuses unknown names."""
    canonical = METRIC_ALIASES.get(name, name) if isinstance(name, str) else name
    if canonical not in ROUTING_METRICS:
        raise ValueError(f"routing_metric must be one of {ROUTING_METRICS + tuple(METRIC_ALIASES)} "
                         f"('uncertainty' is LogU's aleatoric), got {name!r}")
    return canonical


def share_threshold(values: torch.Tensor, share: float) -> float:
    """The threshold above which the highest `share` of `values` (n,) lie: round(share * n) of them.

    The midpoint between the k-th and (k+1)-th largest value, so that `value > threshold` picks exactly those k
    (fewer when values tie at the cut). share 0 -> the largest value (none above); 1 -> below the smallest."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"share must be a number in [0, 1] (the fraction of tokens sent to the large model), "
                         f"got {share!r}")
    if values.numel() == 0:
        raise ValueError("cannot calibrate a share threshold on no tokens: the calibration gave no values")
    ordered = values.double().sort(descending=True).values  # (n,)
    k = round(share * ordered.numel())
    if k == 0:
        return float(ordered[0])
    if k == ordered.numel():
        return float(ordered[-1]) - 1.0
    return float((ordered[k - 1] + ordered[k]) / 2)


def token_uncertainty(logits: torch.Tensor, top_k: int = 10) -> TokenUncertainty:
    """(V,) raw logits of one position -> its TokenUncertainty."""
    aleatoric, epistemic = logu_uncertainty(logits, top_k)
    return TokenUncertainty(float(entropy_bits(logits)), float(aleatoric), float(epistemic))
