"""A preallocated KV cache (the gpt-fast design): fixed buffers written at the next free position.

`DynamicLayer.update` concatenates, which copies the whole cache every step: O(S) work per token that grows
with the sequence. `StaticLayer` allocates (B, n_kv, max_length, d) once and writes each step's keys in place;
attention reads the filled prefix as a view. Same methods and results as `DynamicCache`, so the model and the
decode loop take either.
"""

from __future__ import annotations

import torch

from .dynamic import DynamicCache, DynamicLayer


class StaticLayer(DynamicLayer):
    """One block's cache in fixed buffers; `length` positions are filled.

    repeat_interleave is DynamicLayer's: it acts on the batch dimension, whatever the length.
    """

    def __init__(self, max_length: int) -> None:
        super().__init__()  # keys / values: (B, n_kv, max_length, d), allocated on first update
        self.max_length = max_length
        self.length = 0

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, n_kv, T, d) keys/values; return the filled prefix (B, n_kv, S, d)."""
        if self.keys is None:
            B, n_kv, _, d = keys.shape
            self.keys = keys.new_zeros(B, n_kv, self.max_length, d)
            self.values = values.new_zeros(B, n_kv, self.max_length, d)
        end = self.length + keys.shape[-2]
        if end > self.max_length:
            raise ValueError(f"StaticCache is full: {end} positions needed, {self.max_length} allocated; "
                             f"create it with a larger max_length")
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.length

    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows[index] (beam search), for the filled positions only, written back in place."""
        if self.keys is not None:
            index = index.to(self.keys.device)
            filled = slice(0, self.length)
            self.keys[:, :, filled] = self.keys[:, :, filled].index_select(0, index)
            self.values[:, :, filled] = self.values[:, :, filled].index_select(0, index)

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)  # positions past `length` are simply overwritten later

    def nbytes(self) -> int:
        """Bytes of the filled positions (the same count as DynamicLayer); `allocated_bytes` for the buffers."""
        if self.keys is None:
            return 0
        per_position = self.keys[:, :, :1].numel() * self.keys.element_size() * 2
        return per_position * self.length

    def allocated_bytes(self) -> int:
        return 0 if self.keys is None else 2 * self.keys.numel() * self.keys.element_size()


def StaticCache(num_layers: int, max_length: int) -> DynamicCache:
    """A DynamicCache whose layers are preallocated `StaticLayer`s."""
    return DynamicCache(layers=[StaticLayer(max_length) for _ in range(num_layers)])
