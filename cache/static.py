"""A KV cache in buffers written in place (the gpt-fast design), grown as the answer grows.

`DynamicLayer.update` concatenates, which copies the whole cache every step: O(S) work per token that grows
with the sequence. `StaticLayer` keeps (B, n_kv, capacity, d) buffers and writes each step's keys at the next
free position; attention reads the filled prefix as a view. Same methods and results as `DynamicCache`, so
the model and the decode loop take either.

The buffers are not sized for the worst case (`max_length`, e.g. prompt + max_new_tokens) up front: a batch of
16 whose answers end after 8 tokens would hold room for 8000 it never uses. They start at the prompt plus
`CHUNK` positions and double when full (one copy of the filled part each time: O(1) per token on average),
never past `max_length`. So a long limit costs nothing until it is used.
"""

from __future__ import annotations

import torch

from .dynamic import DynamicCache, DynamicLayer, check_same_rows

CHUNK = 256  # positions: the room added beyond the prompt at first, and the least a buffer grows by


class StaticLayer(DynamicLayer):
    """One block's cache in fixed buffers; `length` positions are filled.

    repeat_interleave is DynamicLayer's: it acts on the batch dimension, whatever the length.
    """

    def __init__(self, max_length: int) -> None:
        super().__init__()  # keys / values: (B, n_kv, capacity, d), allocated on first update, grown when full
        self.max_length = max_length
        self.length = 0

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, n_kv, T, d) keys/values; return the filled prefix (B, n_kv, S, d)."""
        end = self.length + keys.shape[-2]
        if end > self.max_length:
            raise ValueError(f"StaticCache is full: {end} positions needed, {self.max_length} allocated; "
                             f"create it with a larger max_length")
        if self.keys is not None:
            check_same_rows(self.keys, keys)
        if self.keys is None or end > self.keys.shape[-2]:
            self.grow(keys, values, end)
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def grow(self, keys: torch.Tensor, values: torch.Tensor, needed: int) -> None:
        """Buffers with room for at least `needed` positions, the filled ones copied over."""
        if self.keys is None:
            capacity = needed + CHUNK  # the prompt, and room to start the answer
        else:
            capacity = max(needed, 2 * self.keys.shape[-2])
        capacity = min(capacity, self.max_length)
        B, n_kv, _, d = keys.shape
        grown_keys, grown_values = keys.new_empty(B, n_kv, capacity, d), values.new_empty(B, n_kv, capacity, d)
        if self.keys is not None:
            grown_keys[:, :, :self.length] = self.keys[:, :, :self.length]
            grown_values[:, :, :self.length] = self.values[:, :, :self.length]
        self.keys, self.values = grown_keys, grown_values

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
    """A DynamicCache whose layers are `StaticLayer`s holding at most `max_length` positions."""
    return DynamicCache(layers=[StaticLayer(max_length) for _ in range(num_layers)])
