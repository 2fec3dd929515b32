"""When does a sequence end? On an end-of-sequence token, on a stop string, or at max_new_tokens.

`StopConditions(sequences)` looks at the newest token of each row and returns a reason code per row
(0 = keep going). The decode loop and beam search both use it, so the rules live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

RUNNING, EOS, STOP_STRING, MAX_NEW_TOKENS = 0, 1, 2, 3
STOP_REASONS = {EOS: "eos", STOP_STRING: "stop_string", MAX_NEW_TOKENS: "max_new_tokens"}


@dataclass
class StopConditions:
    eos_token_ids: torch.Tensor  # (E,) long; may be empty
    prompt_length: int  # T of the padded prompt
    max_new_tokens: int
    stop_strings: tuple[str, ...] = ()
    tokenizer: Any = None  # .decode(list_of_ids) -> str, needed only with stop_strings

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        """sequences (N, T) with the newest token last -> (N,) long reason codes; EOS wins over the others."""
        reasons = torch.full((sequences.shape[0],), RUNNING, dtype=torch.long, device=sequences.device)
        if self.stop_strings:
            reasons[self._stop_string_hits(sequences)] = STOP_STRING
        if self.eos_token_ids.numel():
            reasons[torch.isin(sequences[:, -1], self.eos_token_ids)] = EOS
        if sequences.shape[1] - self.prompt_length >= self.max_new_tokens:
            reasons[reasons == RUNNING] = MAX_NEW_TOKENS
        return reasons

    def _stop_string_hits(self, sequences: torch.Tensor) -> torch.Tensor:
        """(N,) bool: a stop string occurs in the decoded tail of the generated tokens.

        The loop stops a row the first time a string appears, so only text ending at the newest token
        can hold a new match. Decoding a tail of 4 tokens per character (a character is at most 4 UTF-8
        byte tokens) plus a margin keeps each check short however long the generation gets.
        """
        window = 4 * max(len(s) for s in self.stop_strings) + 8
        generated = sequences[:, self.prompt_length:]
        tails = generated[:, -window:].tolist()
        hits = [any(s in self.tokenizer.decode(tail) for s in self.stop_strings) for tail in tails]
        return torch.tensor(hits, dtype=torch.bool, device=sequences.device)
