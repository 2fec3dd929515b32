"""A cache layer for sliding-window attention: it keeps only the keys a future query can still see.

In a "sliding_attention" layer (Mistral, GPT-OSS) the query at position p attends to keys p - W + 1 .. p,
W = sliding_window. After a step, the next query needs at most the last W - 1 keys, so the layer drops the
rest: its memory stays 2 x batch x kv_heads x (W - 1) x head_dim however long the text grows.

A step with T new tokens still returns the kept keys plus all T new ones (a long prefill needs them all);
the model's mask then addresses exactly those `kept + T` keys (see `CausalLM.forward`).
"""

from __future__ import annotations

import torch

from .dynamic import DynamicCache, DynamicLayer
from .static import StaticLayer


class SlidingWindowLayer(DynamicLayer):
    """Like DynamicLayer, but stores at most `sliding_window - 1` positions (B, n_kv, <= W - 1, d)."""

    def __init__(self, sliding_window: int) -> None:
        super().__init__()
        if sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        self.sliding_window = sliding_window
        self.seen = 0  # positions seen so far; the stored keys are the last min(seen, W - 1) of them

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, n_kv, T, d); return kept + new keys/values, (B, n_kv, kept + T, d); keep the last W - 1."""
        all_keys, all_values = super().update(keys, values)
        self.seen += keys.shape[-2]
        first_kept = max(all_keys.shape[-2] - (self.sliding_window - 1), 0)
        self.keys = all_keys[..., first_kept:, :]  # (B, n_kv, <= W - 1, d)
        self.values = all_values[..., first_kept:, :]
        return all_keys, all_values

    def get_seq_length(self) -> int:
        """Positions seen (not stored): position ids and masks count every token."""
        return self.seen

    def crop(self, length: int) -> None:
        """Roll back to the first `length` positions; possible only while their window is still stored."""
        if length >= self.seen:
            return
        stored = self.get_kept_length()
        first_stored = self.seen - stored
        if max(length - (self.sliding_window - 1), 0) < first_stored:
            raise ValueError(
                f"cannot crop a sliding-window cache from {self.seen} to {length} positions: the keys before "
                f"position {first_stored} were dropped (window {self.sliding_window}); re-run the prefix instead"
            )
        super().crop(length - first_stored)
        self.seen = length

    def get_kept_length(self) -> int:
        """Positions actually stored, <= sliding_window - 1."""
        return 0 if self.keys is None else self.keys.shape[-2]


def cache_for_config(config, max_length: int | None = None) -> DynamicCache:
    """A DynamicCache with a SlidingWindowLayer for each "sliding_attention" layer of `config` (a ModelConfig).

    The other layers are DynamicLayers, or with `max_length` (the most positions the cache will hold, known
    to the decode loop) preallocated StaticLayers, which write each step in place instead of copying the
    whole cache (cache/static.py). Models without `layer_types` (LLaMA) have only full-attention layers.
    """
    layer_types = config.layer_types or ["full_attention"] * config.num_hidden_layers

    def full_layer():
        return DynamicLayer() if max_length is None else StaticLayer(max_length)

    return DynamicCache(layers=[SlidingWindowLayer(config.sliding_window) if kind == "sliding_attention"
                                else full_layer() for kind in layer_types])
