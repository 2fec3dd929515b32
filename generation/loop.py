"""The loop skeleton: prepare a call, run the model on new tokens, choose a token; and the sampling loop.

    call = prepare_call(model, input_ids, attention_mask, options)   # checks, steps, stop rules, generator
    out = forward_tokens(model, call.input_ids, call.attention_mask, cache, call.needs)   # the prompt
    repeat:  scores = run_steps(call.steps, logits)  ->  token = choose_token(scores)  ->  stop?
             out = forward_tokens(model, token, mask, cache, call.needs)

`decode_loop` is that loop for greedy and sampled decoding (one row per sequence); beam search (beam.py),
contrastive search (contrastive.py), speculative decoding and hybrid routing (two_models.py) walk the search
space differently, with the same three pieces. Each strategy that reshapes the distribution is a logits step
(steps.py); the loop never changes when one is added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from cache import cache_for_config
from cache.budget import rows_do_not_fit

from .checks import check_inputs, refuse_unsupported
from .compiled import CompiledDecoder
from .guards import check_length_penalty, check_logits
from .layer_selection import LayerSelectionOptions
from .options import GenerationOptions, OptionError, build_logits_steps, check_option_names
from .steps import LogitsStep, StepContext, StepNeeds, choose_token, combined_needs, order_steps, run_steps
from .stopping import STOP_REASONS, StopConditions


# --------------------------------------------------------------------------- preparing a call
@dataclass
class PreparedCall:
    """Everything a strategy needs, checked: the options, the ordered steps and what they need, the stop rules,
    the generator, and the rows to decode (each prompt repeated num_return_sequences times when sampling)."""

    options: GenerationOptions
    steps: list[LogitsStep]
    needs: StepNeeds
    stop: StopConditions
    generator: torch.Generator | None
    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor | None  # (N, T), None when nothing is padded
    pad_token_id: int | None
    eos_token_ids: list[int]

    @property
    def sampling(self) -> bool:
        return self.options.sampling


def prepare_call(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, options: dict[str, Any],
                 mode: str = "generate") -> PreparedCall:
    """Check every option and the prompt (before any forward pass), build the steps in their order, the stop
    rules and the generator. mode: "generate", "stream" or "assisted" (one prompt, two models)."""
    options = dict(options)
    layer_selection = LayerSelectionOptions.pop_from(options)  # dola_layers, entropy_decoding, ...
    check_option_names(options)
    opts = GenerationOptions(**options)
    check_inputs(opts, model, input_ids, attention_mask)
    copies = max(opts.num_beams, opts.num_return_sequences)  # rows per prompt
    too_many = rows_do_not_fit(model.config, input_ids.shape[0] * copies, input_ids.shape[1], model.dtype,
                               model.device, f"batch {input_ids.shape[0]} x num_beams {opts.num_beams}"
                               if opts.num_beams > 1 else
                               f"batch {input_ids.shape[0]} x num_return_sequences {opts.num_return_sequences}")
    if too_many:
        raise OptionError(too_many, "num_beams", "num_return_sequences")
    if opts.num_beams > 1:
        check_length_penalty(opts.length_penalty, opts.max_new_tokens)
    eos = opts.eos_token_ids(model.config)
    generator = opts.generator
    if generator is None and layer_selection.entropy_decoding == "random_after":
        # Its layer draws come from torch's global generator (sampling's too, as they share ctx.generator),
        # so torch.manual_seed(...) makes the run reproducible, as transformers' sampling is.
        generator = global_generator(model.device)
    elif generator is None and opts.sampling:
        generator = torch.Generator(device=model.device)
        generator.seed()  # a fresh random seed; pass generator=... to make a run reproducible
    steps = build_logits_steps(opts, eos) + layer_selection.steps(model.config, opts.num_beams)
    steps = order_steps(steps)
    needs = combined_needs(steps)
    refuse_unsupported(opts, needs, model, input_ids, attention_mask, mode)
    stop = StopConditions.from_options(opts, eos, input_ids.shape[1], input_ids.device)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the model's plain causal path is the same and faster
    if opts.num_beams == 1 and opts.num_return_sequences > 1:  # several samples per prompt, as transformers does
        input_ids = input_ids.repeat_interleave(opts.num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(opts.num_return_sequences, dim=0)
    return PreparedCall(opts, steps, needs, stop, generator, input_ids, attention_mask,
                        opts.resolved_pad_token_id(model.config), eos)


def global_generator(device: torch.device) -> torch.Generator:
    """torch's own default generator for `device`, the one torch.manual_seed seeds (and transformers samples from)."""
    if device.type == "cpu":
        return torch.default_generator
    module = getattr(torch, device.type)  # torch.cuda, torch.mps, ...
    return module.default_generators[device.index if device.index is not None else module.current_device()]


