"""The entry points: `generate(model, input_ids, **options)` and its streaming form `stream(...)`.

Both check every option (generation/options.py) before the first forward pass, build the ordered list of
logits steps, and run the decode loop (generation/loop.py) or beam search (generation/beam.py).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from cache.budget import check_rows_fit
from .beam import beam_search
from .guards import check_length_penalty
from .layer_selection import LayerSelectionOptions, finish_layer_selection_records
from .loop import GenerateOutput, decode_loop, reason_names
from .options import (GenerationOptions, build_logits_steps, check_compile_option, check_inputs,
                      check_option_names)
from .steps import select_greedy, select_sample
from .stopping import StopConditions


def _prepare(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, options: dict[str, Any]):
    """Validate, resolve the defaults that come from the model, and build the steps and stop conditions."""
    layer_selection = LayerSelectionOptions.pop_from(options)  # dola_layers, entropy_decoding, ...
    check_option_names(options)
    opts = GenerationOptions(**options)
    check_inputs(opts, model, input_ids, attention_mask)
    copies = max(opts.num_beams, opts.num_return_sequences)  # rows per prompt
    check_rows_fit(model.config, input_ids.shape[0] * copies, input_ids.shape[1], model.dtype, model.device,
                   f"batch {input_ids.shape[0]} x num_beams {opts.num_beams}" if opts.num_beams > 1 else
                   f"batch {input_ids.shape[0]} x num_return_sequences {opts.num_return_sequences}")
    if opts.num_beams > 1:
        check_length_penalty(opts.length_penalty, opts.max_new_tokens)
    eos = opts.eos_token_ids(model.config)
    steps = build_logits_steps(opts, num_eos=len(eos))
    stop = StopConditions(torch.tensor(eos, dtype=torch.long, device=input_ids.device), input_ids.shape[1],
                          opts.max_new_tokens, tuple(opts.stop_string_list()), opts.tokenizer)
    generator = opts.generator
    if generator is None and layer_selection.entropy_decoding == "random_after":
        # Its layer draws come from torch's global generator (sampling's too, as they share ctx.generator),
        # so torch.manual_seed(...) makes the run reproducible, as transformers' sampling is.
        generator = global_generator(model.device)
    elif generator is None and opts.sampling:
        generator = torch.Generator(device=model.device)
        generator.seed()  # a fresh random seed; pass generator=... to make a run reproducible
    steps = layer_selection.place_steps(steps, model.config, opts.num_beams)
    check_compile_option(opts, steps, model)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the model's plain causal path is the same and faster
    return opts, steps, stop, generator, attention_mask


def global_generator(device: torch.device) -> torch.Generator:
    """torch's own default generator for `device`, the one torch.manual_seed seeds (and transformers samples from)."""
    if device.type == "cpu":
        return torch.default_generator
    module = getattr(torch, device.type)  # torch.cuda, torch.mps, ...
    return module.default_generators[device.index if device.index is not None else module.current_device()]


# inference_mode, not just no_grad: it also skips autograd's version counters and view tracking (about 7% of a
# one-token step here). The returned tensors are inference tensors: read them freely; clone() one to modify it
# in place or use it with autograd.
@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             **options: Any) -> GenerateOutput:
    """Continue each prompt of the batch. input_ids (B, T) left-padded, attention_mask (B, T) with 0 for pads.

    options: the fields of `GenerationOptions` (transformers' names: max_new_tokens, do_sample, temperature,
    top_k, top_p, min_p, repetition_penalty, no_repeat_ngram_size, num_beams, length_penalty, early_stopping,
    num_return_sequences, eos_token_id, pad_token_id, stop_strings, tokenizer, output_scores, output_logits, generator,
    logits_steps, compile); and the layer-selection options of generation/layer_selection.py: dola_layers,
    dola_variant, dola_alpha, entropy_decoding, entropy_record_tokens, entropy_normalize,
    entropy_consistency_alpha). Returns GenerateOutput: .sequences (B * num_return_sequences, T + new),
    .stop_reasons, .scores (with output_scores=True), .logits (with output_logits=True), .sequences_scores (beam
    search), .records (from your steps; each also readable as an attribute, e.g. out.entropy_selected_layer_indices).
    Without a generator, entropy_decoding="random_after" draws from torch's global generator (torch.manual_seed).
    """
    opts, steps, stop, generator, attention_mask = _prepare(model, input_ids, attention_mask, options)
    pad = opts.resolved_pad_token_id(model.config)
    records: dict[str, list] = {}
    if opts.num_beams > 1:
        return beam_search(model, input_ids, attention_mask, steps, stop, num_beams=opts.num_beams,
                           length_penalty=opts.length_penalty, early_stopping=opts.early_stopping,
                           num_return_sequences=opts.num_return_sequences, do_sample=opts.sampling,
                           pad_token_id=pad, generator=generator, output_scores=opts.output_scores, records=records,
                           compile=opts.compile, output_logits=opts.output_logits)
    if opts.num_return_sequences > 1:  # several samples per prompt: repeat each prompt, as transformers does
        input_ids = input_ids.repeat_interleave(opts.num_return_sequences, dim=0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(opts.num_return_sequences, dim=0)
    select = select_sample if opts.sampling else select_greedy
    new_tokens, scores, logits, reasons = [], [], [], None
    for step in decode_loop(model, input_ids, attention_mask, steps, select, stop, pad, generator, records,
                            opts.compile):
        new_tokens.append(step.tokens)
        if opts.output_scores:  # (B, V) per step: keep them only when asked, they add up
            scores.append(step.scores)
        if opts.output_logits:  # a copy: a compiled step may hand back the same buffer every step
            logits.append(step.logits.clone())
        reasons = step.reasons
    finish_layer_selection_records(records, new_tokens)
    sequences = torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)
    return GenerateOutput(sequences, input_ids.shape[1], reason_names(reasons),
                          scores=tuple(scores) if opts.output_scores else None, records=records,
                          logits=tuple(logits) if opts.output_logits else None)


def stream(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
           **options: Any) -> Iterator[torch.Tensor]:
    """Like generate(), but yields each step's new tokens, (B,), as soon as they are chosen.

    Options are checked here, at the call, before the first token. Rows that have finished yield
    pad_token_id. Beam search cannot stream (the best beam is only known at the end): num_beams must be 1.

        for tokens in stream(model, ids, max_new_tokens=50):
            print(tokenizer.decode(tokens.tolist()), end="", flush=True)
    """
    if options.get("num_beams", 1) != 1:
        raise ValueError("stream() needs num_beams=1: beam search only knows its best sequence at the end; "
                         "use generate() for beam search")
    if options.get("num_return_sequences", 1) != 1:
        raise ValueError("stream() returns one sequence per prompt: use num_return_sequences=1")
    opts, steps, stop, generator, attention_mask = _prepare(model, input_ids, attention_mask, options)
    select = select_sample if opts.sampling else select_greedy
    pad = opts.resolved_pad_token_id(model.config)
    return _stream_tokens(model, input_ids, attention_mask, steps, select, stop, pad, generator, opts.compile)


@torch.inference_mode()  # on a generator function, torch enters and leaves it around each next()
def _stream_tokens(model, input_ids, attention_mask, steps, select, stop, pad, generator,
                   compile: bool) -> Iterator[torch.Tensor]:
    for step in decode_loop(model, input_ids, attention_mask, steps, select, stop, pad, generator, {}, compile):
        yield step.tokens
