"""Warpers: logits steps that only shape the distribution a token is sampled from (kind "warper").

Filters set removed tokens to -inf and never renormalise (the sampler's softmax does that), as
transformers 4.55.2's warpers do (tests hold each one to within 1e-5). Each idea is a pure function with the
formula and a small step object for the loop; `min_tokens_to_keep` > 1 under beam sampling, so that some beam
can always continue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .steps import LogitsStep, StepContext

NEG_INF = float("-inf")


def temperature_scale(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(z / T): T < 1 sharpens, T > 1 flattens (course lesson 5, section 3.2)."""
    return scores / temperature


def top_k_filter(scores: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Keep the k highest scores (ties with the k-th included), -inf elsewhere (Fan et al. 2018)."""
    k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    kth_best = torch.topk(scores, k).values[..., -1:]  # (B, 1)
    return scores.masked_fill(scores < kth_best, NEG_INF)


def top_p_filter(scores: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of best tokens whose mass is >= top_p.

    Sorted ascending, a token is dropped when the mass of it and everything below it is <= 1 - top_p.
    """
    sorted_scores, order = torch.sort(scores, descending=False)  # (B, V) worst first
    mass_below = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = mass_below <= (1 - top_p)
    drop_sorted[..., -min_tokens_to_keep:] = False  # the best tokens always stay
    drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
    return scores.masked_fill(drop, NEG_INF)


def min_p_filter(scores: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Min-p (Nguyen et al. 2024): drop tokens whose probability is below min_p x the top probability."""
    probs = scores.softmax(dim=-1)
    drop = probs < min_p * probs.max(dim=-1, keepdim=True).values  # (B, V)
    order = torch.argsort(scores, descending=True, dim=-1)
    drop_sorted = torch.gather(drop, 1, order)
    drop_sorted[..., :min_tokens_to_keep] = False  # the best tokens always stay
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, NEG_INF)


def typical_filter(scores: torch.Tensor, typical_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2023): keep the tokens whose surprisal -log p is closest to the
    entropy H, fewest first, until their mass reaches typical_p (the token that crosses it included)."""
    log_probs = scores.log_softmax(dim=-1)  # (B, V)
    entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)  # (B, 1) nats; 0 * -inf counts as 0
    distance, order = torch.sort((-log_probs - entropy).abs(), descending=False)  # most typical first
    mass = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (mass < typical_p).sum(dim=1).clamp(max=scores.shape[-1] - 1)  # (B,) index of the token crossing it
    drop_sorted = distance > distance.gather(1, last[:, None])
    drop_sorted[..., :min_tokens_to_keep] = False
    return scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), NEG_INF)


def epsilon_filter(scores: torch.Tensor, epsilon: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Epsilon sampling (Hewitt et al. 2022, "Truncation sampling as language model desmoothing"): drop tokens
    with probability below epsilon, keeping the min_tokens_to_keep best."""
    return _drop_below(scores, torch.tensor(epsilon, device=scores.device), min_tokens_to_keep)


def eta_filter(scores: torch.Tensor, eta_cutoff: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Eta sampling (Hewitt et al. 2022): the threshold adapts to the entropy H (nats) of the distribution,
    eta = min(epsilon, sqrt(epsilon) * exp(-H))."""
    log_probs = scores.log_softmax(dim=-1)
    entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)  # (B, 1)
    epsilon = torch.tensor(eta_cutoff, device=scores.device)
    threshold = torch.minimum(epsilon, epsilon.sqrt() * torch.exp(-entropy))  # (B, 1)
    return _drop_below(scores, threshold, min_tokens_to_keep)


def _drop_below(scores: torch.Tensor, threshold: torch.Tensor, min_tokens_to_keep: int) -> torch.Tensor:
    """-inf where softmax(scores) < threshold, except the min_tokens_to_keep highest scores (and their ties)."""
    drop = scores.softmax(dim=-1) < threshold
    kth_best = torch.topk(scores, min(min_tokens_to_keep, scores.shape[-1])).values[..., -1:]  # (B, 1)
    return scores.masked_fill(drop & (scores < kth_best), NEG_INF)


# --------------------------------------------------------------------------- the same ideas as loop steps
@dataclass(frozen=True)
class Temperature(LogitsStep):
    temperature: float
    kind: ClassVar[str] = "warper"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return temperature_scale(scores, self.temperature)


@dataclass(frozen=True)
class TopK(LogitsStep):
    top_k: int
    min_tokens_to_keep: int = 1
    kind: ClassVar[str] = "warper"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return top_k_filter(scores, self.top_k, self.min_tokens_to_keep)


@dataclass(frozen=True)
class TopP(LogitsStep):
    top_p: float
    min_tokens_to_keep: int = 1
    kind: ClassVar[str] = "warper"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return top_p_filter(scores, self.top_p, self.min_tokens_to_keep)


@dataclass(frozen=True)
class MinP(LogitsStep):
    min_p: float
    min_tokens_to_keep: int = 1
    kind: ClassVar[str] = "warper"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return min_p_filter(scores, self.min_p, self.min_tokens_to_keep)


@dataclass(frozen=True)
class TypicalP(LogitsStep):
    typical_p: float
    min_tokens_to_keep: int = 1
    kind: ClassVar[str] = "warper"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return typical_filter(scores, self.typical_p, self.min_tokens_to_keep)


@dataclass(frozen=True)
class EpsilonCutoff(LogitsStep):
    epsilon_cutoff: float
    min_tokens_to_keep: int = 1
    kind: ClassVar[str] = "warper"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return epsilon_filter(scores, self.epsilon_cutoff, self.min_tokens_to_keep)


@dataclass(frozen=True)
class EtaCutoff(LogitsStep):
    eta_cutoff: float
    min_tokens_to_keep: int = 1
    kind: ClassVar[str] = "warper"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return eta_filter(scores, self.eta_cutoff, self.min_tokens_to_keep)