# --------------------------------------------------------------------------- running the model
@dataclass
class ForwardResult:
    """What the model gave the loop for the last position."""

    logits: torch.Tensor  # (B, 1, V)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (B, 1, H) per layer, when a step needs them
    early_exit_logits: torch.Tensor | None = None  # (L, B, V) the layers the needs named


def forward_tokens(model, tokens: torch.Tensor, attention_mask: torch.Tensor | None, cache,
                   needs: StepNeeds = StepNeeds()) -> ForwardResult:
    """The model on new tokens (B, T) with the cache: the whole prompt first (the prefill), then one token per
    row. attention_mask covers the cached positions plus these: (B, past + T). Logits only for the last
    position (the vocabulary matmul is the biggest one), plus what the steps' needs ask for."""
    if not needs.early_exit_layers:
        out = model(tokens, attention_mask=attention_mask, cache=cache, logits_to_keep=1,
                    output_hidden_states=needs.hidden_states)
        return ForwardResult(out.logits, out.hidden_states)
    states = model.hidden_states(tokens, attention_mask, cache=cache, keep_last=1)  # N + 1 of (B, 1, H)
    logits, early = final_and_early_exit_logits(model, states, needs.early_exit_layers, needs.early_exit_norm)
    return ForwardResult(logits, states, early)


