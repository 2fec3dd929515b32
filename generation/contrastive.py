"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation", eq. 5).

At each position the k most likely tokens V_k (after the logits steps) are candidates; each is fed through the
model, and the one with the best

    score(v) = (1 - alpha) * p(v | x_<t)  -  alpha * max_j cos(h_v, h_j)

is chosen: likely, but unlike everything said so far (h_v: the candidate's last hidden state after the final
norm, h_j: those of the context, padding excluded). alpha = penalty_alpha, k = top_k; alpha = 0 is greedy.
transformers 4.55.2 `generate(penalty_alpha=..., top_k=...)` does the same (the tests compare tokens).

Per position, B prompts x k candidates: the cache holds B rows; it is repeated k times for the candidates'
forward (B*k rows, one token each), then the chosen candidate's row is kept, so the cache never keeps a
rejected token. The chosen candidate's logits are the next position's.
"""

from __future__ import annotations

import torch

from cache import cache_for_config

from .guards import check_logits
from .loop import DecodedToken, GenerateOutput, PreparedCall, extend_mask, no_token_left, output_from_tokens
from .steps import StepContext, run_steps


def last_states(model, tokens: torch.Tensor, attention_mask: torch.Tensor | None, cache,
                keep_last: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's states after the final norm (B, T_kept, H) and the last position's logits (B, V)."""
    N = model.config.num_hidden_layers
    (states,) = model.hidden_states(tokens, attention_mask, cache=cache, layers=[N], keep_last=keep_last)
    normed = model.norm(states)  # (B, T_kept, H): what the paper compares (transformers' hidden_states[-1])
    return normed, model.lm_head(normed[:, -1]).float()


def degeneration_penalty(context: torch.Tensor, candidates: torch.Tensor,
                         context_mask: torch.Tensor) -> torch.Tensor:
    """max_j cos(h_v, h_j) over the real context positions. context (B, S, H), candidates (B, k, H),
    context_mask (B, S) 1 = real -> (B, k)."""
    context = context / context.norm(dim=-1, keepdim=True)
    candidates = candidates / candidates.norm(dim=-1, keepdim=True)
    cosine = candidates @ context.transpose(1, 2)  # (B, k, S)
    cosine = cosine.masked_fill(~context_mask.bool()[:, None, :], torch.finfo(cosine.dtype).min)
    return cosine.max(dim=-1).values


@torch.inference_mode()
def contrastive_search(model, call: PreparedCall, records: dict[str, list]) -> GenerateOutput:
    """Contrastive search over call.input_ids (B, T), left-padded; options penalty_alpha and top_k."""
    alpha, k, stop = call.options.penalty_alpha, call.options.top_k, call.stop
    input_ids, attention_mask = call.input_ids, call.attention_mask
    B, T = input_ids.shape
    cache = cache_for_config(model.config)
    context, logits = last_states(model, input_ids, attention_mask, cache)  # (B, T, H), (B, V)
    context_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    sequences, reasons, decoded = input_ids, torch.zeros(B, dtype=torch.long, device=input_ids.device), []
    for position in range(stop.max_new_tokens):
        ctx = StepContext(sequences, T, logits, None, model, call.generator, position, records)
        scores = run_steps(call.steps, logits, ctx)  # (B, V)
        check_logits(logits, scores, position)
        finished = reasons > 0
        stuck = ~finished & ~torch.isfinite(scores).any(dim=-1)
        if stuck.any():
            raise no_token_left(int(stuck.nonzero()[0]), position)
        top_probs, top_ids = scores.softmax(-1).topk(k, dim=-1)  # (B, k)
        # Every candidate one step ahead: B*k rows over a k-fold copy of the cache.
        cache.repeat_interleave(k)
        mask = extend_mask(attention_mask)
        states, candidate_logits = last_states(model, top_ids.reshape(B * k, 1),
                                               mask.repeat_interleave(k, dim=0) if mask is not None else None, cache)
        penalty = degeneration_penalty(context, states.view(B, k, -1), context_mask)  # (B, k)
        chosen = ((1 - alpha) * top_probs - alpha * penalty).argmax(dim=-1)  # (B,)
        rows = torch.arange(B, device=chosen.device) * k + chosen  # each prompt's chosen candidate row
        cache.reorder(rows)  # keep only the chosen candidate's keys and values
        tokens = top_ids.gather(1, chosen[:, None])[:, 0]
        if finished.any():
            tokens = tokens.masked_fill(finished, call.pad_token_id)
        sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
        reasons = torch.where(finished, reasons, stop(sequences))
        decoded.append(DecodedToken(tokens, scores, reasons, logits))
        if (reasons > 0).all():
            break
        attention_mask, logits = mask, candidate_logits[rows]
        context = torch.cat([context, states.view(B, k, -1)[torch.arange(B), chosen][:, None]], dim=1)
        context_mask = torch.cat([context_mask, context_mask.new_ones(B, 1)], dim=1)
    return output_from_tokens(call, decoded, records)
