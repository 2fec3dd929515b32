"""Beam search: keep the num_beams most likely partial sequences of each prompt, extend them all each step.

The algorithm is transformers 4.55.2's vectorised beam search, step for step (the tests compare sequences
and scores), written with names for what each tensor means. Shapes: B prompts, K = num_beams running
beams each, C = 2K candidates (more with several EOS ids), L = prompt + max_new_tokens, V = vocabulary.

Per step:
  1. log p(next | beam) for all K beams, processed by the logits steps; add each beam's running score.
  2. Candidates: the C best (beam, token) pairs of all K x V (or C drawn at random with do_sample).
     C > K so that K candidates remain that do not end here, even if the best ones all hit EOS.
  3. Candidates that end (EOS, stop string, max length) and rank in the top K become finished
     hypotheses, scored  sum log p / generated_length ** length_penalty.
  4. The K best candidates that did not end become the running beams; the cache follows them.
  5. Stop when no running beam can still beat the finished ones (early_stopping decides how that is
     judged), or when every candidate ended.

early_stopping: True = stop as soon as K hypotheses are finished; False = stop when the best running
beam, scored at its current length, cannot beat the worst finished one; "never" = the same test but
(for length_penalty > 0) at the longest length it could still reach (the canonical beam search).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cache import cache_for_config

from .compiled import CompiledDecoder
from .guards import check_logits
from .loop import GenerateOutput, PreparedCall, extend_mask, forward_tokens, no_token_left, reason_names
from .steps import StepContext, StepNeeds, run_steps

NEVER = -1.0e9  # a score that can never be chosen (the value transformers uses, so ties resolve alike)


@dataclass
class Finished:
    """The best K finished hypotheses of each prompt so far, best first."""

    sequences: torch.Tensor  # (B, K, L) padded after the end
    scores: torch.Tensor  # (B, K) length-penalised score; NEVER for empty slots
    reasons: torch.Tensor  # (B, K) stop reason code; 0 = empty slot
    lengths: torch.Tensor  # (B, K) number of generated tokens


def gather_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (B, K, ...) -> (B, J, ...): row j of prompt b is tensor[b, index[b, j]]."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def beam_search(model, call: PreparedCall, records: dict[str, list]) -> GenerateOutput:
    """Beam search over a batch of left-padded prompts call.input_ids (B, T); returns num_return_sequences rows
    per prompt. compile=True runs the one-token forward of all B * num_beams rows compiled (generation/compiled.py)."""
    opts, stop, input_ids, generator = call.options, call.stop, call.input_ids, call.generator
    length_penalty, early_stopping = opts.length_penalty, opts.early_stopping
    B, T = input_ids.shape
    K, L = opts.num_beams, T + stop.max_new_tokens
    C = max(2, 1 + stop.eos_token_ids.numel()) * K
    beams = CompiledBeams(model, B, K, L) if opts.compile else EagerBeams(model, K, call.needs)
    # (B*K, V): the prompt once, not per beam
    logits, hidden_states = beams.prefill(input_ids, call.attention_mask)

    running, running_scores, finished = initial_beams(input_ids, K, L, call.pad_token_id)
    can_improve = torch.ones((B, 1), dtype=torch.bool, device=input_ids.device)
    all_scores, all_logits = [], []
    for position in range(stop.max_new_tokens):
        length = T + position  # tokens in each running beam before this position
        flat = running[:, :, :length].reshape(B * K, length)
        ctx = StepContext(flat, T, logits, hidden_states, model, generator, position, records)
        log_probs = run_steps(call.steps, torch.log_softmax(logits, dim=-1), ctx)  # (B*K, V)
        check_logits(logits, log_probs, position)  # NaN / inf named, never chosen
        if opts.output_scores:
            all_scores.append(log_probs)
        if opts.output_logits:  # (B*K, V) the running beams' raw logits, as transformers keeps them
            all_logits.append(logits)
        totals = (log_probs.view(B, K, -1) + running_scores[..., None]).view(B, -1)  # (B, K*V)
        stuck = (totals.max(dim=-1).values <= NEVER / 2) & can_improve[:, 0]  # (B,) no live beam can continue
        if stuck.any():
            raise no_token_left(int(stuck.nonzero()[0]), position)
        cand_scores, cand_seqs, parents = top_candidates(totals, running, length, C, call.sampling, generator)
        cand_reasons = stop(cand_seqs[:, :, :length + 1].reshape(B * C, -1)).view(B, C)
        ends = cand_reasons > 0
        # 4. the K best candidates that go on (a candidate that ended gets NEVER added, so it sinks)
        go_on = torch.topk(cand_scores + ends.float() * NEVER, K).indices  # (B, K)
        running = gather_beams(cand_seqs, go_on)
        running_scores = gather_beams(cand_scores + ends.float() * NEVER, go_on)
        finished = update_finished(finished, cand_seqs, cand_scores, cand_reasons, can_improve, K, position + 1,
                                   length_penalty, early_stopping)
        beams.reorder((gather_beams(parents, go_on) + K * torch.arange(B, device=go_on.device)[:, None]).view(-1))
        can_improve = can_improve & improvement_possible(running_scores, finished, position + 1, stop.max_new_tokens,
                                                         length_penalty, early_stopping)
        all_full = (finished.reasons > 0).all() and early_stopping is True
        if not can_improve.any() or all_full or ends.all():
            break
        logits, hidden_states = beams.decode(running[:, :, length].reshape(B * K, 1))
    out = beam_output(finished, T, opts.num_return_sequences, tuple(all_scores) if opts.output_scores else None,
                      records)
    out.logits = tuple(all_logits) if opts.output_logits else None
    return out


class EagerBeams:
    """The model's forward over the beams' cache: the B prompts once, then B*K rows per step, reordered each step.

    A growing cache: reordering beams copies the filled part either way, so a preallocated one gains
    nothing. Sliding-window layers (GPT-OSS) keep only their window.
    """

    def __init__(self, model, num_beams: int, needs: StepNeeds):
        # the early-exit logits come from the steps themselves here (ctx.early_exit_logits stays None)
        self.model, self.num_beams, self.needs = model, num_beams, StepNeeds(hidden_states=needs.hidden_states)
        self.cache = cache_for_config(model.config)
        self.mask: torch.Tensor | None = None  # (B*K, length) when the prompts are padded

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """(B, T) prompts -> logits (B*K, V) and hidden states; rows b*K .. b*K + K - 1 are copies of prompt b."""
        K = self.num_beams
        out = forward_tokens(self.model, input_ids, attention_mask, self.cache, self.needs)
        self.cache.repeat_interleave(K)  # every beam starts from its prompt's cache
        self.mask = attention_mask.repeat_interleave(K, dim=0) if attention_mask is not None else None
        hidden_states = None
        if self.needs.hidden_states:
            hidden_states = tuple(h.repeat_interleave(K, dim=0) for h in out.hidden_states)
        return out.logits[:, -1].float().repeat_interleave(K, dim=0), hidden_states

    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows[index]: index (B*K,) names each new row's parent."""
        self.cache.reorder(index)

    def decode(self, tokens: torch.Tensor):
        """tokens (B*K, 1) -> logits (B*K, V) and hidden states."""
        self.mask = extend_mask(self.mask)
        out = forward_tokens(self.model, tokens, self.mask, self.cache, self.needs)
        return out.logits[:, -1].float(), out.hidden_states


