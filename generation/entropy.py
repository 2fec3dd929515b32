"""Entropy-based layer choice (shared/seeds/000, "transformers-dynamic"), as pure functions.

At each decode step every layer j is read out through the final norm and the head (early exit), the
logits processors (penalties, temperature, top-k/p) are applied to each layer's logits, and the entropy
of each layer's processed distribution decides which layer's scores the sampler uses:

    H_j = -sum_x p_j(x) log2 p_j(x)        in bits; optionally divided by log2 |V| (so 0 <= H_j <= 1)

- `entropy_decoding="trough"`: start at the last layer N and walk down while the entropy keeps falling
  (strictly); the layer where it stops is the trough.
- `"random_after"`: a layer drawn uniformly from [trough, N], from the explicit torch.Generator.
- The seed's consistency option scores a layer by S_j = -H_j + alpha * cos(h_j, h_N): the walk then goes
  down while S keeps rising (equivalently, while the cost H_j - alpha * cos(h_j, h_N) keeps falling).

The walk needs only the layers from N down to one below the trough, so the step computes early-exit
logits lazily, a few layers at a time (`walk_to_trough`): on a 30-layer model most steps touch two or
three layers instead of thirty. Recording every layer's top token needs them all and computes them all.

Layers are numbered like `hidden_states`: j = output of block j, 1..N, with N the normal last layer.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

ENTROPY_STRATEGIES = ("trough", "random_after")


def check_entropy_arguments(entropy_decoding: str, consistency_alpha: float | None) -> None:
    """Fail early on an unknown strategy or a negative consistency weight."""
    if entropy_decoding not in ENTROPY_STRATEGIES:
        raise ValueError(f"entropy_decoding must be one of {ENTROPY_STRATEGIES} (or None for plain decoding), "
                         f"got {entropy_decoding!r}")
    if consistency_alpha is not None and not (consistency_alpha >= 0 and math.isfinite(consistency_alpha)):
        raise ValueError(f"entropy_consistency_alpha must be a finite number >= 0, got {consistency_alpha}")


def entropy_bits(scores: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Shannon entropy in bits of softmax(scores) over the last dim; -inf scores count as p = 0. (..., V) -> (...).

    Uses H = logsumexp(z) - sum_x p(x) z(x) (nats), one pass fewer than -sum p log p.
    """
    scores = scores.float()
    log_norm = torch.logsumexp(scores, dim=-1)  # (...)
    probs = torch.softmax(scores, dim=-1)
    mean_score = torch.where(probs > 0, probs * scores, torch.zeros_like(scores)).sum(-1)  # 0 * -inf -> 0
    entropy = (log_norm - mean_score) / math.log(2.0)
    if normalize:
        entropy = entropy / math.log2(scores.shape[-1])
    return entropy


def consistency_cost(entropy: torch.Tensor, hidden: torch.Tensor, last_hidden: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """H_j - alpha * cos(h_j, h_N), the negated consistency score. entropy (L, B); hidden (L, B, H); last (B, H)."""
    similarity = F.cosine_similarity(hidden.float(), last_hidden.float()[None], dim=-1)  # (L, B)
    return entropy - alpha * similarity


def trough_index(costs: torch.Tensor) -> torch.Tensor:
    """Walk down from the last column while the cost strictly falls; return where it stops. (B, L) -> (B,).

    Column L-1 is the last layer. E.g. costs [3, 1, 2, 4] -> 1 (4 > 2 > 1, then 3 is not lower).
    """
    falling = costs[:, :-1] < costs[:, 1:]  # (B, L-1): stepping down from i+1 to i lowers the cost
    steps = falling.flip(-1).long().cumprod(-1).sum(-1)  # consecutive falls, counted from the top
    return costs.shape[1] - 1 - steps


def random_after_index(trough: torch.Tensor, last: int, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform integer in [trough, last] per row, drawn from `generator`. trough (B,) -> (B,)."""
    span = last - trough + 1  # (B,) >= 1
    u = torch.rand(trough.shape, generator=generator,
                   device=generator.device if generator is not None else trough.device)
    return trough + (u.to(trough.device) * span).long().clamp(max=span - 1)


def walk_to_trough(layer_costs: Callable[[list[int]], torch.Tensor], last_cost: torch.Tensor,
                   layers: Sequence[int]) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Find the trough computing as few layers as possible, from the top down.

    layers: candidate layer numbers, ascending, the last one being N (whose cost `last_cost` (B,) is known);
    layer_costs(chunk) -> (B, len(chunk)) costs of more layers. Chunks grow 1, 2, 4, ... until every row's
    walk has stopped above the lowest layer computed (or reached the first candidate).
    Returns (trough position in `layers` per row (B,), the layers computed (ascending), their costs (B, L_c)).
    """
    computed, costs = [layers[-1]], last_cost[:, None]  # (B, 1)
    below, chunk = len(layers) - 1, 1  # layers[:below] are not computed yet
    while below > 0:
        new = list(layers[max(0, below - chunk):below])
        computed, costs = new + computed, torch.cat([layer_costs(new), costs], dim=1)
        below, chunk = below - len(new), 2 * chunk
        if bool((trough_index(costs) > 0).all()):  # every walk stopped above the lowest computed layer
            break
    return trough_index(costs) + below, computed, costs
