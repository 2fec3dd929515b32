"""A KV cache of fixed slots for a compiled one-token step (the gpt-fast design).

A compiled graph is reused only while shapes and Python values stay the same. `StaticLayer` (cache/static.py)
returns the filled prefix, a view that grows by one position each step: a new shape every step. Here every
layer keeps (B, n_kv, num_slots, d) buffers and always returns all of them; what changes from step to step
lives in tensors:
- `slots` (T,): where this call's T new keys go (written with index_copy_, an operation on tensors);
- `slot_mask` (B, S): True for the slots holding a real token (the padding of a left-padded prompt and the
  slots not yet written are False);
- `attention_mask(slots)` (B, 1, T, S): a query sees the real slots at or before its own, and always itself,
  so no softmax row is empty. The model takes such a 4-D mask as it is (model/causal_lm.py).

Half precision on the CPU: the buffers may be float32 (`dtype`), because the CPU attention kernel is slower
in bf16/fp16; the model's attention casts the keys/values back for the matmul.
"""

from __future__ import annotations

import torch


class SlotCache:
    """Keys/values of every layer in (B, n_kv, num_slots, d) buffers; `slots` says where this call writes."""

    def __init__(self, config, batch_size: int, num_slots: int, dtype: torch.dtype, device: torch.device):
        head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
        shape = (batch_size, config.num_key_value_heads, num_slots, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.slot_index = torch.arange(num_slots, device=device)  # (S,)
        self.slot_mask = torch.zeros(batch_size, num_slots, dtype=torch.bool, device=device)  # (B, S)
        self.slots = self.slot_index[:1]  # (T,) set before each call by `attention_mask`

    @property
    def num_slots(self) -> int:
        return self.slot_index.numel()

    def attention_mask(self, slots: torch.Tensor, slot_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Point this call's writes at `slots` (T,) and return its mask (B, 1, T, S) over every slot.

        slot_mask (B, S), default the cache's own, must already be True at `slots` for real tokens.
        """
        self.slots = slots
        slot_mask = self.slot_mask if slot_mask is None else slot_mask
        key_slots = self.slot_index[None, :]  # (1, S)
        causal = key_slots <= slots[:, None]  # (T, S)
        itself = key_slots == slots[:, None]  # (T, S): a padding query still sees its own slot
        return ((causal[None] & slot_mask[:, None, :]) | itself[None])[:, None]  # (B, 1, T, S)

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, n_kv, T, d) at `slots`; return every slot (B, n_kv, S, d): the mask hides the unwritten."""
        self.keys[layer_idx].index_copy_(2, self.slots, keys.to(self.keys[layer_idx].dtype))
        self.values[layer_idx].index_copy_(2, self.slots, values.to(self.values[layer_idx].dtype))
        return self.keys[layer_idx], self.values[layer_idx]

    def reorder(self, index: torch.Tensor, filled: int) -> None:
        """Rows become rows[index] (beam search keeps the beams it continues), for the first `filled` slots."""
        for buffer in (*self.keys, *self.values):
            buffer[:, :, :filled] = buffer[:, :, :filled].index_select(0, index)
        self.slot_mask = self.slot_mask.index_select(0, index)
