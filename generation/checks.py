"""Checks that need more than the options: the prompt and the token ids against the model (`check_inputs`), and
every refusal of a combination a strategy cannot run (`refuse_unsupported`), in one place. Both run before any
forward pass; a bad value raises ValueError (OptionError when it names options, so the command line shows flags).
"""

from __future__ import annotations

from typing import Any

import torch

from .compiled import check_compilable
from .options import GenerationOptions, OptionError, is_int, sequence_bias_pairs
from .steps import StepNeeds


def check_inputs(options: GenerationOptions, model, input_ids: Any, attention_mask: Any) -> None:
    """Check the prompt and the token ids against the model, before any forward pass."""
    config = model.config
    if isinstance(input_ids, torch.Tensor) and input_ids.device != model.device:
        raise ValueError(f"input_ids are on {input_ids.device} but the model on {model.device}: "
                         "move them with input_ids.to(model.device)")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        got = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else type(input_ids)
        raise ValueError(f"input_ids must be a (batch, length) torch.long tensor, got {got}")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): the prompt needs at least one token")
    outside = input_ids[(input_ids < 0) | (input_ids >= config.vocab_size)]
    if outside.numel():
        raise ValueError(f"input_ids hold ids outside the vocabulary [0, {config.vocab_size}), e.g. {int(outside[0])}: "
                         "was the prompt encoded with this model's tokenizer?")
    total = input_ids.shape[1] + options.max_new_tokens
    if total > config.max_position_embeddings:
        raise OptionError(f"prompt length ({input_ids.shape[1]}) + max_new_tokens ({options.max_new_tokens}) = "
                          f"{total} exceeds max_position_embeddings ({config.max_position_embeddings}); shorten the "
                          "prompt or lower max_new_tokens", "max_new_tokens")
    _check_attention_mask(attention_mask, input_ids)
    _check_token_ids(options, config)
    rows = input_ids.shape[0] * max(options.num_return_sequences, 1)
    if options.resolved_pad_token_id(config) is None and (rows > 1 or options.num_beams > 1):
        raise OptionError("pad_token_id is needed to fill finished sequences of a batch, and neither the argument, "
                          "config.pad_token_id nor an eos id gives one: pass pad_token_id=...", "pad_token_id")
    if options.generator is not None and options.generator.device.type != model.device.type:
        raise ValueError(f"generator is on {options.generator.device} but the model on {model.device}: "
                         f"create it with torch.Generator(device='{model.device.type}')")


def _check_token_ids(options: GenerationOptions, config) -> None:
    """Every token id an option names lies in the vocabulary."""
    named = [("eos_token_id", options.eos_token_ids(config)), ("pad_token_id", [options.pad_token_id])]
    named += [("bad_words_ids", [t for ids in options.bad_words_ids or () for t in ids])]
    named += [("sequence_bias", [t for ids, _ in sequence_bias_pairs(options.sequence_bias) or () for t in ids])]
    for name, ids in named:
        for token in ids:
            if token is not None and (not is_int(token) or not 0 <= token < config.vocab_size):
                raise OptionError(f"{name} {token!r} is outside the vocabulary [0, {config.vocab_size})", name)


def _check_attention_mask(attention_mask: Any, input_ids: torch.Tensor) -> None:
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if (attention_mask[:, 1:] < attention_mask[:, :-1]).any():
        raise ValueError("attention_mask shows right padding (a 0 after a 1); generation needs left padding: "
                         "put the pad tokens before the prompt (tokenizer padding_side='left')")
    if (attention_mask.sum(-1) == 0).any():
        raise ValueError("a row of attention_mask is all padding: every prompt needs at least one real token")


# --------------------------------------------------------------------------- what each strategy cannot run
def refuse_unsupported(options: GenerationOptions, needs: StepNeeds, model, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None, mode: str) -> None:
    """Every refusal of a combination, in one place. mode: "generate", "stream", "assisted" (speculative
    decoding and hybrid routing: one prompt, two models). model and input_ids None (the command line, before
    loading): only the checks that need neither."""
    o = options
    beams, contrastive = o.num_beams > 1, o.penalty_alpha is not None
    refusals = [
        (mode == "stream" and beams, "stream() needs num_beams=1: beam search only knows its best sequence at the "
         "end; use generate() for beam search", ("num_beams",)),
        (mode == "stream" and o.num_return_sequences != 1, "stream() returns one sequence per prompt: use "
         "num_return_sequences=1", ("num_return_sequences",)),
        (mode == "stream" and contrastive, "stream() runs greedy or sampled decoding; contrastive search "
         "(penalty_alpha) runs in generate()", ("penalty_alpha",)),
        (contrastive and (beams or o.do_sample), "penalty_alpha (contrastive search) is a deterministic "
         "search of its own: use it without num_beams > 1 and without do_sample", ("penalty_alpha", "num_beams",
                                                                                   "do_sample")),
        (contrastive and not (o.top_k or 0) > 1, "penalty_alpha (contrastive search) re-ranks the top_k most likely "
         "tokens: give top_k > 1 (4 to 10 in the paper)", ("penalty_alpha", "top_k")),
        (contrastive and needs.hidden_states, "contrastive search compares the last layer's states; a step here "
         "replaces the distribution by other layers' (DoLa, entropy decoding): use one of them", ("penalty_alpha",)),
        ((o.logprobs or o.top_logprobs) and beams, "logprobs / top_logprobs are per chosen token; beam search "
         "scores whole sequences (out.sequences_scores)", ("logprobs", "top_logprobs", "num_beams")),
        (o.compile and needs.hidden_states, "compile=True returns only the final logits, and a step here reads "
         "every layer's hidden state (DoLa, entropy decoding, or one of your logits_steps): leave compile off",
         ("compile",)),
        (o.compile and (contrastive or mode == "assisted"), "compile=True compiles generate()'s one-token "
         "forward; contrastive search, speculative decoding and hybrid routing run their own: leave compile off",
         ("compile", "penalty_alpha")),
    ]
    for refused, message, names in refusals:
        if refused:
            raise OptionError(message, *names)
    if mode == "assisted":
        _refuse_for_two_models(options, needs, input_ids, attention_mask)
    if o.compile and model is not None:
        check_compilable(model)


def _refuse_for_two_models(options: GenerationOptions, needs: StepNeeds, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None) -> None:
    if input_ids is not None and (input_ids.shape[0] != 1 or
                                  (attention_mask is not None and not bool(attention_mask.all()))):
        raise ValueError(f"speculative decoding and hybrid routing take one unpadded prompt, input_ids of shape "
                         f"(1, T); got {tuple(input_ids.shape)}" + (" with padding" if attention_mask is not None
                                                                    else "") + ": call once per prompt")
    if options.num_beams != 1 or options.num_return_sequences != 1 or options.penalty_alpha is not None:
        raise OptionError("speculative decoding and hybrid routing produce one sequence: use num_beams=1, "
                          "num_return_sequences=1 and no penalty_alpha", "num_beams", "num_return_sequences",
                          "penalty_alpha")
    if needs.hidden_states:
        raise ValueError("a logits step needs the hidden states (DoLa / entropy layer choice); speculative "
                         "decoding and hybrid routing feed several positions at once and do not support it")
    if options.logprobs or options.top_logprobs:
        raise OptionError("logprobs / top_logprobs come from generate() and stream(); speculative decoding and "
                          "hybrid routing do not return them", "logprobs", "top_logprobs")
