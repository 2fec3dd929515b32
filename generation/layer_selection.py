"""The layer-selection options of generate(): DoLa (dola.py) or entropy-based layer choice (entropy.py).

    generate(model, ids, dola_layers="high")                        # DoLa, the paper's formulas
    generate(model, ids, dola_layers=[2, 4], dola_variant="transformers")  # transformers 4.55.2, exactly
    generate(model, ids, entropy_decoding="trough", entropy_record_tokens=True)

`LayerSelectionOptions.pop_from(options)` takes these names out of generate()'s keyword arguments and checks
them; `steps` builds the step, whose kind says where the loop runs it (generation/steps.py):

    DoLa "paper"          kind "contrast":      penalties -> DoLa -> your logits_steps -> warpers   (seed 001, 5)
    DoLa "transformers"   kind "raw_contrast":  DoLa -> penalties -> your logits_steps -> warpers   (transformers)
    entropy               kind "layer_selection": the loop hands it the other steps, which it runs on every
                          layer's scores (seed 000, 4.1)

Both compose with every sampler, penalty, batches and (except the transformers variant, which transformers
does not offer) beam search, where the distributions are per beam.

Records (out.records, one entry per step; `stack_records(out.records)` stacks them to (steps, rows, ...)):
    dola_premature_layer (rows,), dola_jsd (rows, L) (paper) or dola_layer_score (rows, L) (transformers),
    dola_candidate_layers (L,);
    entropy_selected_layer_indices (rows,); with entropy_record_tokens=True also entropy_per_layer_token_ids
    (rows, N), entropy_per_layer (rows, N) and entropy_selected_token_ids (rows,) (not under beam search,
    where the rows are running beams that are reordered every step).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch

from .dola import DOLA_VARIANTS, DoLa
from .dola_choice import resolve_dola_layers
from .entropy import ENTROPY_STRATEGIES, EntropyLayerChoice
from .options import SWITCH, OptionError, check_declared, is_bool, number_in, option, optional
from .steps import LogitsStep


def dola_layers_value(text: str) -> str | list[int] | None:
    """--dola-layers: "low", "high", "bucket0".."bucket2", layer numbers such as "2,4,6", or a choice file of
    scripts/select_dola_bucket.py (read by resolve_dola_layers)."""
    if text in ("low", "high") or text.startswith("bucket") or text.endswith(".json"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{text!r} is not low, high, bucketN, a list like 2,4,6 or a choice .json") from None


@dataclass(frozen=True)
class LayerSelectionOptions:
    """The layer-selection options of generate(), declared like GenerationOptions' (checked by the step code)."""

    dola_layers: str | Sequence[int] | None = option(
        None, "DoLa: contrast with these premature layers: 'low', 'high', 'bucket0'..'bucket2', a list of layer "
        "numbers, or a choice .json of select_dola_bucket.py (None = no DoLa)", cli=dola_layers_value,
        metavar="LAYERS")
    dola_variant: str = option("paper", "DoLa: the paper's formulas or transformers 4.55.2's, exactly",
                               lambda v: v in DOLA_VARIANTS, f"one of {DOLA_VARIANTS}", cli=str,
                               metavar="{paper,transformers}")
    dola_alpha: float = option(0.1, "DoLa's adaptive plausibility constraint alpha (eq. 4)", number_in(0, 1),
                               "in [0, 1] (0.1 in the paper)", cli=float, metavar="A")
    entropy_decoding: str | None = option(None, "decode from the layer chosen by the entropy of its early-exit "
                                          "distribution (None = off)", lambda v: v is None or v in ENTROPY_STRATEGIES,
                                          f"one of {ENTROPY_STRATEGIES} (or None for plain decoding)", cli=str,
                                          metavar="{trough,random_after}")
    entropy_record_tokens: bool = option(False, "entropy decoding: record every layer's top token and entropy "
                                         "(computes all layers)", is_bool, "True or False", cli=SWITCH)
    entropy_normalize: bool = option(False, "entropy decoding: entropy / log2(vocab_size)", is_bool,
                                     "True or False", cli=SWITCH)
    entropy_consistency_alpha: float | None = option(None, "entropy decoding: rank layers by -H_j + alpha x "
                                                     "cos(h_j, h_N)", optional(number_in(0, float("inf"), False, True)),
                                                     "a finite number >= 0 or None", cli=float, metavar="A")

    def __post_init__(self) -> None:
        for f in fields(self):
            check_declared(f, getattr(self, f.name))
        if self.dola_layers is not None and self.entropy_decoding is not None:
            raise OptionError("dola_layers and entropy_decoding each replace the next-token distribution; use one "
                              "of them", "dola_layers", "entropy_decoding")

    @classmethod
    def pop_from(cls, options: dict[str, Any]) -> "LayerSelectionOptions":
        """Remove this dataclass's names from a generate() keyword dict and check them. dola_layers may name a
        choice file of scripts/select_dola_bucket.py (generation/dola_choice.py); null there means no DoLa."""
        if "dola_layers" in options:
            options["dola_layers"] = resolve_dola_layers(options["dola_layers"])
        return cls(**{f.name: options.pop(f.name) for f in fields(cls) if f.name in options})

    def steps(self, config, num_beams: int) -> list[LogitsStep]:
        """The DoLa or entropy step these options ask for (checked against the config), or none."""
        if self.dola_layers is not None:
            if self.dola_variant == "transformers" and num_beams > 1:
                raise ValueError("dola_variant='transformers' reproduces transformers 4.55.2, which has no "
                                 "DoLa beam search; use dola_variant='paper' with num_beams > 1")
            try:
                return [DoLa.for_model(config, self.dola_layers, self.dola_variant, self.dola_alpha)]
            except ValueError as err:  # the layers do not fit this model
                raise OptionError(str(err), "dola_layers") from None
        if self.entropy_decoding is not None:
            if config.num_hidden_layers < 2:
                raise ValueError("entropy_decoding chooses among the layers, and this model has only one")
            return [EntropyLayerChoice(self.entropy_decoding, self.entropy_normalize,
                                       self.entropy_consistency_alpha, self.entropy_record_tokens,
                                       log_prob_inputs=num_beams > 1, num_hidden_layers=config.num_hidden_layers)]
        return []


def finish_layer_selection_records(records: dict[str, list], new_tokens: Sequence[torch.Tensor]) -> None:
    """Add what only the loop knows: the token decoded at each step, next to each layer's top token."""
    if "entropy_per_layer_token_ids" in records:
        records["entropy_selected_token_ids"] = list(new_tokens)


def stack_records(records: dict[str, list]) -> dict[str, torch.Tensor]:
    """Per-step lists -> tensors (steps, rows, ...). Under beam search, rows are beams of that step."""
    return {name: torch.stack(values) for name, values in records.items()
            if values and all(isinstance(v, torch.Tensor) for v in values)}
