"""The entry points: `generate(model, input_ids, **options)` and its streaming form `stream(...)`.

Both check every option (generation/options.py) before the first forward pass, build the ordered list of
logits steps, and run the decode loop (generation/loop.py) or beam search (generation/beam.py).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from .beam import beam_search
from .contrastive import contrastive_search
from .layer_selection import finish_layer_selection_records
from .loop import GenerateOutput, decode_loop, output_from_tokens, prepare_call
from .options import options_help


# inference_mode, not just no_grad: it also skips autograd's version counters and view tracking, a measurable
# part of a one-token step (docs/performance.md). The returned tensors are inference tensors: read them freely; clone() one to modify it
# in place or use it with autograd.
@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             **options: Any) -> GenerateOutput:
    """Continue each prompt of the batch. input_ids (B, T) left-padded, attention_mask (B, T) with 0 for pads.

    options (generation/options.py declares each with its range; the list is at the end of this docstring).
    Returns GenerateOutput: .sequences (B * num_return_sequences, T + new), .stop_reasons, .scores (with
    output_scores=True), .logits (with output_logits=True), .sequences_scores (beam search), .logprobs /
    .top_logprobs, .records (from the steps; each also readable as an attribute, e.g.
    out.entropy_selected_layer_indices). Without a generator, entropy_decoding="random_after" draws from torch's
    global generator (torch.manual_seed).
    """
    call = prepare_call(model, input_ids, attention_mask, options)
    opts, records = call.options, {}
    if opts.num_beams > 1:
        return beam_search(model, call, records)
    if opts.penalty_alpha is not None:
        return contrastive_search(model, call, records)
    decoded = list(decode_loop(model, call, records))
    finish_layer_selection_records(records, [d.tokens for d in decoded])
    return output_from_tokens(call, decoded, records)


generate.__doc__ += "\n    The options, with their defaults:\n" + options_help() + "\n"


def stream(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
           **options: Any) -> Iterator[torch.Tensor]:
    """Like generate(), but yields each position's new tokens, (B,), as soon as they are chosen.

    Options are checked here, at the call, before the first token. Rows that have finished yield
    pad_token_id. Beam search cannot stream (the best beam is only known at the end): num_beams must be 1.

        for tokens in stream(model, ids, max_new_tokens=50):
            print(tokenizer.decode(tokens.tolist()), end="", flush=True)
    """
    call = prepare_call(model, input_ids, attention_mask, options, mode="stream")
    return _stream_tokens(model, call)


@torch.inference_mode()  # on a generator function, torch enters and leaves it around each next()
def _stream_tokens(model, call) -> Iterator[torch.Tensor]:
    for decoded in decode_loop(model, call, {}):
        yield decoded.tokens
