"""The options of `generate()`, with transformers' names, checked before any forward pass.

`GenerationOptions(**options)` checks each value on its own; `check_inputs` then checks them against the
model and the prompt. Every bad value raises ValueError naming the argument and the allowed range.
`build_logits_steps` turns the options into the ordered list of steps the decode loop runs.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch

from .compiled import check_compilable
from .steps import LogitsStep, MinP, NoRepeatNGram, RepetitionPenalty, Temperature, TopK, TopP, needs_hidden_states

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_note(value: Any) -> str:
    """' (it must be finite)' for inf/nan, which pass a range check like `x >= 0` or break one silently."""
    return " (it must be finite)" if _is_number(value) and not math.isfinite(value) else ""


@dataclass(frozen=True)
class GenerationOptions:
    """Every option of generate()/stream(). Defaults differ from transformers only where noted."""

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0  # 0 with do_sample=True means greedy (the T -> 0 limit); transformers raises
    top_k: int | None = None  # None or 0: off (transformers' default is 50 when sampling)
    top_p: float = 1.0  # 1.0: off
    min_p: float | None = None  # None: off
    repetition_penalty: float = 1.0  # 1.0: off
    no_repeat_ngram_size: int = 0  # 0: off
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = sum of log-probs / (generated length ** length_penalty)
    early_stopping: bool | str = False  # True, False or "never" (see beam.py)
    num_return_sequences: int = 1
    eos_token_id: int | list[int] | None = None  # None: model.config.eos_token_id; []: no end token
    pad_token_id: int | None = None  # None: model.config.pad_token_id, else the first eos id
    stop_strings: str | list[str] | None = None  # matched on tokenizer.decode(generated tokens)
    tokenizer: Any = None  # anything with .decode(list_of_ids) -> str
    output_scores: bool = False
    output_logits: bool = False  # keep each step's raw logits (transformers' output_logits)
    generator: torch.Generator | None = None  # sampling draws only from it; None: a freshly seeded one
    logits_steps: Sequence[LogitsStep] = ()  # your own steps, run after the penalties, before the warpers
    compile: bool = False  # run the one-token step through torch.compile (generation/compiled.py)

    def __post_init__(self) -> None:
        self._check_lengths_and_beams()
        self._check_distribution_options()
        self._check_tokens_and_steps()

    @property
    def sampling(self) -> bool:
        """Whether tokens are drawn at random (temperature 0 turns sampling into greedy)."""
        return self.do_sample and self.temperature > 0

    def _check_lengths_and_beams(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not _is_int(self.num_beams) or self.num_beams < 1:
            raise ValueError(f"num_beams must be an integer >= 1 (1 = no beam search), got {self.num_beams!r}")
        if not _is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be an integer >= 1, got {self.num_return_sequences!r}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                             f"({self.num_beams}): beam search returns its best num_beams hypotheses at most")
        if self.num_beams == 1 and self.num_return_sequences > 1 and not self.sampling:
            raise ValueError(f"num_return_sequences={self.num_return_sequences} needs do_sample=True or num_beams "
                             ">= num_return_sequences: greedy decoding would return identical copies")
        if not _is_number(self.length_penalty) or not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a real number (0 = no length normalisation), "
                             f"got {self.length_penalty!r}{_finite_note(self.length_penalty)}")
        if not (self.early_stopping is True or self.early_stopping is False or self.early_stopping == "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be True or False, got {self.do_sample!r}")

    def _check_distribution_options(self) -> None:
        if not _is_number(self.temperature) or not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy, 1 = unchanged), "
                             f"got {self.temperature!r}{_finite_note(self.temperature)}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 or None = off), got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if self.min_p is not None and (not _is_number(self.min_p) or not 0 <= self.min_p <= 1):
            raise ValueError(f"min_p must be in [0, 1] or None (off), got {self.min_p!r}")
        if not _is_number(self.repetition_penalty) or not 0 < self.repetition_penalty < math.inf:
            raise ValueError(f"repetition_penalty must be a number > 0 (1.0 = off, > 1 discourages repeats), "
                             f"got {self.repetition_penalty!r}{_finite_note(self.repetition_penalty)}")
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be an integer >= 0 (0 = off), "
                             f"got {self.no_repeat_ngram_size!r}")
        warpers = {"temperature": self.temperature != 1.0, "top_k": bool(self.top_k), "top_p": self.top_p < 1.0,
                   "min_p": self.min_p is not None}
        if not self.do_sample and any(warpers.values()):
            names = ", ".join(name for name, is_set in warpers.items() if is_set)
            warnings.warn(f"{names} only shape the distribution tokens are sampled from; with do_sample=False they "
                          "are ignored (as in transformers). Pass do_sample=True to use them.", UserWarning)

    def _check_tokens_and_steps(self) -> None:
        if self.stop_strings is not None:
            strings = [self.stop_strings] if isinstance(self.stop_strings, str) else self.stop_strings
            if not isinstance(strings, (list, tuple)) or not strings or \
                    not all(isinstance(s, str) and s for s in strings):
                raise ValueError(f"stop_strings must be a non-empty string or a list of them, "
                                 f"got {self.stop_strings!r}")
            if not callable(getattr(self.tokenizer, "decode", None)):
                raise ValueError("stop_strings are matched on decoded text: pass tokenizer=... (any object with "
                                 ".decode(list_of_ids) -> str)")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(self.generator).__name__}")
        if not isinstance(self.logits_steps, (list, tuple)) or not all(callable(step) for step in self.logits_steps):
            raise ValueError("logits_steps must be a list of callables step(scores, ctx) -> scores, "
                             f"got {self.logits_steps!r}")
        for name in ("output_scores", "output_logits"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        self._check_token_id_types()

    def _check_token_id_types(self) -> None:
        """eos_token_id: an id or a list of ids; pad_token_id: an id. The vocabulary range is checked later."""
        eos = self.eos_token_id
        if eos is not None and not _is_int(eos) and not (isinstance(eos, (list, tuple)) and all(map(_is_int, eos))):
            raise ValueError(f"eos_token_id must be a token id (int), a list of them, [] for none, or None for "
                             f"the model config's, got {eos!r}")
        if self.pad_token_id is not None and not _is_int(self.pad_token_id):
            raise ValueError(f"pad_token_id must be a token id (int) or None, got {self.pad_token_id!r}")

    def stop_string_list(self) -> list[str]:
        if self.stop_strings is None:
            return []
        return [self.stop_strings] if isinstance(self.stop_strings, str) else list(self.stop_strings)

    def eos_token_ids(self, config) -> list[int]:
        """The end-of-sequence ids in force: the argument, else the model config's."""
        eos = self.eos_token_id if self.eos_token_id is not None else config.eos_token_id
        if eos is None:
            return []
        return [eos] if _is_int(eos) else list(eos)

    def resolved_pad_token_id(self, config) -> int | None:
        """Written after a sequence ends: the argument, else config.pad_token_id, else the first eos id."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        if config.pad_token_id is not None:
            return config.pad_token_id
        eos = self.eos_token_ids(config)
        return eos[0] if eos else None


def check_option_names(options: dict[str, Any]) -> None:
    """Refuse a misspelt or unknown option by name (the dataclass alone would say 'unexpected keyword')."""
    known = [f.name for f in fields(GenerationOptions)]
    for name in options:
        if name == "max_length":
            raise TypeError("unknown generation option 'max_length': transformers' max_length counts the prompt "
                            "too; here give the new tokens only, max_new_tokens=...")
        if name == "return_dict_in_generate":
            raise TypeError("generate(model, ...) always returns the whole GenerateOutput; return_dict_in_generate "
                            "is model.generate's (transformers' calling convention, generation/model_generate.py)")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(f"unknown generation option {name!r}: {hint}The options are the fields of "
                            "GenerationOptions (generation/options.py) and the layer-selection ones.")


def build_logits_steps(options: GenerationOptions, num_eos: int) -> list[LogitsStep]:
    """The steps in transformers' order: penalties, your logits_steps, then (when sampling) the warpers.

    With beam sampling the filters keep at least num_eos + 1 tokens, so some beam can always continue.
    """
    builtin = _builtin_kinds(options)
    for step in options.logits_steps:
        if type(step) in builtin:
            raise ValueError(f"{type(step).__name__} is both in logits_steps and set by option "
                             f"'{builtin[type(step)]}'; give it once")
    steps: list[LogitsStep] = []
    if options.repetition_penalty != 1.0:
        steps.append(RepetitionPenalty(float(options.repetition_penalty)))
    if options.no_repeat_ngram_size > 0:
        steps.append(NoRepeatNGram(options.no_repeat_ngram_size))
    steps.extend(options.logits_steps)
    if options.sampling:
        keep = max(num_eos + 1, 2) if options.num_beams > 1 else 1
        if options.temperature != 1.0:
            steps.append(Temperature(float(options.temperature)))
        if options.top_k:
            steps.append(TopK(options.top_k, keep))
        if options.top_p < 1.0:
            steps.append(TopP(float(options.top_p), keep))
        if options.min_p is not None:
            steps.append(MinP(float(options.min_p), keep))
    return steps


def _builtin_kinds(options: GenerationOptions) -> dict[type, str]:
    """Step classes that the options already put in the list (to refuse a second copy)."""
    kinds = {RepetitionPenalty: options.repetition_penalty != 1.0, NoRepeatNGram: options.no_repeat_ngram_size > 0,
             Temperature: options.sampling and options.temperature != 1.0,
             TopK: options.sampling and bool(options.top_k), TopP: options.sampling and options.top_p < 1.0,
             MinP: options.sampling and options.min_p is not None}
    names = {RepetitionPenalty: "repetition_penalty", NoRepeatNGram: "no_repeat_ngram_size",
             Temperature: "temperature", TopK: "top_k", TopP: "top_p", MinP: "min_p"}
    return {kind: names[kind] for kind, is_set in kinds.items() if is_set}


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
        raise ValueError(f"prompt length ({input_ids.shape[1]}) + max_new_tokens ({options.max_new_tokens}) = {total} "
                         f"exceeds max_position_embeddings ({config.max_position_embeddings}); shorten the prompt "
                         "or lower max_new_tokens")
    _check_attention_mask(attention_mask, input_ids)
    for name, ids in (("eos_token_id", options.eos_token_ids(config)), ("pad_token_id", [options.pad_token_id])):
        for token in ids:
            if token is not None and (not _is_int(token) or not 0 <= token < config.vocab_size):
                raise ValueError(f"{name} {token!r} is outside the vocabulary [0, {config.vocab_size})")
    rows = input_ids.shape[0] * max(options.num_return_sequences, 1)
    if options.resolved_pad_token_id(config) is None and (rows > 1 or options.num_beams > 1):
        raise ValueError("pad_token_id is needed to fill finished sequences of a batch, and neither the argument, "
                         "config.pad_token_id nor an eos id gives one: pass pad_token_id=...")
    if options.generator is not None and options.generator.device.type != model.device.type:
        raise ValueError(f"generator is on {options.generator.device} but the model on {model.device}: "
                         f"create it with torch.Generator(device='{model.device.type}')")


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


def check_compile_option(options: GenerationOptions, steps: Sequence[LogitsStep], model) -> None:
    """compile=True runs a fixed graph that returns the final logits of one token per row (generation/compiled.py)."""
    if not options.compile:
        return
    if needs_hidden_states(steps):
        raise ValueError("compile=True returns only the final logits, and a step here reads every layer's hidden "
                         "state (DoLa, entropy decoding, or one of your logits_steps): leave compile off")
    check_compilable(model)
