"""Speed beside the model: `accelerate(model, ...)` swaps a loaded plain model's modules for faster ones.

The model in model/ is the math, in plain PyTorch. Everything here only makes it faster, computing the same
numbers up to float rounding (tests/accel/test_accel.py holds each option to the plain model):

    linear.py     every nn.Linear -> FastLinear: the hand-written one-row / few-row kernel (matvec.py, matvec.cpp),
                  PyTorch's products where they are faster; float32 weight layouts; the head packed for oneDNN
    stacked.py    q/k/v and gate/up as one matmul each (their weights become views into the stack)
    quantize.py   weight-only int8 (`quantize_int8`)
    entropy.py    the fused entropy kernel (entropy.cpp) for entropy decoding
    RMSNorm       PyTorch's fused kernel (F.rms_norm) for the written-out formula

    model = accelerate(load_pretrained(path))                         # row-major, this CPU's kernels
    model = accelerate(load_pretrained(path, dtype=torch.bfloat16), int8=True)

Accelerate a freshly loaded model, once, after moving it to its device and dtype: the swapped modules keep the
plain ones' parameters, and the stacks and packed head are snapshots of their memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import RMSNorm

from .linear import (WEIGHT_LAYOUTS, FastLinear, PackedLinear, Products, can_pack, check_weight_layout,
                     choose_weight_layout, prefers_column_major, relayout)
from .quantize import Int8Linear, quantize_int8
from .stacked import stack_projections

__all__ = ["accelerate", "Acceleration", "Products", "WEIGHT_LAYOUTS", "choose_weight_layout", "quantize_int8",
           "Int8Linear", "FusedRMSNorm"]


@dataclass(frozen=True)
class Acceleration:
    """What `accelerate` did to a model (model.acceleration)."""

    layout: str
    int8: bool
    stacked: bool
    products: Products
    entropy_kernel: bool  # generation/entropy.py takes the fused kernel for this model


class FusedRMSNorm(RMSNorm):
    """RMSNorm through PyTorch's fused kernel, one call for the formula's seven operations; in half precision it
    may round the product once where the formula rounds twice (one rounding step apart)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def accelerate(model: nn.Module, layout: str = "row_major", int8: bool = False, stack: bool = True,
               fused_norm: bool = True, entropy_kernel: bool = True, products: Products | None = None,
               on_copied: Callable[[torch.Tensor], None] | None = None) -> nn.Module:
    """Make a loaded plain model faster for decoding, in place; returns it.

    layout: how float32 CPU matrices are stored (accel/linear.py; `choose_weight_layout` picks one for a run);
    int8: weight-only int8 matrices (bfloat16 activations suit the CPU int8 kernel; the layout is then row-major);
    stack: q/k/v and gate/up as one matmul each; fused_norm: RMSNorm through F.rms_norm; entropy_kernel: entropy
    decoding through accel/entropy.cpp; products: which product each number of rows takes (default: what measured
    fastest on this CPU, `Products.for_this_machine()`). on_copied(old) is called with each tensor replaced by a
    copy (scripts pass model.fast_loading.release_file_pages for a model just loaded from its files).
    """
    check_weight_layout(layout)
    if getattr(model, "acceleration", None) is not None:
        raise ValueError("this model is already accelerated: accelerate a plain model (load it again)")
    if model.embed_tokens.weight.device.type == "meta":
        raise ValueError("accelerate needs loaded weights, not a model on the meta device")
    products = products or Products.for_this_machine()
    if int8:
        quantize_int8(model)  # every linear -> Int8Linear, row-major int8
    _swap_linears(model, layout, products, on_copied)
    if fused_norm:
        for module in model.modules():
            if type(module) is RMSNorm:
                module.__class__ = FusedRMSNorm
    if stack:
        stack_projections(model, lambda w: prefers_column_major(layout, w), products, on_copied)
    model.acceleration = Acceleration(layout, int8, stack, products, entropy_kernel)
    return model


def _swap_linears(model: nn.Module, layout: str, products: Products,
                  on_copied: Callable[[torch.Tensor], None] | None) -> None:
    """Every nn.Linear -> FastLinear over the same Parameters, stored in `layout`; the head packed where the layout
    asks for it."""
    head = model.lm_head
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            old = child.weight.data
            child.weight.data = relayout(old, prefers_column_major(layout, old, is_head=child is head))
            if on_copied is not None and child.weight.data_ptr() != old.data_ptr():
                on_copied(old)
            packs = child is head and layout in ("column_major_blocks", "packed_head") and can_pack(child.weight)
            setattr(parent, name, (PackedLinear if packs else FastLinear)(child, products))
