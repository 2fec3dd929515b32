"""How many rows (batch x beams x samples) a run can hold: refused up front, with the figures, when too many.

Each row decoded at once needs its own KV cache and its own logits every step:

    cache  = rows x (prompt + CHUNK) x bytes_per_position      (cache/static.py grows from there)
    logits = rows x vocab_size x 4 bytes x LOGITS_COPIES          (float32 scores, log-probabilities, ...)

`--num-beams 100000` on a 49152-word vocabulary needs ~80 GB of logits in its first step; without this check it
runs until the allocator fails. The check counts what the run needs to *start*; a cache that later grows with
long answers is bounded by max_new_tokens, which check_inputs holds to the context window.
"""

from __future__ import annotations

import torch

from .static import CHUNK

LOGITS_COPIES = 4  # the logits, the scores the steps make of them, log-probabilities, and a sort or top-k


def bytes_per_position(config, dtype: torch.dtype) -> int:
    """KV cache bytes one row adds per token: keys and values of every layer (lesson 5's formula)."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype.itemsize


def rows_do_not_fit(config, rows: int, prompt_length: int, dtype: torch.dtype, device: torch.device,
                    what: str) -> str | None:
    """Why `rows` cannot start decoding in memory, naming `what` (e.g. "batch 2 x num_beams 8"); None if they can."""
    from model.checks import available_memory

    cache = rows * (prompt_length + CHUNK) * bytes_per_position(config, dtype)
    logits = rows * config.vocab_size * 4 * LOGITS_COPIES
    available = available_memory(torch.device(device))
    if available is None or cache + logits <= available:
        return None
    return (f"{what} = {rows} rows need about {(cache + logits) / 2**30:.1f} GB to start decoding "
            f"(KV cache {cache / 2**30:.1f} GB, logits {logits / 2**30:.1f} GB) but "
            f"{available / 2**30:.1f} GB is available on {device}: use fewer rows")
