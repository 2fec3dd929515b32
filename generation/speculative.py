"""Speculative decoding: a cheap draft proposes gamma tokens, the target checks them all in one forward pass.

    round:  draft d_1..d_gamma one at a time (q_i = draft distribution at position i)
            target forward over [last token, d_1..d_gamma] -> p_1..p_{gamma+1} in one pass
            keep the drafts the rule accepts, then one token from the target: every round gains >= 1 token

Greedy: keep the longest prefix of drafts equal to the target's argmax, then the target's argmax at the
first disagreement (or after the last draft). The output is the target's own greedy output.

Sampling (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023, "Accelerating LLM decoding with
speculative sampling"): accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection draw
from norm(max(0, p_i - q_i)); after gamma acceptances draw from p_{gamma+1}. Each emitted token is then
distributed exactly as p, the target's distribution. Here p and q are the *processed* distributions: the same
logits steps (penalties, temperature, top-k/p, min-p) run on the draft's and on the target's logits.

Caches (generation/drafting.py): at a round's start the target's cache holds the sequence minus its last
token; after verification it is cropped back to the new sequence minus its last token, so the rejected
drafts leave nothing behind.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cache import DynamicCache

from .two_models import AssistedOutput, append_until_stop, prepare_one_prompt, process_positions, token_budget
from .drafting import EarlyExitDrafter, ModelDrafter, catch_up, feed
from .loop import reason_names
from .steps import choose_token, select_greedy
from .stopping import RUNNING

SCHEDULES = ("constant", "heuristic")


# --------------------------------------------------------------------------- the acceptance rules
def greedy_accept(target_scores: torch.Tensor, draft_tokens: torch.Tensor) -> tuple[int, int]:
    """target_scores (gamma + 1, V), draft_tokens (gamma,) -> (number of drafts kept, the target's next token).

    (This is the sampling rule below with one-hot p and q: p(d)/q(d) is 1 on agreement, 0 otherwise, and
    max(0, p - q) is the target's one-hot.)"""
    target_tokens = select_greedy(target_scores)  # (gamma + 1,)
    agree = (target_tokens[:-1] == draft_tokens).long().cumprod(0)  # 1 until the first disagreement
    accepted = int(agree.sum())
    return accepted, int(target_tokens[accepted])


def sampling_accept(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[int, int]:
    """The speculative sampling rule. target_probs (gamma + 1, V), draft_probs (gamma, V), draft_tokens (gamma,).

    Returns (number of drafts accepted, the token drawn after them). Random numbers come only from `generator`.
    """
    gamma = draft_tokens.shape[0]
    rows = torch.arange(gamma, device=draft_tokens.device)
    p = target_probs[rows, draft_tokens]  # (gamma,) p_i(d_i)
    q = draft_probs[rows, draft_tokens]  # (gamma,) q_i(d_i) > 0: d_i was drawn from q_i
    u = torch.rand(gamma, generator=generator, device=draft_tokens.device)
    accept = (u * q < p).long().cumprod(0)  # u < p/q, written without dividing; stops at the first rejection
    accepted = int(accept.sum())
    if accepted == gamma:
        next_probs = target_probs[gamma]  # every draft accepted: a bonus token from p_{gamma+1}
    else:
        # Rejected: the residual distribution norm(max(0, p - q)) puts back the mass the draft under-proposed.
        next_probs = (target_probs[accepted] - draft_probs[accepted]).clamp(min=0)
        if next_probs.sum() <= 0:  # p == q up to rounding: a rejection had probability ~0; p is the limit
            next_probs = target_probs[accepted]
    token = torch.multinomial(next_probs / next_probs.sum(), 1, generator=generator)
    return accepted, int(token)


def next_num_draft_tokens(current: int, accepted: int, drafted: int, schedule: str) -> int:
    """transformers' "heuristic" schedule (num_assistant_tokens_schedule): +2 after a round where every
    draft was accepted, -1 (never below 1) after a rejection. "constant" keeps the number."""
    if schedule == "constant" or drafted == 0:
        return current
    return current + 2 if accepted == drafted else max(1, current - 1)


# --------------------------------------------------------------------------- statistics
@dataclass
class SpeculativeStats:
    new_tokens: int = 0
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens the target accepted
    rounds: int = 0  # draft-then-verify rounds (= verification passes of the target)
    target_forward_passes: int = 0  # verification passes + the prompt prefill
    draft_forward_passes: int = 0  # self-speculative: passes through the first k blocks only
    seconds: float = 0.0
    num_draft_tokens_per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate, "tokens_per_second": self.tokens_per_second}

    def summary(self) -> str:
        return (f"Strategy: speculative\nTime taken: {self.seconds:.2f}s\nTotal tokens generated: {self.new_tokens}\n"
                f"Speed: {self.tokens_per_second:.2f} tok/s\nDecode steps (target verifications): {self.rounds}\n"
                f"Target forward passes: {self.target_forward_passes}, draft forward passes: "
                f"{self.draft_forward_passes}\nDraft tokens: {self.drafted}, Accepted: {self.accepted}, "
                f"Acceptance rate: {100 * self.acceptance_rate:.2f}%")


# --------------------------------------------------------------------------- the decoder
def check_speculative_arguments(draft: Any, num_draft_tokens: Any, schedule: Any) -> None:
    if draft is None:
        raise ValueError("speculative decoding needs a draft: a smaller CausalLM with the same vocabulary, or an "
                         "int k to draft with the target's own first k layers (self-speculative)")
    if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"num_draft_tokens_schedule must be one of {SCHEDULES}, got {schedule!r}")


def propose(drafter, sequence: torch.Tensor, gamma: int, steps: list, sampling: bool, prompt_length: int,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft's gamma tokens, one at a time. sequence (1, n) -> (tokens (gamma,), processed scores (gamma, V))."""
    tokens, scores = [], []
    candidate = sequence
    for _ in range(gamma):
        logits = drafter.next_logits(candidate)[None]  # (1, V)
        processed = process_positions(steps, logits, candidate, candidate.shape[1], prompt_length, drafter.model,
                                      generator)
        token = choose_token(processed, sampling, generator)  # (1,)
        candidate = torch.cat([candidate, token[:, None]], dim=1)
        tokens.append(token)
        scores.append(processed)
    if not tokens:
        return sequence.new_zeros(0), torch.zeros(0, 0)
    return torch.cat(tokens), torch.cat(scores)


def verify(target, cache: DynamicCache, sequence: torch.Tensor, drafts: torch.Tensor, steps: list,
           prompt_length: int, generator: torch.Generator | None) -> torch.Tensor:
    """One target pass over [last token, drafts]: its processed scores at the gamma + 1 positions, (gamma + 1, V)."""
    candidate = torch.cat([sequence, drafts[None]], dim=1)  # (1, n + gamma)
    logits = feed(target, cache, candidate, logits_to_keep=drafts.shape[0] + 1)  # (gamma + 1, V)
    return process_positions(steps, logits, candidate, sequence.shape[1], prompt_length, target, generator)


@torch.no_grad()
def speculative_generate(target, draft, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                         num_draft_tokens: int = 5, num_draft_tokens_schedule: str = "constant",
                         **options: Any) -> AssistedOutput:
    """Decode one prompt (1, T) with `target`, `draft` proposing tokens. Same output as generate(target, ...):
    identical with greedy, the same distribution with do_sample=True (then it needs a generator to repeat).

    draft: a CausalLM with the target's vocabulary, or an int k: the target's first k layers (self-speculative).
    num_draft_tokens: tokens drafted per round; schedule "heuristic" adapts it (see next_num_draft_tokens).
    options: generate()'s options (max_new_tokens, do_sample, temperature, top_k, top_p, min_p, penalties,
    eos_token_id, stop_strings, tokenizer, generator, logits_steps). Returns AssistedOutput with .sequences,
    .stop_reasons, .stats (SpeculativeStats) and .caches ({"target": ..., "draft": ...}).
    """
    check_speculative_arguments(draft, num_draft_tokens, num_draft_tokens_schedule)
    self_speculative = isinstance(draft, int)
    others = {} if self_speculative else {"draft": draft}
    opts, steps, stop, generator = prepare_one_prompt(target, others, input_ids, attention_mask, options)
    cache = DynamicCache()
    drafter = EarlyExitDrafter(target, draft, cache) if self_speculative else ModelDrafter(draft)
    stats, prompt_length, gamma = SpeculativeStats(), input_ids.shape[1], num_draft_tokens
    sequence, reason, start = input_ids, RUNNING, time.perf_counter()
    while reason == RUNNING:
        stats.target_forward_passes += catch_up(target, cache, sequence[:, :-1])  # the prompt, on the first round
        drafted = min(gamma, token_budget(opts, sequence, prompt_length) - 1)  # leave room for the target's token
        drafts, draft_scores = propose(drafter, sequence, drafted, steps, opts.sampling, prompt_length, generator)
        drafter.before_verify(sequence.shape[1])
        target_scores = verify(target, cache, sequence, drafts, steps, prompt_length, generator)
        if opts.sampling:
            accepted, token = sampling_accept(target_scores.softmax(-1), draft_scores.softmax(-1), drafts, generator)
        else:
            accepted, token = greedy_accept(target_scores, drafts)
        sequence, reason = append_until_stop(sequence, drafts[:accepted].tolist() + [token], stop)
        cache.crop(sequence.shape[1] - 1)  # forget the rejected drafts (and a token cut off by a stop rule)
        drafter.rollback(sequence.shape[1] - 1)
        stats.rounds += 1
        stats.target_forward_passes += 1
        stats.drafted, stats.accepted = stats.drafted + drafted, stats.accepted + accepted
        stats.num_draft_tokens_per_round.append(drafted)
        gamma = next_num_draft_tokens(gamma, accepted, drafted, num_draft_tokens_schedule)
    stats.seconds = time.perf_counter() - start
    stats.new_tokens = sequence.shape[1] - prompt_length
    stats.draft_forward_passes = drafter.forward_passes
    caches = {"target": cache} if self_speculative else {"target": cache, "draft": drafter.cache}
    return AssistedOutput(sequence, prompt_length, reason_names(torch.tensor([reason])), stats=stats, caches=caches)
