"""Entropy-based layer choice (shared/seeds/000, "transformers-dynamic"), as pure functions.

At each decode step every layer j is read out through the final norm and the head (early exit), the
logits processors (penalties, temperature, top-k/p) are applied to each layer's logits, and the entropy
of each layer's processed distribution decides which layer's scores the sampler uses:

    H_j = -sum_x p_j(x) log2 p_j(x)        in bits; optionally divided by log2 |V| (so 0 <= H_j <= 1)

- `entropy_decoding="trough"`: start at the last layer N and walk down while the entropy keeps falling
  (strictly); the layer where it stops is the trough.
- `"random_after"`: a layer drawn uniformly from [trough, N], from ctx.generator (generate() gives torch's
  global one when none is passed, so torch.manual_seed makes the draws reproducible).
- The seed's consistency option scores a layer by S_j = -H_j + alpha * cos(h_j, h_N): the walk then goes
  down while S keeps rising (equivalently, while the cost H_j - alpha * cos(h_j, h_N) keeps falling).

The walk needs only the layers from N down to one below the trough, so the step computes early-exit
logits lazily (`walk_to_trough`), a chunk of layers at a time, only as far down as some row's walk still
goes. The choice is the same as from the full table of 30 layers (a property test checks it), at a
fraction of the cost. Recording every layer's top token needs them all and computes them all.

Why chunks of 8 first (`walk_chunk`): through the head, 8 rows cost little more than 2 (a matrix-matrix
product reads the 49152 x 576 head once either way), and on the default model the trough usually lies within
8 layers of the top, so one chunk usually settles the walk (figures: docs/performance.md).

Two more measures keep the step cheap, most of all when it reads every layer (`entropy_record_tokens=True`): the
layers it needs first (all of them, or the walk's first chunk) come from the forward's own head matmul
(`early_exit_layers`, as DoLa does), and, for a model made faster by `accel.accelerate`, each layer's entropy
and top token come from one fused kernel (accel/entropy.cpp) instead of six PyTorch passes over fresh
temporaries. `entropy_bits` stays the readable definition; a test holds the kernel to it (and to float64).

Layers are numbered like `hidden_states`: j = output of block j, 1..N, with N the normal last layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F

from .steps import LogitsStep, StepNeeds, apply_logits_steps

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

    With z' = z - max z and S = sum exp(z'): H = log S - sum_x p(x) z'(x) (nats), one exp pass over the vocabulary.
    """
    scores = scores.float()
    shifted = scores - scores.amax(-1, keepdim=True)  # (..., V) <= 0; -inf stays -inf
    weights = shifted.exp()  # unnormalised probabilities; exp(-inf) = 0
    total = weights.sum(-1)  # S
    shifted.clamp_(min=torch.finfo(torch.float32).min)  # so that 0 * (-inf) becomes 0 * (finite) = 0
    weighted = torch.einsum("...v,...v->...", weights, shifted)  # sum_x e^z'(x) z'(x), without a (..., V) temporary
    entropy = (total.log() - weighted / total) / math.log(2.0)
    if normalize:
        entropy = entropy / math.log2(scores.shape[-1])
    return entropy


def entropy_and_top_token(scores: torch.Tensor, normalize: bool = False,
                          model=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy_bits(scores, normalize), scores.argmax(-1)) for scores (..., V): each (...).

    For a model that `accel.accelerate` gave the entropy kernel, float32 CPU scores go through one fused kernel
    (accel/entropy.cpp: two reads of each row, no temporaries) instead.
    """
    acceleration = getattr(model, "acceleration", None)
    if acceleration is not None and acceleration.entropy_kernel:
        from accel.entropy import fused_entropy_and_top_token

        fused = fused_entropy_and_top_token(scores, normalize)
        if fused is not None:
            return fused
    return entropy_bits(scores, normalize), scores.argmax(-1)


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
                   layers: Sequence[int], first_chunk: int = 1) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Find the trough from the top down, computing layers in chunks only as far down as some walk goes.

    layers: candidate layer numbers, ascending, the last one being N (whose cost `last_cost` (B,) is known);
    layer_costs(chunk) -> (B, len(chunk)) costs of more layers, asked for in chunks of first_chunk, then at
    least 8 and doubling, until every row's walk has stopped above the lowest layer computed (or reached
    the first candidate).
    Returns (trough position in `layers` per row (B,), the layers computed (ascending), their costs (B, L_c)).
    """
    computed, costs = [layers[-1]], last_cost[:, None]  # (B, 1)
    below, chunk = len(layers) - 1, first_chunk  # layers[:below] are not computed yet
    while below > 0:
        new = list(layers[max(0, below - chunk):below])
        computed, costs = new + computed, torch.cat([layer_costs(new), costs], dim=1)
        below, chunk = below - len(new), max(8, 2 * chunk)
        if bool((trough_index(costs) > 0).all()):  # every walk stopped above the lowest computed layer
            break
    return trough_index(costs) + below, computed, costs


# ------------------------------------------------------------------------------------ the loop step

