"""The decode loop: prefill the prompt once, then one token per step with the KV cache.

    prefill(prompt) -> logits at the last position
    repeat:  scores = logits steps(logits)  ->  token = select(scores)  ->  stop?  ->  decode_one_token(token)

Each strategy is a logits step (generation/steps.py) or the token selector; the loop never changes when
one is added. `decode_loop` yields a `DecodeStep` per token, so `generate` and `stream` share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from cache import DynamicCache, cache_for_config
from .compiled import CompiledDecoder
from .guards import check_logits
from .steps import LogitsStep, StepContext, apply_logits_steps, early_exit_request, needs_hidden_states
from .stopping import STOP_REASONS, StopConditions


EarlyExit = tuple[tuple[int, ...], bool]  # (layers, with final norm): see steps.early_exit_request


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: DynamicCache,
            output_hidden_states: bool = False, early_exit: EarlyExit | None = None) -> ModelStep:
    """Run the whole prompt (B, T) once, filling `cache`. Logits (B, 1, V) only for the last position:
    the other positions' predictions are never used, and the vocabulary matmul is the biggest one."""
    return run_model(model, input_ids, attention_mask, cache, output_hidden_states, early_exit)


def decode_one_token(model, tokens: torch.Tensor, attention_mask: torch.Tensor | None, cache: DynamicCache,
                     output_hidden_states: bool = False, early_exit: EarlyExit | None = None) -> ModelStep:
    """Feed the newest tokens (B, 1); the cache supplies every earlier key and value.
    attention_mask, when given, covers the cached positions plus this one: (B, past + 1)."""
    return run_model(model, tokens, attention_mask, cache, output_hidden_states, early_exit)


@dataclass
class ModelStep:
    """What the model gave the loop for the last position."""

    logits: torch.Tensor  # (B, 1, V)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (B, 1, H) per layer, when a step needs them
    early_exit_logits: torch.Tensor | None = None  # (L, B, V) the layers of `early_exit`, when asked


def run_model(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache,
              output_hidden_states: bool = False, early_exit: EarlyExit | None = None) -> ModelStep:
    """The model on input_ids (B, T) with the cache; the last position's logits and what the steps asked for."""
    if early_exit is None:
        out = model(input_ids, attention_mask=attention_mask, cache=cache, logits_to_keep=1,
                    output_hidden_states=output_hidden_states)
        return ModelStep(out.logits, out.hidden_states)
    states = model.hidden_states(input_ids, attention_mask, cache=cache, keep_last=1)  # N + 1 of (B, 1, H)
    logits, early = final_and_early_exit_logits(model, states, *early_exit)
    return ModelStep(logits, states, early)