def final_and_early_exit_logits(model, states: tuple[torch.Tensor, ...], layers: Sequence[int],
                                norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The final logits (B, 1, V) and the early-exit logits of `layers` (L, B, V), last position, in one head
    matmul: DoLa and entropy decoding need both every position, and one pass over the head for 1 + L rows costs
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


def no_token_left(row: int, position: int) -> ValueError:
    """The error for a row whose every score is -inf: greedy would silently pick token 0, sampling would crash."""
    return ValueError(f"choosing new token {position + 1} of row {row}, the logits steps left no token (every "
                      "score is -inf): a step that bans tokens removed them all, e.g. no_repeat_ngram_size once "
                      "every token would repeat an n-gram; use a larger no_repeat_ngram_size or fewer new tokens")


# --------------------------------------------------------------------------- what comes out
@dataclass
class DecodedToken:
    """What one iteration of the loop produced."""

    tokens: torch.Tensor  # (B,) the chosen tokens (pad for rows that had already finished)
    scores: torch.Tensor  # (B, V) the processed scores they were chosen from
    reasons: torch.Tensor  # (B,) stop reason codes so far (0 = still running), see stopping.py
    logits: torch.Tensor  # (B, V) float32, the model's last-position logits before any step


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # (N, prompt + new) prompt (with its left padding) followed by the new tokens
    prompt_length: int
    stop_reasons: list[str]  # per row, one of stopping.STOP_REASONS
    scores: tuple[torch.Tensor, ...] | None = None  # per position (N, V) processed scores, with output_scores=True
    sequences_scores: torch.Tensor | None = None  # (N,) beam search: length-penalised sum of log-probs
    records: dict[str, list] = field(default_factory=dict)  # what steps stored with ctx.record(name, value)
    # With logprobs=True: (N, new) log-probability of each chosen token under the distribution it was chosen
    # from (log_softmax of the processed scores); with top_logprobs=n also the n best alternatives, (N, new, n)
    # log-probabilities and their token ids. Entries after a row's end belong to its padding.
    logprobs: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None
    top_logprob_ids: torch.Tensor | None = None
    logits: tuple[torch.Tensor, ...] | None = None  # per position (N, V) raw float32 logits, with output_logits=True

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


def output_from_tokens(call: PreparedCall, decoded: list[DecodedToken], records: dict[str, list]) -> GenerateOutput:
    """The output of a loop that chose one token per row each iteration (decode_loop, contrastive search)."""
    opts = call.options
    new_tokens = torch.stack([d.tokens for d in decoded], dim=1)  # (N, new)
    out = GenerateOutput(torch.cat([call.input_ids, new_tokens], dim=1), call.input_ids.shape[1],
                         reason_names(decoded[-1].reasons), records=records,
                         scores=tuple(d.scores for d in decoded) if opts.output_scores else None,
                         logits=tuple(d.logits.clone() for d in decoded) if opts.output_logits else None)
    if opts.logprobs or opts.top_logprobs:
        log_probs = torch.stack([d.scores for d in decoded], dim=1).log_softmax(-1)  # (N, new, V)
        out.logprobs = log_probs.gather(-1, new_tokens[..., None])[..., 0]
        if opts.top_logprobs:
            out.top_logprobs, out.top_logprob_ids = log_probs.topk(opts.top_logprobs, dim=-1)
    return out


def reason_names(reasons: torch.Tensor) -> list[str]:
    return [STOP_REASONS[int(code)] for code in reasons]


# --------------------------------------------------------------------------- greedy and sampled decoding
def decode_loop(model, call: PreparedCall, records: dict[str, list]) -> Iterator[DecodedToken]:
    """Greedy or sampled decoding of call.input_ids (B, T), left-padded; each row ends on its own and gets pad
    tokens afterwards. Stops when every row has a stop reason (max_new_tokens is one, so the loop ends)."""
    input_ids, stop = call.input_ids, call.stop
    B, prompt_length = input_ids.shape
    if call.options.compile:  # the options check made sure no step needs more than the final logits
        run_prompt, run_token = _compiled_runner(model, B, prompt_length + stop.max_new_tokens)
    else:
        run_prompt, run_token = _model_runner(model, prompt_length + stop.max_new_tokens, call.needs)
    sequences, attention_mask = input_ids, call.attention_mask
    reasons = torch.zeros(B, dtype=torch.long, device=input_ids.device)
    out = run_prompt(input_ids, attention_mask)
    for position in range(stop.max_new_tokens):
        logits = out.logits[:, -1].float()  # (B, V)
        ctx = StepContext(sequences, prompt_length, logits, out.hidden_states, model, call.generator, position,
                          records, out.early_exit_logits)
        scores = run_steps(call.steps, logits, ctx)
        check_logits(logits, scores, position)  # NaN / inf named, never chosen
        finished = reasons > 0
        stuck = ~finished & ~torch.isfinite(scores).any(dim=-1)  # (B,) running rows with nothing left
        if stuck.any():
            raise no_token_left(int(stuck.nonzero()[0]), position)
        tokens = choose_token(scores, call.sampling, call.generator)  # (B,)
        if finished.any():
            tokens = tokens.masked_fill(finished, call.pad_token_id)  # a finished row only grows padding
        sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
        reasons = torch.where(finished, reasons, stop(sequences))
        yield DecodedToken(tokens, scores, reasons, logits)
        if (reasons > 0).all():
            return
        attention_mask = extend_mask(attention_mask)
        out = run_token(tokens[:, None], attention_mask)


def _model_runner(model, max_length: int, needs: StepNeeds):
    """The prompt, then one token at a time, through the model with what the steps need."""
    # Preallocated for the whole run (written in place each step); sliding-window layers keep only their window.
    cache = cache_for_config(model.config, max_length=max_length)

    def run_prompt(input_ids, attention_mask):
        return forward_tokens(model, input_ids, attention_mask, cache, needs)

    def run_token(tokens, attention_mask):
        return forward_tokens(model, tokens, attention_mask, cache, needs)

    return run_prompt, run_token


def _compiled_runner(model, batch_size: int, max_length: int):
    """The same two calls through CompiledDecoder, which tracks positions and padding itself."""
    decoder = CompiledDecoder(model, batch_size, max_length)

    def run_prompt(input_ids, attention_mask):
        return ForwardResult(decoder.prefill(input_ids, attention_mask))

    def run_token(tokens, attention_mask):
        return ForwardResult(decoder.decode(tokens))

    return run_prompt, run_token
