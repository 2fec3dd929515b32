"""What the two-model decoders share (speculative decoding, hybrid routing): the option checks for one
prompt, the logits steps applied at several positions, appending tokens under the stop rules, the output.

They take the same options as `generate()` (checked by the same code, generation/options.py) and run the
same logits steps and selectors, so a distribution means the same thing in every strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cache import DynamicCache

from .loop import GenerateOutput, no_token_left, prepare_call
from .checks import check_inputs
from .guards import check_logits
from .options import GenerationOptions
from .steps import LogitsStep, StepContext, run_steps
from .stopping import RUNNING, StopConditions


@dataclass
class AssistedOutput(GenerateOutput):
    """GenerateOutput plus the run's statistics and the final KV caches (each holds a prefix of sequences)."""

    stats: Any = None  # SpeculativeStats or HybridStats: .as_dict(), .summary()
    caches: dict[str, DynamicCache] = field(default_factory=dict)


def prepare_one_prompt(model, other_models: dict[str, Any], input_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None, options: dict[str, Any]):
    """Check the options (as generate() does) for `model` and every other model; one unpadded prompt only.

    Returns (GenerationOptions, steps, StopConditions, generator).
    """
    call = prepare_call(model, input_ids, attention_mask, options, mode="assisted")  # refuses what cannot run
    opts = call.options
    for name, other in other_models.items():
        check_inputs(opts, other, input_ids, None)
        if other.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"the {name} model's vocabulary ({other.config.vocab_size} tokens) differs from the "
                             f"main model's ({model.config.vocab_size}): both must use the same tokenizer")
        if other.device != model.device:
            raise ValueError(f"the {name} model is on {other.device} but the main model on {model.device}; "
                             "move both to one device")
    return opts, call.steps, call.stop, call.generator


def process_positions(steps: list[LogitsStep], logits: torch.Tensor, tokens: torch.Tensor, first_length: int,
                      prompt_length: int, model, generator: torch.Generator | None) -> torch.Tensor:
    """Apply the logits steps to k consecutive positions. logits (k, V); row i predicts the token after
    tokens[:, :first_length + i], which is the context its steps see (penalties look at it). -> (k, V)."""
    rows = []
    for i in range(logits.shape[0]):
        context = tokens[:, :first_length + i]
        ctx = StepContext(context, prompt_length, logits[i:i + 1], None, model, generator,
                          first_length + i - prompt_length, {})  # records of tried drafts are dropped
        rows.append(run_steps(steps, logits[i:i + 1], ctx) if steps else logits[i:i + 1])
        check_logits(logits[i:i + 1], rows[-1], ctx.position)  # NaN / inf named, never chosen
        if not torch.isfinite(rows[-1]).any():  # the steps banned every token: nothing can be chosen
            raise no_token_left(0, ctx.position)
    return torch.cat(rows)  # (k, V)


def append_until_stop(sequence: torch.Tensor, new_tokens: list[int], stop: StopConditions) -> tuple[torch.Tensor, int]:
    """Append tokens one at a time until a stop rule fires (EOS, stop string, max_new_tokens).

    sequence (1, n) -> (sequence (1, n + j), reason code; RUNNING = 0 if none fired)."""
    reason = RUNNING
    for token in new_tokens:
        sequence = torch.cat([sequence, sequence.new_tensor([[token]])], dim=1)
        reason = int(stop(sequence)[0])
        if reason != RUNNING:
            break
    return sequence, reason


def token_budget(opts: GenerationOptions, sequence: torch.Tensor, prompt_length: int) -> int:
    """How many more tokens max_new_tokens allows."""
    return opts.max_new_tokens - (sequence.shape[1] - prompt_length)