@dataclass(frozen=True)
class EntropyLayerChoice(LogitsStep):
    """The decode-loop step: scores of the layer chosen by entropy replace the last layer's. (B, V) -> (B, V).

    A step of kind "layer_selection": the loop runs it alone and hands it the other steps (penalties,
    temperature, top-k/p, ...) as ctx.layer_steps, because each layer's logits go through them before their
    entropy is measured (seed 000, section 4.1, step 3). In beam search the loop hands over log-probabilities,
    so every layer's logits are log-softmaxed first too (`log_prob_inputs`).

    Records per step: `entropy_selected_layer_indices` (B,) layer numbers 1..N; with `record_tokens` every
    layer is computed and `entropy_per_layer_token_ids` (B, N) (each layer's top processed token) and
    `entropy_per_layer` (B, N) (the entropies, layer j in column j-1) are recorded as well.
    """

    strategy: str = "trough"
    normalize: bool = False
    consistency_alpha: float | None = None
    record_tokens: bool = False
    log_prob_inputs: bool = False
    walk_chunk: int = 8  # layers per early-exit matmul in the lazy walk (see the module docstring)
    # The model's N, when known at construction (generate() passes it): the layers every step needs first
    # (all of them, or the walk's first chunk) then come from the forward's own head matmul (early_exit_layers).
    num_hidden_layers: int | None = None
    kind: ClassVar[str] = "layer_selection"

    def __post_init__(self) -> None:
        check_entropy_arguments(self.strategy, self.consistency_alpha)

    @property
    def needs(self) -> StepNeeds:
        """Every layer's hidden state; and the layers every position needs first (all of them, or the walk's
        first chunk) with the final logits: one pass over the head for 1 + 29 rows costs about as much as for 29."""
        N = self.num_hidden_layers
        if N is None or N < 2:
            return StepNeeds(hidden_states=True)
        layers = tuple(range(1, N)) if self.record_tokens else tuple(range(max(1, N - self.walk_chunk), N))
        return StepNeeds(hidden_states=True, early_exit_layers=layers)

    def __call__(self, scores: torch.Tensor, ctx) -> torch.Tensor:
        N = ctx.model.config.num_hidden_layers
        layers = list(range(1, N + 1))
        early_exit = ctx.early_exit_logits  # (L, B, V) of needs.early_exit_layers, or None
        final = apply_logits_steps(ctx.layer_steps, scores, ctx)  # (B, V) processed scores of layer N
        blocks: dict[int, torch.Tensor] = {}  # first layer of a block -> (L_b, B, V) processed scores
        entropies: dict[int, torch.Tensor] = {}  # first layer of a block -> (B, L_b)
        top_tokens: dict[int, torch.Tensor] = {}  # first layer of a block -> (B, L_b) each layer's top token

        def layer_costs(chunk: list[int]) -> torch.Tensor:  # chunk: consecutive layers, ascending
            blocks[chunk[0]] = final[None] if chunk == [N] else self._process(chunk, ctx, early_exit)
            entropies[chunk[0]], top_tokens[chunk[0]], costs = self._costs(chunk, blocks[chunk[0]], ctx)
            return costs  # (B, len(chunk))

        last_cost = layer_costs([N])[:, 0]  # (B,)
        if self.record_tokens:  # every layer is needed for the records: one batched matmul, no walk
            trough = trough_index(torch.cat([layer_costs(layers[:-1]), last_cost[:, None]], dim=1))
        else:
            trough = walk_to_trough(layer_costs, last_cost, layers, self.walk_chunk)[0]
        chosen = trough if self.strategy == "trough" else random_after_index(trough, N - 1, ctx.generator)
        chosen = chosen + 1  # positions in `layers` -> layer numbers 1..N
        ctx.record("entropy_selected_layer_indices", chosen)  # (B,)
        if self.record_tokens:
            ctx.record("entropy_per_layer_token_ids", torch.cat([top_tokens[1], top_tokens[N]], dim=1))  # (B, N)
            ctx.record("entropy_per_layer", torch.cat([entropies[1], entropies[N]], dim=1))  # (B, N)
        return self._rows_of_chosen_layers(blocks, chosen)

    @staticmethod
    def _rows_of_chosen_layers(blocks: dict[int, torch.Tensor], chosen: torch.Tensor) -> torch.Tensor:
        """Row b of the scores of layer chosen[b], gathered from the blocks computed: (B, V)."""
        rows = torch.arange(chosen.shape[0], device=chosen.device)
        new_scores = torch.empty_like(next(iter(blocks.values()))[0])
        for first, block in blocks.items():
            inside = (chosen >= first) & (chosen < first + block.shape[0])  # (B,)
            new_scores[inside] = block[chosen[inside] - first, rows[inside]]
        return new_scores

    def _process(self, chunk: list[int], ctx, early_exit: torch.Tensor | None = None) -> torch.Tensor:
        """Early-exit logits of `chunk` (one matmul, or `early_exit`, the loop's logits of this step's
        early_exit_layers, when the chunk is those), through the processors: (L_c, B, V)."""
        if early_exit is not None and tuple(chunk) == self.needs.early_exit_layers:
            logits = early_exit.float()  # (L_c, B, V), headed with the final position
        else:
            logits = ctx.model.early_exit_logits(ctx.hidden_states, chunk).float()  # (L_c, B, V)
        if self.log_prob_inputs:
            logits = logits.log_softmax(-1)
        if not ctx.layer_steps:
            return logits
        L, B, V = logits.shape
        # The processors see L_c * B rows; row l * B + b continues sequence b, so repeat the history L_c times.
        layer_ctx = replace(ctx, input_ids=ctx.input_ids.repeat(L, 1), logits=logits.reshape(L * B, V))
        return apply_logits_steps(ctx.layer_steps, logits.reshape(L * B, V), layer_ctx).view(L, B, V)

    def _costs(self, chunk: list[int], block: torch.Tensor,
               ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(entropy, top token, cost), each (B, L_c), of the processed scores `block` (L_c, B, V) of `chunk`."""
        entropy, top = entropy_and_top_token(block, self.normalize, ctx.model)  # (L_c, B) each
        cost = entropy
        if self.consistency_alpha is not None:
            hidden = torch.stack([ctx.hidden_states[j][:, -1] for j in chunk])  # (L_c, B, H)
            cost = consistency_cost(entropy, hidden, ctx.hidden_states[-1][:, -1], self.consistency_alpha)
        return entropy.T, top.T, cost.T