def final_and_early_exit_logits(model, states: tuple[torch.Tensor, ...], layers: Sequence[int],
                                norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The final logits (B, 1, V) and the early-exit logits of `layers` (L, B, V), last position, in one head
    matmul: DoLa and entropy decoding need both every step, and one pass over the head for 1 + L rows costs
    little more than for one. norm=False heads the early layers' raw states (the final one is always normed)."""
    final = states[-1][:, -1]  # (B, H)
    early = torch.stack([states[j][:, -1] for j in layers])  # (L, B, H)
    if norm:
        logits = model.logits_from_hidden(torch.cat([final[None], early]))  # (1 + L, B, V)
    else:
        logits = model.logits_from_hidden(torch.cat([model.norm(final)[None], early]), norm=False)
    return logits[0][:, None], logits[1:]


def extend_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask one position longer: the token just chosen is real (a pad after the end is never attended
    to by a real token, because that row is finished)."""
    if attention_mask is None:
        return None
    return torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=-1)


def no_token_left(row: int, step: int) -> ValueError:
    """The error for a row whose every score is -inf: greedy would silently pick token 0, sampling would crash."""
    return ValueError(f"choosing new token {step + 1} of row {row}, the logits steps left no token (every score "
                      "is -inf): a step that bans tokens removed them all, e.g. no_repeat_ngram_size once every "
                      "token would repeat an n-gram; use a larger no_repeat_ngram_size or fewer new tokens")


@dataclass
class DecodeStep:
    """What one iteration of the loop produced."""

    tokens: torch.Tensor  # (B,) the chosen tokens (pad for rows that had already finished)
    scores: torch.Tensor  # (B, V) the processed scores they were chosen from
    reasons: torch.Tensor  # (B,) stop reason codes so far (0 = still running), see stopping.py
    logits: torch.Tensor  # (B, V) float32, the model's last-position logits before any step


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # (N, prompt + new) prompt (with its left padding) followed by the new tokens
    prompt_length: int
    stop_reasons: list[str]  # per row: "eos", "stop_string" or "max_new_tokens"
    scores: tuple[torch.Tensor, ...] | None = None  # per step (N, V) processed scores, with output_scores=True
    sequences_scores: torch.Tensor | None = None  # (N,) beam search: length-penalised sum of log-probs
    records: dict[str, list] = field(default_factory=dict)  # what steps stored with ctx.record(name, value)
    logits: tuple[torch.Tensor, ...] | None = None  # per step (N, V) raw float32 logits, with output_logits=True

    def __getattr__(self, name: str) -> tuple[torch.Tensor, ...]:
        """A record as an attribute, one entry per step, as seed 000 reads them: out.entropy_selected_layer_indices."""
        records = self.__dict__.get("records", {})
        if name in records:
            return tuple(records[name])
        raise AttributeError(f"GenerateOutput has no attribute or record {name!r}; records of this run: "
                             f"{sorted(records) or 'none'}")

    @property
    def new_tokens(self) -> torch.Tensor:
        """(N, new) the generated part only."""
        return self.sequences[:, self.prompt_length:]


def decode_loop(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                steps: Sequence[LogitsStep], select: Callable, stop: StopConditions, pad_token_id: int | None,
                generator: torch.Generator | None, records: dict[str, list],
                compile: bool = False) -> Iterator[DecodeStep]:
    """Greedy or sampled decoding of a batch; each row ends on its own and gets pad tokens afterwards.

    input_ids (B, T) left-padded prompts; select(scores, generator) -> (B,) tokens. Stops when every row
    has a stop reason (max_new_tokens is one of them, so the loop always ends). compile=True runs the
    one-token step compiled (generation/compiled.py); the options check has made sure no step needs more
    than the final logits then.
    """
    B, prompt_length = input_ids.shape
    if compile:
        run_prompt, run_token = _compiled_runner(model, B, prompt_length + stop.max_new_tokens)
    else:
        run_prompt, run_token = _model_runner(model, prompt_length + stop.max_new_tokens, steps)
    sequences = input_ids
    reasons = torch.zeros(B, dtype=torch.long, device=input_ids.device)
    out = run_prompt(input_ids, attention_mask)
    for step in range(stop.max_new_tokens):
        logits = out.logits[:, -1].float()  # (B, V)
        ctx = StepContext(sequences, prompt_length, logits, out.hidden_states, model, generator, step, records,
                          out.early_exit_logits)
        scores = apply_logits_steps(steps, logits, ctx)
        check_logits(logits, scores, step)  # NaN / inf named, never chosen
        finished = reasons > 0
        stuck = ~finished & ~torch.isfinite(scores).any(dim=-1)  # (B,) running rows with nothing left
        if stuck.any():
            raise no_token_left(int(stuck.nonzero()[0]), step)
        tokens = select(scores, generator)  # (B,)
        if finished.any():
            tokens = tokens.masked_fill(finished, pad_token_id)  # a finished row only grows padding
        sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
        reasons = torch.where(finished, reasons, stop(sequences))
        yield DecodeStep(tokens, scores, reasons, logits)
        if (reasons > 0).all():
            return
        attention_mask = extend_mask(attention_mask)
        out = run_token(tokens[:, None], attention_mask)


def _model_runner(model, max_length: int, steps: Sequence[LogitsStep]):
    """prefill / decode_one_token through the model's forward, with what the steps ask for."""
    hidden = needs_hidden_states(steps)  # ask for every layer's hidden state only if a step uses them
    early_exit = early_exit_request(steps)  # DoLa, entropy: their layers' logits come with the final ones
    # Preallocated for the whole run (written in place each step); sliding-window layers keep only their window.
    cache = cache_for_config(model.config, max_length=max_length)

    def run_prompt(input_ids, attention_mask):
        return prefill(model, input_ids, attention_mask, cache, hidden, early_exit)

    def run_token(tokens, attention_mask):
        return decode_one_token(model, tokens, attention_mask, cache, hidden, early_exit)

    return run_prompt, run_token


def _compiled_runner(model, batch_size: int, max_length: int):
    """The same two calls through CompiledDecoder, which tracks positions and padding itself."""
    decoder = CompiledDecoder(model, batch_size, max_length)

    def run_prompt(input_ids, attention_mask):
        return ModelStep(decoder.prefill(input_ids, attention_mask))

    def run_token(tokens, attention_mask):
        return ModelStep(decoder.decode(tokens))

    return run_prompt, run_token


def reason_names(reasons: torch.Tensor) -> list[str]:
    return [STOP_REASONS[int(code)] for code in reasons]
