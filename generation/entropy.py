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
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F

from .steps import apply_logits_steps

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


# ------------------------------------------------------------------------------------ the loop step

@dataclass(frozen=True)
class EntropyLayerChoice:
    """The decode-loop step: scores of the layer chosen by entropy replace the last layer's. (B, V) -> (B, V).

    It wraps the loop's other steps (`processors`: penalties, temperature, top-k/p, ...) because each
    layer's logits go through them before their entropy is measured (seed 000, section 4.1, step 3); the
    loop then runs this one step. In beam search the loop hands over log-probabilities, so every layer's
    logits are log-softmaxed first too (`log_prob_inputs`).

    Records per step: `entropy_selected_layer_indices` (B,) layer numbers 1..N; with `record_tokens` every
    layer is computed and `entropy_per_layer_token_ids` (B, N) (each layer's top processed token) and
    `entropy_per_layer` (B, N) (the entropies, layer j in column j-1) are recorded as well.
    """

    processors: tuple = ()
    strategy: str = "trough"
    normalize: bool = False
    consistency_alpha: float | None = None
    record_tokens: bool = False
    log_prob_inputs: bool = False
    needs_hidden_states: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_entropy_arguments(self.strategy, self.consistency_alpha)

    def __call__(self, scores: torch.Tensor, ctx) -> torch.Tensor:
        N = ctx.model.config.num_hidden_layers
        layers = list(range(1, N + 1))
        processed = {N: apply_logits_steps(self.processors, scores, ctx)}  # layer -> (B, V) processed scores
        entropies: dict[int, torch.Tensor] = {}  # layer -> (B,)

        def layer_costs(chunk: list[int]) -> torch.Tensor:
            if chunk != [N]:
                processed.update(zip(chunk, self._process(chunk, ctx)))
            return self._costs(chunk, processed, entropies, ctx)  # (B, len(chunk))

        last_cost = layer_costs([N])[:, 0]  # (B,)
        if self.record_tokens:  # every layer is needed for the records: one batched matmul, no walk
            costs = torch.cat([layer_costs(layers[:-1]), last_cost[:, None]], dim=1)  # (B, N)
            trough, computed = trough_index(costs), layers
        else:
            trough, computed, costs = walk_to_trough(layer_costs, last_cost, layers)
        chosen = trough if self.strategy == "trough" else random_after_index(trough, N - 1, ctx.generator)
        stacked = torch.stack([processed[j] for j in computed])  # (L_c, B, V)
        rows = torch.arange(scores.shape[0], device=scores.device)
        new_scores = stacked[chosen - (N - len(computed)), rows]  # (B, V)
        ctx.record("entropy_selected_layer_indices", chosen + 1)  # (B,) layer numbers
        if self.record_tokens:
            ctx.record("entropy_per_layer_token_ids", stacked.argmax(-1).T)  # (B, N)
            ctx.record("entropy_per_layer", torch.stack([entropies[j] for j in layers], dim=1))  # (B, N)
        return new_scores

    def _process(self, chunk: list[int], ctx) -> torch.Tensor:
        """Early-exit logits of `chunk` (one matmul), through the processors: (L_c, B, V)."""
        logits = ctx.model.early_exit_logits(ctx.hidden_states, chunk).float()  # (L_c, B, V)
        if self.log_prob_inputs:
            logits = logits.log_softmax(-1)
        L, B, V = logits.shape
        # The processors see L_c * B rows; row l * B + b continues sequence b, so repeat the history L_c times.
        layer_ctx = replace(ctx, input_ids=ctx.input_ids.repeat(L, 1), logits=logits.reshape(L * B, V))
        return apply_logits_steps(self.processors, logits.reshape(L * B, V), layer_ctx).view(L, B, V)

    def _costs(self, chunk: list[int], processed: dict, entropies: dict, ctx) -> torch.Tensor:
        """Entropy (or the consistency cost) of the processed scores of `chunk`: (B, L_c)."""
        entropy = entropy_bits(torch.stack([processed[j] for j in chunk]), self.normalize)  # (L_c, B)
        entropies.update(zip(chunk, entropy))
        if self.consistency_alpha is not None:
            hidden = torch.stack([ctx.hidden_states[j][:, -1] for j in chunk])  # (L_c, B, H)
            entropy = consistency_cost(entropy, hidden, ctx.hidden_states[-1][:, -1], self.consistency_alpha)
        return entropy.T