class CompiledBeams:
    """The same three calls through CompiledDecoder (its fixed slots hold all B*K rows). It returns no hidden
    states: generate()'s options check refuses compile=True with a step that reads them."""

    def __init__(self, model, batch_size: int, num_beams: int, max_length: int):
        self.decoder = CompiledDecoder(model, batch_size * num_beams, max_length)
        self.num_beams = num_beams

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        return self.decoder.prefill(input_ids, attention_mask, repeats=self.num_beams)[:, -1].float(), None

    def reorder(self, index: torch.Tensor) -> None:
        self.decoder.reorder(index)

    def decode(self, tokens: torch.Tensor):
        return self.decoder.decode(tokens)[:, -1].float(), None


def initial_beams(input_ids: torch.Tensor, K: int, L: int, pad_token_id: int
                  ) -> tuple[torch.Tensor, torch.Tensor, Finished]:
    """K copies of each prompt in (B, K, L) buffers, their scores, and K empty finished slots."""
    B, T = input_ids.shape
    running = input_ids.new_full((B, K, L), pad_token_id)
    running[:, :, :T] = input_ids[:, None, :]
    # Only beam 0 is live at the start: K copies of the prompt would otherwise give K identical candidates.
    running_scores = torch.full((B, K), NEVER, device=input_ids.device)
    running_scores[:, 0] = 0.0
    empty = torch.zeros((B, K), dtype=torch.long, device=input_ids.device)
    finished = Finished(running.clone(), torch.full((B, K), NEVER, device=input_ids.device), empty, empty.clone())
    return running, running_scores, finished


