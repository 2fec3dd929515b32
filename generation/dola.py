"""DoLa: Decoding by Contrasting Layers (Chuang et al., ICLR 2024, arXiv:2309.03883), as pure functions.

At each decode step the *mature* distribution q_N (the last layer) is contrasted with a *premature* one
q_M read from an earlier layer M through the same head (early exit):

    eq. 2   q_j = softmax(lm_head(norm(h_j)))             for the candidate layers j in J
    eq. 3   M   = argmax_{j in J} JSD(q_N || q_j)          the layer that disagrees most, per sequence
    eq. 4   V_head = {x : q_N(x) >= alpha * max_w q_N(w)}  adaptive plausibility constraint, alpha = 0.1
    eq. 5   F(x) = log q_N(x) - log q_M(x) on V_head, -inf elsewhere
    p_hat = softmax(F), which then goes through the usual sampler (greedy, top-k/p, temperature, beams).

Two variants (`dola_variant`):

- "paper" (default; shared/seeds/001): the final norm is applied to early layers too (eq. 2), the true
  JSD in nats chooses M *per sequence* (per beam under beam search), and penalties such as the repetition
  penalty act on the last layer's logits *before* the contrast (seed 001, section 5).
- "transformers": reproduces transformers 4.55.2 `generate(dola_layers=...)` exactly: `lm_head` directly on
  the un-normed hidden state, the score 0.5 * (KL(m || q_N) + KL(m || q_j)) averaged over the vocabulary
  (not summed) and then over the batch, so one layer serves the whole batch, and every logits processor
  (the repetition penalty included) runs *after* the contrast.

A correction to seed 001, section 6. It says that with alpha -> 0 and M forced to N the output equals q_N.
It does not: with q_M = q_N the contrast log q_N - log q_M is zero on V_head, so p_hat is *uniform* over
V_head. The true degenerate cases, tested token for token, are
  (a) alpha = 1: V_head holds only the top token of q_N, so DoLa-greedy equals plain greedy;
  (b) q_M uniform and alpha = 0: F = log q_N + const, so p_hat = q_N exactly.

Layers are numbered like `hidden_states`: 0 = embeddings, j = output of block j, N = num_hidden_layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .steps import LogitsStep, StepNeeds

DOLA_VARIANTS = ("paper", "transformers")
NUM_BUCKETS = 3  # seed 001 section 3: 30 layers -> [1, 10], [11, 20], [21, 29]


# ---------------------------------------------------------------------------------------------- layers

def dola_buckets(num_hidden_layers: int) -> list[tuple[int, int]]:
    """Split the premature layers 1..N-1 into up to 3 contiguous (first, last) buckets of equal size.

    For N = 30 this is the seed's [(1, 10), (11, 20), (21, 29)].
    """
    size = math.ceil((num_hidden_layers - 1) / NUM_BUCKETS)
    starts = range(1, num_hidden_layers, size) if size > 0 else []
    return [(first, min(first + size - 1, num_hidden_layers - 1)) for first in starts]


def bucket_layers(first: int, last: int) -> list[int]:
    """The few layers of a bucket that are contrasted: its even layers (seed: {22, 24, 26, 28} of [21, 29])."""
    even = [j for j in range(first, last + 1) if j % 2 == 0]
    return even or list(range(first, last + 1))


def _transformers_start_layer(num_hidden_layers: int, tie_word_embeddings: bool) -> int:
    # transformers 4.55.2 `_dola_decoding`: with tied embeddings, early exit at layer 0 maps a token to
    # (roughly) itself, so the embeddings are skipped; shallow models start lower.
    if not tie_word_embeddings:
        return 0
    if num_hidden_layers > 2:
        return 2
    return 1 if num_hidden_layers == 2 else 0


def dola_candidate_layers(dola_layers: str | Sequence[int], num_hidden_layers: int,
                          tie_word_embeddings: bool) -> list[int]:
    """Candidate premature layers J from `dola_layers`.

    "low" / "high": transformers' rule: for N <= 40 layers, range(start, N // 2, 2) and range(N // 2, N, 2);
    for deeper models the first / last 20 layers, every second one. "bucket0" | "bucket1" | "bucket2": the
    even layers of one of `dola_buckets(N)`. A list: those layers, each in 0..N-1.
    """
    layers = _named_or_listed_layers(dola_layers, num_hidden_layers, tie_word_embeddings)
    if not layers:
        raise ValueError(f"dola_layers={dola_layers!r} gives no candidate layer for a {num_hidden_layers}-layer "
                         f"model (transformers' rule); pass an explicit list such as [1]")
    return layers


def _named_or_listed_layers(dola_layers: str | Sequence[int], N: int, tie_word_embeddings: bool) -> list[int]:
    if isinstance(dola_layers, str):
        if dola_layers == "low":
            start = _transformers_start_layer(N, tie_word_embeddings)
            if start == N // 2:
                return [start]
            return list(range(start, N // 2, 2)) if N <= 40 else list(range(start, 20, 2))
        if dola_layers == "high":
            return list(range(N // 2, N, 2)) if N <= 40 else list(range(N - 20, N, 2))
        buckets = dola_buckets(N)
        names = [f"bucket{i}" for i in range(len(buckets))]
        if dola_layers in names:
            return bucket_layers(*buckets[names.index(dola_layers)])
        raise ValueError(f"dola_layers must be 'low', 'high', one of {names} or a list of layer indices, "
                         f"got {dola_layers!r}")
    layers = list(dola_layers)
    if not layers or not all(isinstance(j, int) and 0 <= j < N for j in layers):
        raise ValueError(f"dola_layers as a list must hold layer indices in 0..{N - 1} (0 = embeddings; "
                         f"layer {N} is the mature layer itself), got {dola_layers!r}")
    return layers


def check_dola_arguments(dola_variant: str, alpha: float) -> None:
    """Fail early, with what to do, on an unknown variant or an alpha outside [0, 1]."""
    if dola_variant not in DOLA_VARIANTS:
        raise ValueError(f"dola_variant must be one of {DOLA_VARIANTS}, got {dola_variant!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"DoLa's plausibility alpha must lie in [0, 1] (0.1 in the paper), got {alpha}")


# ----------------------------------------------------------------------------------- the formulas

def _sum_p_log_p(probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """sum_x p(x) log p(x) over the last dim, with 0 log 0 = 0: a -inf log (where p = 0) is clamped first."""
    finite = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)
    return torch.einsum("...v,...v->...", probs, finite)  # a dot product, without a (..., V) temporary


def jensen_shannon_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """JSD(P || Q) = 1/2 KL(P || A) + 1/2 KL(Q || A), A = (P + Q) / 2, in nats. (..., V) log-probs -> (...).

    Computed as H(A) - (H(P) + H(Q)) / 2, the same sums regrouped, reusing the log-probabilities we have:
    a few passes over the vocabulary instead of ten.
    """
    p, q = log_p.exp(), log_q.exp()
    average = 0.5 * (p + q)
    jsd = 0.5 * (_sum_p_log_p(p, log_p) + _sum_p_log_p(q, log_q)) - _sum_p_log_p(average, average.log())
    return jsd.clamp(min=0.0)  # >= 0 in exact arithmetic; float rounding can leave -1e-8


def select_premature_layer(final_log_probs: torch.Tensor,
                           premature_log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DoLa eq. 3 per sequence. final (B, V) and premature (L, B, V) log-probs of the L candidate layers.

    Returns (index of the chosen candidate per row (B,), JSD(q_N || q_j) as (B, L)).
    """
    jsd = jensen_shannon_divergence(final_log_probs[None], premature_log_probs).T  # (B, L)
    return jsd.argmax(-1), jsd


