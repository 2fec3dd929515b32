"""The layer-selection options of generate(): DoLa (dola.py) or entropy-based layer choice (entropy.py).

    generate(model, ids, dola_layers="high")                        # DoLa, the paper's formulas
    generate(model, ids, dola_layers=[2, 4], dola_variant="transformers")  # transformers 4.55.2, exactly
    generate(model, ids, entropy_decoding="trough", entropy_record_tokens=True)

`LayerSelectionOptions.pop_from(options)` takes these names out of generate()'s keyword arguments and checks
them; `place_steps` then puts the step into the loop's list where its method says it belongs:

    DoLa "paper"          penalties -> DoLa -> your logits_steps -> warpers      (seed 001, section 5)
    DoLa "transformers"   DoLa -> penalties -> your logits_steps -> warpers      (as transformers runs it)
    entropy               one step that wraps the whole list and runs it on every layer (seed 000, 4.1)

Both compose with every sampler, penalty, batches and (except the transformers variant, which transformers
does not offer) beam search, where the distributions are per beam.

Records (out.records, one entry per step; `stack_records(out.records)` stacks them to (steps, rows, ...)):
    dola_premature_layer (rows,), dola_jsd (rows, L), dola_candidate_layers (L,);
    entropy_selected_layer_indices (rows,); with entropy_record_tokens=True also entropy_per_layer_token_ids
    (rows, N), entropy_per_layer (rows, N) and entropy_selected_token_ids (rows,) (not under beam search,
    where the rows are running beams that are reordered every step).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch

from .dola import DoLa, check_dola_arguments
from .dola_choice import resolve_dola_layers
from .entropy import EntropyLayerChoice, check_entropy_arguments
from .steps import NoRepeatNGram, RepetitionPenalty


@dataclass(frozen=True)
class LayerSelectionOptions:
    dola_layers: str | Sequence[int] | None = None  # None: no DoLa
    dola_variant: str = "paper"  # "paper" or "transformers"
    dola_alpha: float = 0.1  # adaptive plausibility constraint (DoLa eq. 4)
    entropy_decoding: str | None = None  # None, "trough" or "random_after"
    entropy_record_tokens: bool = False  # record every layer's top token (computes all layers)
    entropy_normalize: bool = False  # entropy / log2(vocab_size)
    entropy_consistency_alpha: float | None = None  # rank layers by -H_j + alpha * cos(h_j, h_N)

    def __post_init__(self) -> None:
        if self.dola_layers is not None and self.entropy_decoding is not None:
            raise ValueError("dola_layers and entropy_decoding each replace the next-token distribution; "
                             "use one of them")
        check_dola_arguments(self.dola_variant, self.dola_alpha)
        if self.entropy_decoding is not None:
            check_entropy_arguments(self.entropy_decoding, self.entropy_consistency_alpha)
        for name in ("entropy_record_tokens", "entropy_normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def pop_from(cls, options: dict[str, Any]) -> "LayerSelectionOptions":
        """Remove this dataclass's names from a generate() keyword dict and check them. dola_layers may name a
        choice file of scripts/select_dola_bucket.py (generation/dola_choice.py); null there means no DoLa."""
        if "dola_layers" in options:
            options["dola_layers"] = resolve_dola_layers(options["dola_layers"])
        return cls(**{f.name: options.pop(f.name) for f in fields(cls) if f.name in options})

    def place_steps(self, steps: list, config, num_beams: int) -> list:
        """The loop's step list with the DoLa or entropy step put in place (checked against the config)."""
        if self.dola_layers is not None:
            dola = DoLa.for_model(config, self.dola_layers, self.dola_variant, self.dola_alpha)
            if self.dola_variant == "transformers":
                if num_beams > 1:
                    raise ValueError("dola_variant='transformers' reproduces transformers 4.55.2, which has no "
                                     "DoLa beam search; use dola_variant='paper' with num_beams > 1")
                return [dola, *steps]
            penalties = 0
            while penalties < len(steps) and isinstance(steps[penalties], (RepetitionPenalty, NoRepeatNGram)):
                penalties += 1
            return [*steps[:penalties], dola, *steps[penalties:]]
        if self.entropy_decoding is not None:
            if config.num_hidden_layers < 2:
                raise ValueError("entropy_decoding chooses among the layers, and this model has only one")
            return [EntropyLayerChoice(tuple(steps), self.entropy_decoding, self.entropy_normalize,
                                       self.entropy_consistency_alpha, self.entropy_record_tokens,
                                       log_prob_inputs=num_beams > 1, num_hidden_layers=config.num_hidden_layers)]
        return steps


def finish_layer_selection_records(records: dict[str, list], new_tokens: Sequence[torch.Tensor]) -> None:
    """Add what only the loop knows: the token decoded at each step, next to each layer's top token."""
    if "entropy_per_layer_token_ids" in records:
        records["entropy_selected_token_ids"] = list(new_tokens)


def stack_records(records: dict[str, list]) -> dict[str, torch.Tensor]:
    """Per-step lists -> tensors (steps, rows, ...). Under beam search, rows are beams of that step."""
    return {name: torch.stack(values) for name, values in records.items()
            if values and all(isinstance(v, torch.Tensor) for v in values)}
