"""The options of `generate()`, declared once: name, type, default, allowed range and help text.

Each field of `GenerationOptions` (and of `LayerSelectionOptions`, generation/layer_selection.py) is written
with `option(default, help, check=..., rule=...)`. From that one declaration come
  * the checks: `GenerationOptions(**options)` checks each value on its own, before any forward pass, and a
    bad value raises `OptionError` naming the option and its allowed range;
  * the command line: scripts/generate.py makes one flag per option, same name (`--top-p` for `top_p`),
    from `cli` and the help text (`option_flags`);
  * the documentation: `options_help()` lists them for generate()'s docstring and `--help`.
`build_logits_steps` turns the options into steps; generation/checks.py then checks them against the model and
the prompt and holds every refusal of a combination a strategy cannot run.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Sequence

import torch

from .penalties import FrequencyPresencePenalty, MinNewTokens, NoRepeatNGram, RepetitionPenalty, SequenceBias, \
    bad_words_biases
from .steps import LogitsStep
from .warpers import EpsilonCutoff, EtaCutoff, MinP, Temperature, TopK, TopP, TypicalP

SWITCH = "switch"  # a command-line flag without a value (True when given)
OTHER_FLAGS = {"logprobs": "--show-logprobs"}  # options the command line sets through a flag of another name


class OptionError(ValueError):
    """A bad option value or combination; `names` are the options it mentions (the CLI shows them as flags)."""

    def __init__(self, message: str, *names: str):
        super().__init__(message)
        self.names = names

    def for_command_line(self) -> str:
        """The message with each option named as its flag: "top_p must be ..." -> "--top-p must be ..."."""
        message = str(self)
        for name in sorted(self.names, key=len, reverse=True):
            shown = OTHER_FLAGS.get(name, "--" + name.replace("_", "-"))
            message = re.sub(rf"(?<![-\w]){name}(=True)?\b", shown, message)
        return message


def option(default: Any, help: str, check: Callable[[Any], bool] | None = None, rule: str = "",
           cli: Any = None, metavar: str | None = None, sampling_only: bool = False, api_only: str = "") -> Any:
    """A dataclass field with its declaration. check(value) -> ok; rule completes "<name> must be ...";
    cli parses the flag's text (SWITCH for a flag without a value); api_only says why an option has no flag."""
    return field(default=default, metadata=dict(help=help, check=check, rule=rule, cli=cli, metavar=metavar,
                                                sampling_only=sampling_only, api_only=api_only))


# --------------------------------------------------------------------------- value checks, each with its rule
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda value: is_int(value) and value >= low


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def number_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return is_number(value) and math.isfinite(value) and (low < value if low_open else low <= value) and \
            (value < high if high_open else value <= high)
    return check


def finite_note(value: Any) -> str:
    """' (it must be finite)' for inf/nan, which pass a range check like `x >= 0` or break one silently."""
    return " (it must be finite)" if is_number(value) and not math.isfinite(value) else ""


