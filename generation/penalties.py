"""Penalties: logits steps that look at the history (ctx.input_ids) or the length so far.

Each idea is a pure function with the formula (`repetition_penalty(scores, input_ids, penalty)`) and a small
step object (`RepetitionPenalty(1.3)`) of kind "penalty". The semantics are transformers 4.55.2's logits
processors (tests hold them to it), except the frequency and presence penalties, which transformers lacks:
they follow OpenAI's definition (see `frequency_presence_penalty`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .steps import LogitsStep, StepContext

NEG_INF = float("-inf")


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


def frequency_presence_penalty(scores: torch.Tensor, generated: torch.Tensor, frequency_penalty: float,
                               presence_penalty: float) -> torch.Tensor:
    """OpenAI's rule (also llama.cpp's, there over its last-n window): z_j - c_j * frequency - [c_j > 0] * presence,
    c_j = how often token j was generated so far (the prompt does not count). generated (B, G) -> (B, V)."""
    counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
    return scores - counts * frequency_penalty - (counts > 0).to(scores.dtype) * presence_penalty


def sequence_bias(scores: torch.Tensor, input_ids: torch.Tensor,
                  biases: tuple[tuple[tuple[int, ...], float], ...]) -> torch.Tensor:
    """Add `bias` to the last token of each (token ids, bias) pair whose other tokens end input_ids (one token:
    always). Biases on one token add up; -inf bans it. A sequence longer than input_ids is skipped (transformers)."""
    bias = torch.zeros_like(scores)  # (B, V)
    for ids, value in biases:
        if len(ids) > input_ids.shape[1]:
            continue
        prefix = torch.tensor(ids[:-1], dtype=input_ids.dtype, device=input_ids.device)
        matches = (input_ids[:, input_ids.shape[1] - len(prefix):] == prefix).all(-1)  # (B,) True if no prefix
        bias[:, ids[-1]] += torch.where(matches, value, 0.0)
    return scores + bias


def bad_words_biases(bad_words_ids: list[list[int]], eos_token_ids: list[int]) -> tuple:
    """bad_words_ids as sequence biases of -inf; a bad word that is just an end token is dropped, as in
    transformers (banning EOS would make a row run to max_new_tokens)."""
    return tuple((tuple(ids), NEG_INF) for ids in bad_words_ids if not (len(ids) == 1 and ids[0] in eos_token_ids))


def suppress_eos(scores: torch.Tensor, generated: int, min_new_tokens: int, eos_token_ids: torch.Tensor):
    """Every end token at -inf while fewer than min_new_tokens tokens are generated (transformers'
    MinNewTokensLengthLogitsProcessor)."""
    if generated >= min_new_tokens or eos_token_ids.numel() == 0:
        return scores
    return scores.index_fill(-1, eos_token_ids.to(scores.device), NEG_INF)


# --------------------------------------------------------------------------- the same ideas as loop steps
@dataclass(frozen=True)
class RepetitionPenalty(LogitsStep):
    penalty: float
    kind: ClassVar[str] = "penalty"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return repetition_penalty(scores, ctx.input_ids, self.penalty)


@dataclass(frozen=True)
class NoRepeatNGram(LogitsStep):
    ngram_size: int
    kind: ClassVar[str] = "penalty"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return no_repeat_ngram(scores, ctx.input_ids, self.ngram_size)


@dataclass(frozen=True)
class FrequencyPresencePenalty(LogitsStep):
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    kind: ClassVar[str] = "penalty"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        generated = ctx.input_ids[:, ctx.prompt_length:]
        return frequency_presence_penalty(scores, generated, self.frequency_penalty, self.presence_penalty)


@dataclass(frozen=True)
class SequenceBias(LogitsStep):
    """sequence_bias / bad_words_ids: ((token ids, bias), ...)."""

    biases: tuple[tuple[tuple[int, ...], float], ...]
    kind: ClassVar[str] = "penalty"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return sequence_bias(scores, ctx.input_ids, self.biases)


@dataclass(frozen=True)
class MinNewTokens(LogitsStep):
    min_new_tokens: int
    eos_token_ids: tuple[int, ...]
    kind: ClassVar[str] = "penalty"

    def __call__(self, scores: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        generated = ctx.input_ids.shape[1] - ctx.prompt_length
        return suppress_eos(scores, generated, self.min_new_tokens, torch.tensor(self.eos_token_ids))