def top_candidates(totals: torch.Tensor, running: torch.Tensor, length: int, C: int, do_sample: bool,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The C best (or C sampled, without replacement) continuations among all K x V of each prompt.

    totals (B, K*V) summed log-probs -> scores (B, C), sequences (B, C, L) with the new token written at
    `length`, and each candidate's parent beam (B, C).
    """
    V = totals.shape[-1] // running.shape[1]
    if do_sample:
        index = torch.multinomial(torch.softmax(totals, dim=-1), num_samples=C, generator=generator)
        scores = torch.gather(totals, 1, index)
    else:
        scores, index = torch.topk(totals, C)
    parents, tokens = index // V, index % V  # flat index = beam * V + token
    sequences = gather_beams(running, parents)  # (B, C, L) a copy
    sequences[:, :, length] = tokens
    return scores, sequences, parents


def update_finished(finished: Finished, cand_seqs: torch.Tensor, cand_scores: torch.Tensor,
                    cand_reasons: torch.Tensor, can_improve: torch.Tensor, K: int, new_length: int,
                    length_penalty: float, early_stopping: bool | str) -> Finished:
    """Merge the candidates that end here into the best K finished hypotheses (step 3).

    Only candidates ranked in the top K may finish (the others exist to refill the running beams), and
    none is added once a prompt is done (K finished with early_stopping=True, or no possible improvement).
    """
    in_top_k = torch.arange(cand_scores.shape[1], device=cand_scores.device) < K  # (C,)
    just_finished = (cand_reasons > 0) & in_top_k[None, :]  # (B, C)
    scores = cand_scores / (new_length ** length_penalty)  # length normalisation of the sum of log-probs
    is_full = (finished.reasons > 0).all(dim=-1, keepdim=True) & (early_stopping is True)
    scores = scores + is_full.float() * NEVER
    scores = scores + (~can_improve).float() * NEVER
    scores = scores + (~just_finished).float() * NEVER
    merged_scores = torch.cat([finished.scores, scores], dim=1)  # (B, K + C)
    best = torch.topk(merged_scores, K).indices  # (B, K)
    lengths = torch.full_like(cand_reasons, new_length)
    reasons = torch.where(just_finished, cand_reasons, 0)
    return Finished(gather_beams(torch.cat([finished.sequences, cand_seqs], dim=1), best),
                    gather_beams(merged_scores, best),
                    gather_beams(torch.cat([finished.reasons, reasons], dim=1), best),
                    gather_beams(torch.cat([finished.lengths, lengths], dim=1), best))


def improvement_possible(running_scores: torch.Tensor, finished: Finished, generated: int, max_new_tokens: int,
                         length_penalty: float, early_stopping: bool | str) -> torch.Tensor:
    """(B, 1): could the best running beam still beat the worst finished hypothesis? (step 5)

    Log-probs only fall as a beam grows, so its best possible score is its score now, divided by the
    length penalty at the most favourable length: the current one, or (early_stopping="never" with a
    positive length_penalty, where longer is better) the longest allowed.
    """
    best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0.0 else generated
    best_possible = running_scores[:, :1] / (best_length ** length_penalty)  # (B, 1)
    worst_finished = torch.where(finished.reasons > 0, finished.scores.min(dim=1, keepdim=True).values, NEVER)
    return (best_possible > worst_finished).any(dim=-1, keepdim=True)  # an empty slot can always be filled


def beam_output(finished: Finished, prompt_length: int, num_return_sequences: int,
                scores: tuple[torch.Tensor, ...] | None, records: dict[str, list]) -> GenerateOutput:
    """The best num_return_sequences hypotheses per prompt, cut to the longest of them."""
    B, _, L = finished.sequences.shape
    n = num_return_sequences
    length = prompt_length + int(finished.lengths[:, :n].max())
    sequences = finished.sequences[:, :n].reshape(B * n, L)[:, :length]
    return GenerateOutput(sequences, prompt_length, reason_names(finished.reasons[:, :n].reshape(-1)),
                          scores=scores, sequences_scores=finished.scores[:, :n].reshape(-1), records=records)