def token_ids(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(map(is_int, value))


def json_value(text: str) -> Any:
    """A flag's text as JSON: "[[5], [7, 8]]", "2", ..."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{text!r} is not valid JSON ({err.msg})") from None


def early_stopping_value(text: str) -> bool | str:
    choices = {"true": True, "false": False, "never": "never"}
    if text.lower() not in choices:
        raise ValueError(f"{text!r} is not true, false or never")
    return choices[text.lower()]


def sequence_bias_pairs(value: Any) -> list | None:
    """sequence_bias as [(token ids, bias), ...]: from a dict {(ids...): bias} or a list [[ids, bias], ...]."""
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, (list, tuple)) or not pairs:
        return None
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return None
        ids, bias = pair
        if not isinstance(ids, (list, tuple)) or not ids or not all(is_int(t) and t >= 0 for t in ids) \
                or not is_number(bias):
            return None
    return [(tuple(ids), float(bias)) for ids, bias in pairs]


def nonempty_id_lists(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(ids, (list, tuple)) and ids and all(is_int(t) and t >= 0 for t in ids) for ids in value)


def stop_string_list(value: Any) -> bool:
    strings = [value] if isinstance(value, str) else value
    return isinstance(strings, (list, tuple)) and len(strings) > 0 and all(isinstance(s, str) and s for s in strings)


def valid_regex(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        re.compile(value)
    except re.error:
        return False
    return True


# --------------------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class GenerationOptions:
    """Every option of generate()/stream(), transformers' names. Defaults differ from transformers only where
    the help text says so."""

    max_new_tokens: int = option(20, "generate at most this many new tokens", int_at_least(1),
                                 "an integer >= 1", cli=int, metavar="N")
    min_new_tokens: int = option(0, "no end token before this many new tokens (0 = off)", int_at_least(0),
                                 "an integer >= 0 (0 = off)", cli=int, metavar="N")
    do_sample: bool = option(False, "sample tokens instead of taking the most likely one", is_bool,
                             "True or False", cli=SWITCH)
    temperature: float = option(1.0, "divide the logits by this (0 with do_sample means greedy; transformers "
                                "raises there)", number_in(0, math.inf, high_open=True),
                                "a number >= 0 (0 = greedy, 1 = unchanged)", cli=float, metavar="T",
                                sampling_only=True)
    top_k: int | None = option(None, "keep the k most likely tokens (None or 0 = off; transformers' default is "
                               "50)", optional(int_at_least(0)), "an integer >= 0 (0 or None = off)", cli=int,
                               metavar="K", sampling_only=True)
    top_p: float = option(1.0, "nucleus: keep the smallest set of best tokens with mass >= p (1 = off)",
                          number_in(0, 1, low_open=True), "in (0, 1] (1 = off)", cli=float, metavar="P",
                          sampling_only=True)
    min_p: float | None = option(None, "drop tokens below min_p x the top probability (None = off)",
                                 optional(number_in(0, 1)), "in [0, 1] or None (off)", cli=float, metavar="P",
                                 sampling_only=True)
    typical_p: float = option(1.0, "locally typical sampling: keep the tokens closest to the entropy, mass "
                              "typical_p (1 = off)", number_in(0, 1, low_open=True), "in (0, 1] (1 = off)",
                              cli=float, metavar="P", sampling_only=True)
    epsilon_cutoff: float = option(0.0, "drop tokens with probability below this (0 = off)",
                                   number_in(0, 1, high_open=True), "in [0, 1) (0 = off)", cli=float,
                                   metavar="E", sampling_only=True)
    eta_cutoff: float = option(0.0, "eta sampling: drop tokens below min(eta, sqrt(eta) exp(-entropy)) (0 = off)",
                               number_in(0, 1, high_open=True), "in [0, 1) (0 = off)", cli=float, metavar="E",
                               sampling_only=True)
    repetition_penalty: float = option(1.0, "> 1 discourages tokens already in the text (1 = off)",
                                       number_in(0, math.inf, low_open=True, high_open=True),
                                       "a number > 0 (1.0 = off, > 1 discourages repeats)", cli=float, metavar="X")
    frequency_penalty: float = option(0.0, "subtract this x how often a token was generated (OpenAI's rule)",
                                      number_in(-2, 2), "a number in [-2, 2] (0 = off)", cli=float, metavar="X")
    presence_penalty: float = option(0.0, "subtract this from every token generated at least once (OpenAI's "
                                     "rule)", number_in(-2, 2), "a number in [-2, 2] (0 = off)", cli=float,
                                     metavar="X")
    no_repeat_ngram_size: int = option(0, "never repeat an n-gram of this size (0 = off)", int_at_least(0),
                                       "an integer >= 0 (0 = off)", cli=int, metavar="N")
    bad_words_ids: list[list[int]] | None = option(None, "token sequences never to generate, e.g. [[5], [7, 8]]",
                                                   optional(nonempty_id_lists), "a non-empty list of non-empty "
                                                   "lists of token ids", cli=json_value, metavar="JSON")
    sequence_bias: Any = option(None, "add a bias to the last token of each sequence, e.g. [[[7, 8], -3.0]] or "
                                "{(7, 8): -3.0}", lambda v: v is None or sequence_bias_pairs(v) is not None,
                                "a list of [token ids, bias] pairs (or a dict {(ids...): bias})", cli=json_value,
                                metavar="JSON")
    penalty_alpha: float | None = option(None, "contrastive search with top_k candidates: score = (1 - alpha) "
                                         "p - alpha x max similarity to the context (None = off)",
                                         optional(number_in(0, 1)), "in [0, 1] or None (off)", cli=float,
                                         metavar="A")
    num_beams: int = option(1, "beam search with this many beams (1 = off)", int_at_least(1),
                            "an integer >= 1 (1 = no beam search)", cli=int, metavar="N")
    length_penalty: float = option(1.0, "beam score = sum of log-probs / length ** length_penalty",
                                   number_in(-math.inf, math.inf, True, True),
                                   "a real number (0 = no length normalisation)", cli=float, metavar="X")
    early_stopping: bool | str = option(False, "beam search: True, False or 'never' (see beam.py)",
                                        lambda v: v is True or v is False or v == "never",
                                        "True, False or 'never'", cli=early_stopping_value,
                                        metavar="{true,false,never}")
    num_return_sequences: int = option(1, "sequences per prompt (beam search or sampling)", int_at_least(1),
                                       "an integer >= 1", cli=int, metavar="N")
    eos_token_id: int | list[int] | None = option(None, "end token id(s); None = model.config's, [] = none",
                                                  lambda v: v is None or is_int(v) or token_ids(v),
                                                  "a token id (int), a list of them, [] for none, or None for "
                                                  "the model config's", cli=json_value, metavar="JSON")
    pad_token_id: int | None = option(None, "written after a row ends; None = config's, else the first end token",
                                      optional(is_int), "a token id (int) or None", cli=int, metavar="ID")
    stop_strings: str | list[str] | None = option(None, "end when the generated text contains one of these",
                                                  optional(stop_string_list),
                                                  "a non-empty string or a list of them", cli=str, metavar="TEXT")
    stop_regex: str | None = option(None, "end when the generated text matches this regular expression",
                                    optional(valid_regex), "a valid, non-empty regular expression (Python re)",
                                    cli=str, metavar="REGEX")
    stop_on_json: bool = option(False, "end once the generated text holds a complete JSON object or array",
                                is_bool, "True or False", cli=SWITCH)
    max_time: float | None = option(None, "end every row after this many seconds (None = no limit)",
                                    optional(number_in(0, math.inf, low_open=True, high_open=True)),
                                    "a number of seconds > 0 or None", cli=float, metavar="S")
    stopping_criteria: Sequence[Callable] = option((), "your own rules: f(sequences (N, T)) -> (N,) bool tensor "
                                                   "or bool, True = this row ends", lambda v: isinstance(
                                                       v, (list, tuple)) and all(map(callable, v)),
                                                   "a list of callables f(sequences) -> bool tensor",
                                                   api_only="Python callables")
    tokenizer: Any = option(None, "anything with .decode(list_of_ids) -> str (stop strings, regex, JSON)",
                            api_only="the command line uses the model's tokenizer")
    logprobs: bool = option(False, "return the log-probability of each chosen token (out.logprobs)", is_bool,
                            "True or False", api_only="--show-logprobs prints them")
    top_logprobs: int = option(0, "also return the n most likely alternatives at each position (0..20)",
                               lambda v: is_int(v) and 0 <= v <= 20, "an integer in 0..20", cli=int, metavar="N")
    output_scores: bool = option(False, "return each position's processed scores (out.scores)", is_bool,
                                 "True or False", api_only="tensors; the command line prints text")
    output_logits: bool = option(False, "return each position's raw logits (out.logits, transformers' "
                                 "output_logits)", is_bool, "True or False",
                                 api_only="tensors; the command line prints text")
    generator: torch.Generator | None = option(None, "the only source of random draws; None: freshly seeded",
                                               optional(lambda v: isinstance(v, torch.Generator)),
                                               "a torch.Generator or None", api_only="--seed seeds it")
    logits_steps: Sequence[LogitsStep] = option((), "your own steps, placed by their kind (generation/steps.py)",
                                                lambda v: isinstance(v, (list, tuple)) and all(map(callable, v)),
                                                "a list of callables step(scores, ctx) -> scores",
                                                api_only="Python objects")
    compile: bool = option(False, "run the one-token forward through torch.compile (generation/compiled.py)",
                           is_bool, "True or False", cli=SWITCH)

    def __post_init__(self) -> None:
        for f in fields(self):
            check_declared(f, getattr(self, f.name))
        self._check_combinations()

    @property
    def sampling(self) -> bool:
        """Whether tokens are drawn at random (temperature 0 turns sampling into greedy)."""
        return self.do_sample and self.temperature > 0

    def _check_combinations(self) -> None:
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise OptionError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                              f"({self.num_beams}): beam search returns its best num_beams hypotheses at most",
                              "num_return_sequences", "num_beams")
        if self.num_beams == 1 and self.num_return_sequences > 1 and not self.sampling:
            raise OptionError(f"num_return_sequences={self.num_return_sequences} needs do_sample=True or "
                              "num_beams >= num_return_sequences: greedy decoding would return identical copies",
                              "num_return_sequences", "do_sample", "num_beams")
        if (self.stop_strings is not None or self.stop_regex is not None or self.stop_on_json) and \
                not callable(getattr(self.tokenizer, "decode", None)):
            raise OptionError("stop_strings, stop_regex and stop_on_json are matched on decoded text: pass "
                              "tokenizer=... (any object with .decode(list_of_ids) -> str)",
                              "stop_strings", "stop_regex", "stop_on_json")
        unused = [f.name for f in fields(self) if f.metadata["sampling_only"] and getattr(self, f.name) != f.default
                  and not (f.name == "top_k" and self.penalty_alpha is not None)]  # contrastive search's k
        if not self.do_sample and unused:
            warnings.warn(f"{', '.join(unused)} only shape the distribution tokens are sampled from; with "
                          "do_sample=False they are ignored (as in transformers). Pass do_sample=True to use them.",
                          UserWarning)

    def stop_string_list(self) -> list[str]:
        if self.stop_strings is None:
            return []
        return [self.stop_strings] if isinstance(self.stop_strings, str) else list(self.stop_strings)

    def eos_token_ids(self, config) -> list[int]:
        """The end-of-sequence ids in force: the argument, else the model config's."""
        eos = self.eos_token_id if self.eos_token_id is not None else config.eos_token_id
        if eos is None:
            return []
        return [eos] if is_int(eos) else list(eos)

    def resolved_pad_token_id(self, config) -> int | None:
        """Written after a sequence ends: the argument, else config.pad_token_id, else the first eos id."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        if config.pad_token_id is not None:
            return config.pad_token_id
        eos = self.eos_token_ids(config)
        return eos[0] if eos else None


def check_declared(f, value: Any) -> None:
    """One field's value against its declared check; the message names the option and the rule."""
    check = f.metadata.get("check")
    if check is not None and not check(value):
        raise OptionError(f"{f.name} must be {f.metadata['rule']}, got {value!r}{finite_note(value)}", f.name)


def option_fields() -> list:
    """Every declared option: GenerationOptions' fields, then the layer-selection ones."""
    from .layer_selection import LayerSelectionOptions

    return [*fields(GenerationOptions), *fields(LayerSelectionOptions)]


def options_help() -> str:
    """One line per option, for generate()'s docstring and the command line's --help."""
    lines = []
    for f in option_fields():
        default = "()" if f.default == () else repr(f.default)
        lines.append(f"    {f.name} = {default}: {f.metadata['help']}")
    return "\n".join(lines)


def check_option_names(options: dict[str, Any]) -> None:
    """Refuse a misspelt or unknown option by name (the dataclass alone would say 'unexpected keyword')."""
    known = [f.name for f in option_fields()]
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


# --------------------------------------------------------------------------- options -> steps
def build_logits_steps(options: GenerationOptions, eos_token_ids: list[int]) -> list[LogitsStep]:
    """The steps the options ask for, in transformers' order within each kind (order_steps then sorts by kind):
    sequence_bias, repetition_penalty, frequency/presence, no_repeat_ngram_size, bad_words_ids, min_new_tokens,
    your logits_steps, then (when sampling) temperature, top_k, top_p, min_p, typical_p, epsilon, eta.

    With beam sampling the filters keep at least len(eos) + 1 tokens, so some beam can always continue.
    """
    o = options
    penalties = [
        (o.sequence_bias is not None, lambda: SequenceBias(tuple(sequence_bias_pairs(o.sequence_bias)))),
        (o.repetition_penalty != 1.0, lambda: RepetitionPenalty(float(o.repetition_penalty))),
        (o.frequency_penalty != 0 or o.presence_penalty != 0,
         lambda: FrequencyPresencePenalty(float(o.frequency_penalty), float(o.presence_penalty))),
        (o.no_repeat_ngram_size > 0, lambda: NoRepeatNGram(o.no_repeat_ngram_size)),
        (o.bad_words_ids is not None, lambda: SequenceBias(bad_words_biases(o.bad_words_ids, eos_token_ids))),
        (o.min_new_tokens > 0 and eos_token_ids, lambda: MinNewTokens(o.min_new_tokens, tuple(eos_token_ids))),
    ]
    keep = max(len(eos_token_ids) + 1, 2) if o.num_beams > 1 else 1
    warpers = [
        (o.temperature != 1.0, lambda: Temperature(float(o.temperature))),
        (bool(o.top_k), lambda: TopK(o.top_k, keep)),
        (o.top_p < 1.0, lambda: TopP(float(o.top_p), keep)),
        (o.min_p is not None, lambda: MinP(float(o.min_p), keep)),
        (o.typical_p < 1.0, lambda: TypicalP(float(o.typical_p), keep)),
        (o.epsilon_cutoff > 0, lambda: EpsilonCutoff(float(o.epsilon_cutoff), keep)),
        (o.eta_cutoff > 0, lambda: EtaCutoff(float(o.eta_cutoff), keep)),
    ]
    steps = [make() for wanted, make in penalties if wanted]
    if o.sampling:
        steps += [make() for wanted, make in warpers if wanted]
    given = {type(step) for step in steps}
    for step in o.logits_steps:
        if type(step) in given:
            raise OptionError(f"{type(step).__name__} is both in logits_steps and set by an option; give it once",
                              "logits_steps")
    return [*steps, *o.logits_steps]
