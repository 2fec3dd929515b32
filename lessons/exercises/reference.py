"""The reference solutions: the package's own functions (one implementation of each idea), and for the
exercises that build something the package does not have in that shape (a whole forward from a state_dict,
a batched, left-padded generate, the speculative loop, training), the plain-PyTorch solutions in `solutions/`.

Each stub in `lesson_N.py` has the signature of the package function named here. Where the package
function is a method (e.g. `RMSNorm.forward`), the stub takes the object as its first argument `self`.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

# lesson -> exercise name -> "module:attribute" (a dotted attribute reaches a method of a class)
REFERENCES: dict[int, dict[str, str]] = {
    1: {
        "bytes_to_unicode": "tokenizer.pretokenize:bytes_to_unicode",
        "bpe_merge": "tokenizer.bpe:BytePairModel.merge",
    },
    2: {
        "rms_norm_forward": "model.layers:RMSNorm.forward",
        "default_inv_freq": "model.rope:default_inv_freq",
        "rotate_half": "model.rope:rotate_half",
        "apply_rotary": "model.rope:apply_rotary",
    },
    3: {
        "repeat_kv": "model.layers:repeat_kv",
        "build_attention_mask": "model.layers:build_attention_mask",
        "eager_attention": "model.layers:eager_attention",
        "attention_forward": "lessons.exercises.solutions.lesson_3:attention_forward",
    },
    4: {
        "swiglu_forward": "model.layers:SwiGLU.forward",
        "decoder_block_forward": "model.layers:DecoderBlock.forward",
        "default_position_ids": "model.causal_lm:default_position_ids",
        "causal_lm_forward": "lessons.exercises.solutions.lesson_4:causal_lm_forward",
    },
    5: {
        "cache_layer_update": "cache.dynamic:DynamicLayer.update",
        "kv_cache_bytes": "cache.dynamic:kv_cache_bytes",
        "temperature_scale": "generation.warpers:temperature_scale",
        "top_k_filter": "generation.warpers:top_k_filter",
        "top_p_filter": "generation.warpers:top_p_filter",
        "repetition_penalty": "generation.penalties:repetition_penalty",
        "min_p_filter": "generation.warpers:min_p_filter",
        "generate_with_cache": "lessons.exercises.solutions.lesson_5:generate_with_cache",
        "trim_at_stop_string": "lessons.exercises.solutions.lesson_5:trim_at_stop_string",
        "repeated_ngram": "lessons.exercises.solutions.lesson_5:repeated_ngram",
        "distinct_n": "lessons.exercises.solutions.lesson_5:distinct_n",
    },
    6: {
        "gather_beams": "generation.beam:gather_beams",
        "top_candidates": "generation.beam:top_candidates",
        "beam_search": "lessons.exercises.solutions.lesson_6:beam_search",
    },
    7: {
        "jensen_shannon_divergence": "generation.dola:jensen_shannon_divergence",
        "plausibility_mask": "generation.dola:plausibility_mask",
        "dola_contrast": "generation.dola:dola_contrast",
        "entropy_bits": "generation.entropy:entropy_bits",
        "trough_index": "generation.entropy:trough_index",
        "select_premature_layer": "generation.dola:select_premature_layer",
        "random_after_index": "generation.entropy:random_after_index",
        "entropy_layer_choice": "lessons.exercises.solutions.lesson_7:entropy_layer_choice",
    },
    8: {
        "greedy_accept": "generation.speculative:greedy_accept",
        "sampling_accept": "generation.speculative:sampling_accept",
        "logu_uncertainty": "generation.uncertainty:logu_uncertainty",
        "speculative_greedy": "lessons.exercises.solutions.lesson_8:speculative_greedy",
        "speculative_sampling": "lessons.exercises.solutions.lesson_8:speculative_sampling",
    },
    9: {
        "unpermute_rope_rows": "model.zoo.dequantize:unpermute_rope_rows",
        "dequantize_mxfp4": "model.mxfp4:dequantize_mxfp4",
        "moe_route": "model.moe:MoEMLP.route",
    },
    10: {
        "lm_loss": "lessons.exercises.solutions.lesson_10:lm_loss",
        "train_step": "lessons.exercises.solutions.lesson_10:train_step",
    },
}


def resolve(target: str):
    """'package.module:Class.method' -> the object."""
    module_name, _, attribute = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def reference(lesson: int) -> SimpleNamespace:
    """The package functions that solve `lesson`'s exercises, by exercise name."""
    if lesson not in REFERENCES:
        raise KeyError(f"lesson {lesson} has no exercises; lessons with exercises: {sorted(REFERENCES)}")
    return SimpleNamespace(**{name: resolve(target) for name, target in REFERENCES[lesson].items()})
