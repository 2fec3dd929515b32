"""Weight-only int8 (`quantize_int8(model)`): every matrix stored as int8 with one scale per output row.

    W[o, i] ~ scale[o] * q[o, i],   scale[o] = max_i |W[o, i]| / 127,   q = round(W / scale) in [-127, 127]

Activations, norms, the embedding and the KV cache keep the model's dtype; only the matrices a decode step
streams are quantized: q/k/v/o, gate/up/down and the head (SmolLM2-135M: 134 MB instead of 270 MB in bf16).
The rounding error of each weight is at most scale / 2, i.e. 1/254 of its row's largest weight (llama.cpp's
Q8_0 is the same idea with one scale per 32 weights).

The product: for one row, the hand-written kernel of accel/matvec.cpp (int8 widened to float32, the row's scale
applied once); for 1-63 bfloat16 rows, PyTorch's CPU kernel `_weight_int8pack_mm` (int8 times bf16, the scales
applied inside); otherwise the float32 product of the dequantized matrix (`dequantize_int8`): the same numbers,
just slower. Measurements: docs/performance.md.

With a tied head (SmolLM2), the head gets its own int8 copy and the embedding stays in the model's dtype (a
lookup reads one row per token, so its bytes do not matter): `lm_head.weight` is then no longer the embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .matvec import matvec, matvec_available

INT8_KERNEL_ROWS = 64  # below this many bf16 rows _weight_int8pack_mm beat the float32 dequantized product
# (where the two cross depends on the matrix: docs/performance.md)


def quantize_int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> q (out, in) int8 and scale (out,) bfloat16, symmetric per output row.

    The scale is rounded to bfloat16 *before* q is computed, so the bf16 kernel applies exactly the scales q was
    made for (each weight still within about scale / 2 of its value). A row of zeros gets scale 1.
    """
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0  # (out,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.bfloat16)
    q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8).contiguous()  # the kernel needs rows
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q (out, in) int8, scale (out,) -> the (out, in) matrix the int8 weights stand for, in dtype."""
    return (q.float() * scale.float()[:, None]).to(dtype)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ (scale[:, None] * q)^T + bias; x (..., in) -> (..., out) in x's dtype."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows == 1 and x.device.type == "cpu" and q.is_contiguous() and matvec_available():
        out = matvec(q, x.reshape(-1), scale).reshape(*x.shape[:-1], q.shape[0])  # the one-row kernel
        return out if bias is None else out + bias
    # The kernel reads the input in blocks of 8: other widths crashed or gave wrong numbers (torch 2.13, measured).
    if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and 0 < rows < INT8_KERNEL_ROWS
            and q.shape[1] % 8 == 0):
        # int8 x bf16 with the scales applied inside: streams 1 byte per weight instead of 2.
        out = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, -1), q, scale.to(x.dtype))
        out = out.reshape(*x.shape[:-1], q.shape[0])
        return out if bias is None else out + bias
    compute = torch.float32 if x.device.type == "cpu" else x.dtype  # CPU half products of many rows are slow
    out = F.linear(x.to(compute), dequantize_int8(q, scale, compute), None if bias is None else bias.to(compute))
    return out.to(x.dtype)


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with a bfloat16 scale per output row; computes `int8_linear`.

    `weight` is an int8 Parameter (requires_grad=False: weight-only quantization is for inference), so the
    q/k/v and gate/up stacks of accel/stacked.py stack it like any other weight.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.weight = nn.Parameter(q, requires_grad=False)
        self.register_buffer("scale", scale)
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias.detach(), requires_grad=False))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, scale = quantize_int8_rows(linear.weight)
        return cls(q, scale, linear.bias)

    def _apply(self, fn, recurse=True):
        # model.to(dtype) casts every floating tensor; the scales keep the dtype q was made for, and only
        # follow the device.
        scale = self.scale
        super()._apply(fn, recurse)
        self.scale = scale.to(self.weight.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight, per-row scale"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every linear of the model (blocks and head) by an Int8Linear, in place; returns the model.

    The new modules carry no hooks (register them after quantizing). A model whose projections accel/ stacked gets
    its stacks again, over the int8 weights. Refuses a model that already is quantized, and GPT-OSS (its experts
    are MXFP4 tensors, not linears).
    """
    if any(isinstance(module, Int8Linear) for module in model.modules()):
        raise ValueError("this model is already quantized to int8")
    if getattr(model.config, "model_type", None) == "gpt_oss":
        raise ValueError("quantize_int8 supports LLaMA-style models; GPT-OSS keeps its MXFP4 experts")
    if model.embed_tokens.weight.device.type == "meta":
        raise ValueError("quantize_int8 needs loaded weights, not a model on the meta device")
    parents = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    for parent, name, child in parents:
        setattr(parent, name, Int8Linear.from_linear(child))
    from .stacked import restack  # imported here: stacked.py imports this module

    restack(model)  # stacks that pointed at the float weights now stack the int8 ones
    return model
