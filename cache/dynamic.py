"""The KV cache: keys and values of every token seen so far, so each decode step computes only the new one.

`DynamicLayer` holds one block's keys and values, (B, n_kv, S, d) each, and grows by concatenation.
`DynamicCache` holds one layer per block. Memory (course lesson 5, section 2.4):

    bytes = 2 (K and V) x layers x batch x kv_heads x seq_len x head_dim x dtype size
"""

from __future__ import annotations

import torch


class DynamicLayer:
    """One block's cache. Keys are stored after RoPE, so they never need rotating again."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None  # (B, n_kv, S, d)
        self.values: torch.Tensor | None = None  # (B, n_kv, S, d)

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's (B, n_kv, T, d) keys/values; return all of them, (B, n_kv, S + T, d)."""
        if self.keys is None:
            # Copies: the new keys/values are views into the attention's q/k/v projection output, whose
            # storage would otherwise stay alive as long as the cache.
            self.keys, self.values = keys.clone(), values.clone()
        else:
            check_same_rows(self.keys, keys)
            self.keys = torch.cat([self.keys, keys], dim=-2)
            self.values = torch.cat([self.values, values], dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def crop(self, length: int) -> None:
        """Keep the first `length` positions (used to roll back rejected speculative tokens)."""
        if self.keys is not None:
            self.keys = self.keys[..., :length, :]
            self.values = self.values[..., :length, :]

    def reorder(self, index: torch.Tensor) -> None:
        """Rows become rows[index]: beam search keeps the caches of the beams it continues."""
        if self.keys is not None:
            self.keys = self.keys.index_select(0, index.to(self.keys.device))
            self.values = self.values.index_select(0, index.to(self.values.device))

    def repeat_interleave(self, repeats: int) -> None:
        """Each row repeated `repeats` times in place: one prompt prefilled once, expanded to beams."""
        if self.keys is not None:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)

    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


def check_same_rows(cached: torch.Tensor, new: torch.Tensor) -> None:
    """New keys (B, n_kv, T, d) must match the cached ones in all but T: a cache belongs to one batch."""
    if cached.shape[:2] + cached.shape[3:] != new.shape[:2] + new.shape[3:]:
        raise ValueError(f"this cache holds keys of shape (batch, kv heads, -, head_dim) = "
                         f"{tuple(cached.shape[:2]) + tuple(cached.shape[3:])}, the new ones are "
                         f"{tuple(new.shape[:2]) + tuple(new.shape[3:])}: use a new cache for another batch")


class DynamicCache:
    """One cache layer per decoder block, indexed by `layer_idx` as in transformers.

    `DynamicCache()` starts empty and adds a `DynamicLayer` the first time a block's index appears, so the
    cache needs no layer count. `DynamicCache(layers=[...])` fixes the layers instead (sliding-window or
    preallocated ones, see `cache_for_config`); an index past them is an error, never a silent new layer.
    """

    def __init__(self, layers: list | None = None) -> None:
        if isinstance(layers, int):
            raise TypeError("DynamicCache takes no layer count: DynamicCache() adds a layer as each layer_idx "
                            "appears; pass layers=[...] to fix the layers")
        self.grows = layers is None
        self.layers = [] if layers is None else list(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append block `layer_idx`'s (B, n_kv, T, d) keys/values; return all of them, (B, n_kv, S + T, d).

        The argument order is transformers' `Cache.update`. `cache_kwargs` is accepted for that signature and
        unused: keys are cached after RoPE, and each layer writes at its own next position.
        """
        if layer_idx >= len(self.layers):
            if not self.grows:
                raise IndexError(f"layer_idx {layer_idx} is past this cache's {len(self.layers)} layers; "
                                 f"build the cache for the model (cache_for_config) or use DynamicCache()")
            self.layers.extend(DynamicLayer() for _ in range(layer_idx + 1 - len(self.layers)))
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions seen so far by block `layer_idx` (0 before it has run); every block sees every token."""
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0

    def crop(self, length: int) -> None:
        if length < 0:
            raise ValueError(f"cannot crop a cache to a negative length ({length})")
        for layer in self.layers:
            layer.crop(length)

    def reorder(self, beam_idx: torch.Tensor) -> None:
        for layer in self.layers:
            layer.reorder(beam_idx)

    def repeat_interleave(self, repeats: int) -> None:
        for layer in self.layers:
            layer.repeat_interleave(repeats)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


def kv_cache_bytes(num_layers: int, batch: int, num_kv_heads: int, seq_len: int, head_dim: int,
                   dtype: torch.dtype) -> int:
    """The lesson-5 formula: 2 x layers x batch x kv_heads x seq_len x head_dim x sizeof(dtype)."""
    return 2 * num_layers * batch * num_kv_heads * seq_len * head_dim * torch.tensor([], dtype=dtype).element_size()
