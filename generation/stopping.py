"""When does a sequence end? On an end-of-sequence token, at max_new_tokens, or when a stopping criterion fires.

`StopConditions(sequences)` looks at each row (prompt + generated so far) and returns a reason code per row
(0 = keep going). The decode loop, beam search, contrastive search and the two-model decoders all use it, so
the rules live in one place. A criterion is any callable `criterion(sequences, prompt_length) -> (N,) bool`;
the built-in ones:

    StopStrings(strings, tokenizer)   a stop string appears in the decoded generated text
    StopRegex(pattern, tokenizer)     the decoded generated text matches a regular expression (re.search)
    StopOnJson(tokenizer)             the generated text holds a complete JSON object or array (course lesson 5:
                                      "stop when the pattern is complete")
    MaxTime(seconds)                  the call has run this long (transformers' max_time)
    your own callables (stopping_criteria=[...]): f(sequences) -> (N,) bool tensor or a bool for every row
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

RUNNING, EOS, STOP_STRING, MAX_NEW_TOKENS, STOP_REGEX, JSON_COMPLETE, MAX_TIME, CRITERION = range(8)
STOP_REASONS = {EOS: "eos", STOP_STRING: "stop_string", MAX_NEW_TOKENS: "max_new_tokens", STOP_REGEX: "stop_regex",
                JSON_COMPLETE: "json_complete", MAX_TIME: "max_time", CRITERION: "stopping_criteria"}


def decoded_generated(sequences: torch.Tensor, prompt_length: int, tokenizer, window: int | None = None) -> list[str]:
    """The generated text of each row (its last `window` tokens only, when given)."""
    generated = sequences[:, prompt_length:]
    if window is not None:
        generated = generated[:, -window:]
    return [tokenizer.decode(row) for row in generated.tolist()]


@dataclass(frozen=True)
class StopStrings:
    strings: tuple[str, ...]
    tokenizer: Any
    reason: int = STOP_STRING

    def __call__(self, sequences: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """The loop stops a row the first time a string appears, so only text ending at the newest token can hold
        a new match: decoding a tail of 4 tokens per character (a character is at most 4 UTF-8 byte tokens) plus
        a margin keeps each check short however long the generation gets."""
        window = 4 * max(len(s) for s in self.strings) + 8
        texts = decoded_generated(sequences, prompt_length, self.tokenizer, window)
        return torch.tensor([any(s in text for s in self.strings) for text in texts], dtype=torch.bool)


@dataclass(frozen=True)
class StopRegex:
    pattern: str
    tokenizer: Any
    reason: int = STOP_REGEX

    def __call__(self, sequences: torch.Tensor, prompt_length: int) -> torch.Tensor:
        texts = decoded_generated(sequences, prompt_length, self.tokenizer)
        return torch.tensor([re.search(self.pattern, text) is not None for text in texts], dtype=torch.bool)


def first_json_value_end(text: str) -> int | None:
    """Where the first complete JSON object or array in `text` ends (from its first "{" or "["), or None."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    try:
        _, end = json.JSONDecoder().raw_decode(text, min(starts))
    except json.JSONDecodeError:
        return None
    return end


@dataclass(frozen=True)
class StopOnJson:
    tokenizer: Any
    reason: int = JSON_COMPLETE

    def __call__(self, sequences: torch.Tensor, prompt_length: int) -> torch.Tensor:
        texts = decoded_generated(sequences, prompt_length, self.tokenizer)
        return torch.tensor([first_json_value_end(text) is not None for text in texts], dtype=torch.bool)


@dataclass
class MaxTime:
    seconds: float
    start: float = field(default_factory=time.perf_counter)  # when the call was prepared
    reason: int = MAX_TIME

    def __call__(self, sequences: torch.Tensor, prompt_length: int) -> torch.Tensor:
        return torch.full((sequences.shape[0],), time.perf_counter() - self.start > self.seconds)


@dataclass(frozen=True)
class UserCriterion:
    """A stopping_criteria callable f(sequences) -> (N,) bool tensor (or one bool for every row)."""

    function: Callable[[torch.Tensor], Any]
    reason: int = CRITERION

    def __call__(self, sequences: torch.Tensor, prompt_length: int) -> torch.Tensor:
        hit = self.function(sequences)
        hit = torch.as_tensor(hit, dtype=torch.bool).cpu()
        if hit.dim() == 0:
            hit = hit.expand(sequences.shape[0])
        if hit.shape != (sequences.shape[0],):
            raise ValueError(f"stopping criterion {self.function!r} returned shape {tuple(hit.shape)}; it must "
                             f"return a bool or a (N,) bool tensor, one per row ({sequences.shape[0]} rows)")
        return hit


@dataclass
class StopConditions:
    eos_token_ids: torch.Tensor  # (E,) long; may be empty
    prompt_length: int  # T of the padded prompt
    max_new_tokens: int
    criteria: Sequence[Callable] = ()  # each (sequences, prompt_length) -> (N,) bool, with a .reason code

    @classmethod
    def from_options(cls, options, eos_token_ids: list[int], prompt_length: int, device) -> "StopConditions":
        """The stop rules generate()'s options ask for (the clock of max_time starts here)."""
        criteria: list = []
        if options.stop_strings is not None:
            criteria.append(StopStrings(tuple(options.stop_string_list()), options.tokenizer))
        if options.stop_regex is not None:
            criteria.append(StopRegex(options.stop_regex, options.tokenizer))
        if options.stop_on_json:
            criteria.append(StopOnJson(options.tokenizer))
        if options.max_time is not None:
            criteria.append(MaxTime(options.max_time))
        criteria += [UserCriterion(function) for function in options.stopping_criteria]
        return cls(torch.tensor(eos_token_ids, dtype=torch.long, device=device), prompt_length,
                   options.max_new_tokens, tuple(criteria))

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        """sequences (N, T) with the newest token last -> (N,) long reason codes; EOS wins over the others, then
        the criteria in their order, then max_new_tokens."""
        reasons = torch.full((sequences.shape[0],), RUNNING, dtype=torch.long, device=sequences.device)
        for criterion in reversed(self.criteria):  # the first criterion that fires names the reason
            hits = criterion(sequences, self.prompt_length).to(sequences.device)
            reasons[hits] = criterion.reason
        if self.eos_token_ids.numel():
            reasons[torch.isin(sequences[:, -1], self.eos_token_ids)] = EOS
        if sequences.shape[1] - self.prompt_length >= self.max_new_tokens:
            reasons[reasons == RUNNING] = MAX_NEW_TOKENS
        return reasons
