"""Logits steps: each one reshapes the next-token scores, (B, V) float32 in, (B, V) float32 out.

Every idea is written twice, on purpose:
  * a pure function with the formula (`top_p_filter(scores, top_p)`) for reading and reuse, and
  * a small step object (`TopP(0.9)`) with the signature the decode loop calls: `step(scores, ctx)`.

The semantics are those of transformers 4.55.2's logits processors (tests hold them to <= 1e-5):
filters set removed tokens to -inf and never renormalise; the sampler's softmax does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

NEG_INF = float("-inf")


# --------------------------------------------------------------------------- the context every step receives
@dataclass
class StepContext:
    """What the loop knows when it chooses token number `step` (read-only, except `records`)."""

    input_ids: torch.Tensor  # (B, T) every token so far: left padding + prompt + generated (+ pads after end)
    prompt_length: int  # T of the (padded) prompt: input_ids[:, prompt_length:] are the generated tokens
    logits: torch.Tensor  # (B, V) float32: the model's raw logits at the last position, before any step
    hidden_states: tuple[torch.Tensor, ...] | None  # (B, 1, H) per layer, only if a step needs_hidden_states
    model: Any  # the CausalLM, e.g. for model.early_exit_logits(ctx.hidden_states, layers)
    generator: torch.Generator | None  # the only source of randomness a step may use
    step: int  # 0 for the first new token
    records: dict[str, list] = field(default_factory=dict)  # becomes GenerateOutput.records
    # (L, B, V): the head on the layers a step asked for with `early_exit_layers` (see early_exit_request),
    # computed by the model together with `logits`; None when the loop did not (then the step computes them).
    early_exit_logits: torch.Tensor | None = None

    def record(self, name: str, value: Any) -> None:
        """Append this step's `value` to output.records[name] (one entry per decode step)."""
        self.records.setdefault(name, []).append(value)


LogitsStep = Callable[[torch.Tensor, StepContext], torch.Tensor]


def early_exit_request(steps: Sequence[LogitsStep]) -> tuple[tuple[int, ...], bool] | None:
    """(layers, with final norm) of the first step declaring `early_exit_layers`: the loop then has the model
    put those layers through the head in the same matmul as the final position (ctx.early_exit_logits)."""
    for step in steps:
        layers = getattr(step, "early_exit_layers", None)
        if layers:
            return tuple(layers), bool(getattr(step, "early_exit_norm", True))
    return None


def needs_hidden_states(steps: Sequence[LogitsStep]) -> bool:
    """True if any step declares `needs_hidden_states = True` (then the loop asks the model for them)."""
    return any(getattr(step, "needs_hidden_states", False) for step in steps)


def apply_logits_steps(steps: Sequence[LogitsStep], scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Run the steps in order; each gets the previous one's output. Checks the shape each one returns."""
    for step in steps:
        new_scores = step(scores, ctx)
        if not isinstance(new_scores, torch.Tensor) or new_scores.shape != scores.shape:
            raise TypeError(f"logits step {step!r} must return a tensor of shape {tuple(scores.shape)}, "
                            f"got {getattr(new_scores, 'shape', type(new_scores))}")
        scores = new_scores
    return scores


# --------------------------------------------------------------------------- penalties (look at the history)
def repetition_penalty(scores: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019) as in transformers: for every token already in input_ids (prompt included),
    divide a positive score by `penalty`, multiply a negative one, so penalty > 1 always makes it less likely."""
    seen = torch.gather(scores, 1, input_ids)  # (B, T) scores of the tokens already present
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids, seen)


def no_repeat_ngram(scores: torch.Tensor, input_ids: torch.Tensor, ngram_size: int) -> torch.Tensor:
    """Ban every token that would complete an n-gram already present in input_ids (transformers' rule)."""
    B, T = input_ids.shape
    n = ngram_size
    if T < n:  # not one complete n-gram yet
        return scores
    ngrams = input_ids.unfold(1, n, 1)  # (B, T - n + 1, n): every n-gram so far
    prefix = input_ids[:, T - n + 1:]  # (B, n - 1): the tokens the next one would extend
    same_prefix = (ngrams[:, :, :-1] == prefix[:, None, :]).all(-1)  # (B, T - n + 1)
    hits = torch.zeros_like(scores).scatter_add_(1, ngrams[:, :, -1], same_prefix.to(scores.dtype))  # (B, V)
    return scores.masked_fill(hits > 0, NEG_INF)


# --------------------------------------------------------------------------- warpers (shape the distribution)
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


# --------------------------------------------------------------------------- the same ideas as loop steps
@dataclass(frozen=True)
class RepetitionPenalty:
    penalty: float

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return repetition_penalty(scores, ctx.input_ids, self.penalty)


@dataclass(frozen=True)
class NoRepeatNGram:
    ngram_size: int

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return no_repeat_ngram(scores, ctx.input_ids, self.ngram_size)


@dataclass(frozen=True)
class Temperature:
    temperature: float

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return temperature_scale(scores, self.temperature)


@dataclass(frozen=True)
class TopK:
    top_k: int
    min_tokens_to_keep: int = 1

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return top_k_filter(scores, self.top_k, self.min_tokens_to_keep)


@dataclass(frozen=True)
class TopP:
    top_p: float
    min_tokens_to_keep: int = 1

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return top_p_filter(scores, self.top_p, self.min_tokens_to_keep)


@dataclass(frozen=True)
class MinP:
    min_p: float
    min_tokens_to_keep: int = 1

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return min_p_filter(scores, self.min_p, self.min_tokens_to_keep)


# --------------------------------------------------------------------------- choosing the token
def select_greedy(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) -> (B,): the highest score (the first one on a tie, like torch.argmax)."""
    return torch.argmax(scores, dim=-1)


def select_sample(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) -> (B,): one draw from softmax(scores); -inf scores have probability 0."""
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