def plausibility_mask(final_log_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """DoLa eq. 4: True where q_N(x) >= alpha * max q_N, compared in log space. (B, V) -> (B, V) bool."""
    if alpha == 0.0:
        return torch.ones_like(final_log_probs, dtype=torch.bool)
    threshold = final_log_probs.max(-1, keepdim=True).values + math.log(alpha)  # (B, 1)
    return final_log_probs >= threshold


def dola_contrast(final_log_probs: torch.Tensor, premature_log_probs: torch.Tensor,
                  alpha: float) -> torch.Tensor:
    """DoLa eq. 5: log q_N - log q_M on V_head, -inf elsewhere. (B, V) each -> (B, V) scores."""
    keep = plausibility_mask(final_log_probs, alpha)
    return torch.where(keep, final_log_probs - premature_log_probs, torch.full_like(final_log_probs, -math.inf))


def paper_dola_scores(final_logits: torch.Tensor, premature_logits: torch.Tensor, layers: Sequence[int],
                      alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole "paper" step. final (B, V); premature (L, B, V) early-exit logits (final norm applied).

    Returns (log p_hat (B, V), premature layer per row (B,), JSD (B, L)). log p_hat = log_softmax(F) is
    what the paper samples from; beam search adds it to the beam scores as a log-probability.
    """
    final_lp = final_logits.float().log_softmax(-1)  # (B, V)
    premature_lp = premature_logits.float().log_softmax(-1)  # (L, B, V)
    index, jsd = select_premature_layer(final_lp, premature_lp)
    chosen_lp = premature_lp[index, torch.arange(final_lp.shape[0], device=index.device)]  # (B, V)
    chosen = torch.as_tensor(list(layers), device=index.device)[index]  # (B,) layer numbers
    return dola_contrast(final_lp, chosen_lp, alpha).log_softmax(-1), chosen, jsd


def transformers_dola_scores(final_logits: torch.Tensor, premature_logits: torch.Tensor, layers: Sequence[int],
                             alpha: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers 4.55.2 `_dola_select_contrast` + `_relative_top_filter`: the same formulas.

    premature (L, B, V) = lm_head(h_j) *without* the final norm. Its score is 0.5 * (KL(m || q_N) +
    KL(m || q_j)) with `F.kl_div(log q, m)` = m (log m - log q), *mean* over the vocabulary and then over
    the batch: one layer for all rows. Returns (scores (B, V), layer (B,), per-row scores (B, L)).

    transformers calls F.kl_div twice, which computes m log m twice with `xlogy`, a visible share of the step
    (figures: docs/performance.md); the sums below are the same, regrouped as
    KL(m || q) = sum m log m - sum m log q, with m log m computed once: the same scores up to float rounding,
    so the same layer unless two layers' scores tie within it (tests/generation/test_dola.py compares the output with
    transformers' function bit for bit; the generate tests compare tokens).
    """
    final_logits = final_logits.float()
    B, V = final_logits.shape
    final_lp = final_logits.log_softmax(dim=-1)  # (B, V)
    if len(layers) == 1:  # transformers skips the score when there is nothing to choose
        index, score = 0, torch.zeros(B, 1, device=final_logits.device)
        premature_lp = premature_logits[0].log_softmax(dim=-1)
    else:
        # The premature logits stay in the model's dtype, as in transformers (float32 only for the final ones).
        premature_lps = premature_logits.log_softmax(dim=-1)  # (L, B, V)
        average = 0.5 * (F.softmax(final_logits, dim=-1)[None] + F.softmax(premature_logits, dim=-1))  # float32
        average_log_average = _sum_p_log_p(average, average.log())  # (L, B) sum m log m, with 0 log 0 = 0
        kl1 = (average_log_average - torch.einsum("lbv,bv->lb", average, final_lp)) / V  # mean of KL(m || q_N)
        kl2 = (average_log_average - torch.einsum("lbv,lbv->lb", average, premature_lps.float())) / V  # KL(m||q_j)
        score = 0.5 * (kl1 + kl2)  # (L, B)
        index = int(score.mean(-1).argmax().item())
        score = score.T  # (B, L)
        premature_lp = premature_lps[index]
    chosen = torch.full((B,), layers[index], dtype=torch.long, device=final_logits.device)
    return dola_contrast(final_lp, premature_lp, alpha), chosen, score


# ------------------------------------------------------------------------------------ the loop step

@dataclass(frozen=True)
class DoLa(LogitsStep):
    """The decode-loop step: replaces the scores (B, V) by DoLa's contrast. Build it with `DoLa.for_model`.

    "paper" is of kind "contrast": it runs after the penalties (they act on the last layer's logits first);
    "transformers" is a "raw_contrast": it runs first, the penalties and warpers after it, as in transformers.
    Records per position: `dola_premature_layer` (B,), the layers' scores (B, L): `dola_jsd` (paper: JSD in nats)
    or `dola_layer_score` (transformers: 0.5 (KL(m||q_N) + KL(m||q_j)) / V), and `dola_candidate_layers` (L,),
    the layer of each column.
    """

    layers: tuple[int, ...]  # candidate premature layers J
    variant: str = "paper"
    alpha: float = 0.1

    @classmethod
    def for_model(cls, config, dola_layers: str | Sequence[int], dola_variant: str = "paper",
                  alpha: float = 0.1) -> "DoLa":
        """Check the arguments against the model config (before any forward pass) and build the step."""
        check_dola_arguments(dola_variant, alpha)
        layers = dola_candidate_layers(dola_layers, config.num_hidden_layers, config.tie_word_embeddings)
        return cls(tuple(layers), dola_variant, float(alpha))

    @property
    def kind(self) -> str:
        return "contrast" if self.variant == "paper" else "raw_contrast"

    @property
    def needs(self) -> StepNeeds:
        """The candidate layers' logits, computed by the loop with the final ones in one head matmul; transformers
        applies lm_head to the raw hidden state, without the final norm."""
        return StepNeeds(hidden_states=True, early_exit_layers=self.layers, early_exit_norm=self.variant == "paper")

    def __call__(self, scores: torch.Tensor, ctx) -> torch.Tensor:
        premature = ctx.early_exit_logits  # (L, B, V), eq. 2, when the loop computed them with the final logits
        if premature is None:  # "transformers" heads the raw states, without the final norm
            premature = ctx.model.early_exit_logits(ctx.hidden_states, self.layers, norm=self.needs.early_exit_norm)
        if self.variant == "paper":
            new_scores, chosen, jsd = paper_dola_scores(scores, premature, self.layers, self.alpha)
        else:
            new_scores, chosen, jsd = transformers_dola_scores(scores, premature, self.layers, self.alpha)
        ctx.record("dola_premature_layer", chosen)
        # The paper's variant scores layers by the true JSD; transformers' by its own averaged KL score.
        ctx.record("dola_jsd" if self.variant == "paper" else "dola_layer_score", jsd)
        ctx.record("dola_candidate_layers", torch.tensor(self.layers))  # (L,) the columns of dola_jsd
        return new_scores
