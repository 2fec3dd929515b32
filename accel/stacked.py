"""q/k/v and gate/up as one matmul each: projections that read the same input, stacked.

A decode step makes about 7 matrix products per block; q/k/v read the same input, and so do the MLP's gate/up, so
one product over the stacked matrices replaces three (two): 90 of the 211 products of a SmolLM2 step. The linears
keep their parameters, as views into the stacked weight: no memory is added and the state_dict is unchanged.
Matrices that already lie back to back in memory (gate_proj and up_proj in a mapped checkpoint; q/k/v too in
the zoo's folders) are stacked as a view, without a copy (`stack_rows`).

The attention and MLP modules become `StackedAttention` / `StackedSwiGLU`, subclasses of the plain ones whose
forward runs the stacked product (`attend`, the rest of attention, is the plain one). The stack is a snapshot of
the weights' memory: replace a weight after stacking (load_state_dict(assign=True), .to() to another dtype or
device) and call `accel.accelerate` on a freshly loaded model instead. Hooks on q_proj ... no longer fire.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import Attention, SwiGLU

from .linear import FastLinear, Products, linear
from .quantize import Int8Linear, int8_linear


class StackedLinear(nn.Module):
    """Several linears that read the same input, computed with one matmul; returns their outputs, split.

    The stacked weight (and bias, and int8 scales) are non-persistent buffers: they follow the model's device but
    stay out of the state_dict, where the linears' own names stay.
    """

    def __init__(self, linears: Sequence[nn.Module], column_major: bool = False, products: Products = Products()):
        super().__init__()
        self.sizes = [module.weight.shape[0] for module in linears]
        if column_major:  # built as W^T = [W_1^T W_2^T ...] directly: contiguous rows copied, no transpose
            weight = torch.cat([module.weight.detach().t() for module in linears], dim=1).t()
        else:
            weight = stack_rows([module.weight.detach() for module in linears])
        has_bias = [module.bias is not None for module in linears]
        if any(has_bias) and not all(has_bias):
            raise ValueError("StackedLinear needs all or none of the linears to have a bias")
        bias = torch.cat([module.bias.detach() for module in linears]) if all(has_bias) else None
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        for module, part in zip(linears, weight.split(self.sizes)):
            module.weight = nn.Parameter(part, requires_grad=module.weight.requires_grad)
        if bias is not None:
            for module, part in zip(linears, bias.split(self.sizes)):
                module.bias = nn.Parameter(part, requires_grad=module.bias.requires_grad)
        scale = None  # int8 linears: their per-row scales, stacked the same way
        if all(isinstance(module, Int8Linear) for module in linears):
            scale = torch.cat([module.scale for module in linears])
            for module, part in zip(linears, scale.split(self.sizes)):
                module.scale = part
        self.register_buffer("scale", scale, persistent=False)
        self.column_major = column_major
        self.products = products

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.scale is not None:
            out = int8_linear(x, self.weight, self.scale, self.bias)
        else:
            out = linear(x, self.weight, self.bias, self.products)
        return out.split(self.sizes, dim=-1)  # (..., out_i) each


class StackedAttention(Attention):
    """Attention with q/k/v computed as one matmul (qkv_proj); the rest is the plain `attend`."""

    qkv_proj: StackedLinear

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache=None) -> torch.Tensor:
        q, k, v = self.qkv_proj(x)  # (B, T, n_heads * d), (B, T, n_kv * d), (B, T, n_kv * d)
        return self.attend(q, k, v, cos, sin, mask, cache)


class StackedSwiGLU(SwiGLU):
    """SwiGLU with gate/up computed as one matmul (gate_up_proj)."""

    gate_up_proj: StackedLinear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x)
        return self.down_proj(F.silu(gate) * up)


def stack_projections(model: nn.Module, column_major: Callable[[torch.Tensor], bool], products: Products,
                      on_copied: Callable[[torch.Tensor], None] | None = None) -> None:
    """Make every LLaMA attention and SwiGLU MLP of `model` stacked (GPT-OSS's, with sinks and experts, stay)."""
    for module in model.modules():
        if type(module) in (Attention, StackedAttention):
            module.__class__ = StackedAttention
            module.qkv_proj = _stack([module.q_proj, module.k_proj, module.v_proj], column_major, products, on_copied)
        elif type(module) in (SwiGLU, StackedSwiGLU):
            module.__class__ = StackedSwiGLU
            module.gate_up_proj = _stack([module.gate_proj, module.up_proj], column_major, products, on_copied)


def restack(model: nn.Module) -> None:
    """Stack again the projections of a model that was stacked, after its linears were replaced (int8)."""
    for module in model.modules():
        for name, parts in (("qkv_proj", ("q_proj", "k_proj", "v_proj")), ("gate_up_proj", ("gate_proj", "up_proj"))):
            old = getattr(module, name, None)
            if isinstance(old, StackedLinear):
                linears = [getattr(module, part) for part in parts]
                products = next((m.products for m in linears if isinstance(m, FastLinear)), old.products)
                setattr(module, name, StackedLinear(linears, column_major=False, products=products))


def _stack(linears: list[nn.Module], column_major: Callable[[torch.Tensor], bool], products: Products,
           on_copied: Callable[[torch.Tensor], None] | None) -> StackedLinear:
    old = [t.data for module in linears for t in (module.weight, module.bias) if t is not None]
    stacked = StackedLinear(linears, column_major(linears[0].weight), products)
    if on_copied is not None:
        in_place = stacked.weight.untyped_storage().data_ptr()
        for tensor in old:
            if tensor.untyped_storage().data_ptr() != in_place:  # stacked in place: the memory is still in use
                on_copied(tensor)
    return stacked


def stack_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """torch.cat(parts) of row-major matrices, or a view without a copy when they already lie back to back in one
    storage (a checkpoint mapped from disk, model/loading.py `map_file`)."""
    first = parts[0]
    storage, offset = first.untyped_storage(), first.storage_offset()
    for part in parts:
        if not (part.is_contiguous() and part.dtype == first.dtype and part.shape[1:] == first.shape[1:]
                and part.untyped_storage().data_ptr() == storage.data_ptr() and part.storage_offset() == offset):
            return torch.cat(parts)
        offset += part.numel()
    if offset * first.element_size() > storage.nbytes():  # an equal address, but a different, shorter storage
        return torch.cat(parts)
    rows = sum(part.shape[0] for part in parts)
    return first.new_empty(0).set_(storage, first.storage_offset(), (rows, *first.shape[1:]))
