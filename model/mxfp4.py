"""MXFP4, the 4-bit format the GPT-OSS release stores its expert weights in (OCP Microscaling spec v1.0).

A weight row is cut into blocks of 32 values. Each block is 16 bytes, two FP4 (E2M1) codes per byte,
low nibble first, plus one shared scale byte e meaning 2^(e - 127) (E8M0):

    value = FP4_VALUES[code] * 2^(e - 127)

Checkpoint layout of one expert tensor W (E, out, in), named `<name>_blocks` / `<name>_scales`:
    blocks (E, out, in / 32, 16) uint8      scales (E, out, in / 32) uint8
transformers' parameter is the transpose, (E, in, out) (it computes x @ W), so we transpose after decoding.
Decoding goes one expert at a time: peak memory is the output plus one expert's temporaries.
"""

from __future__ import annotations

import torch

# The 16 E2M1 values: sign bit, 2 exponent bits, 1 mantissa bit (codes 8..15 are the negatives of 0..7).
FP4_VALUES = (+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SCALE_BIAS = 127  # E8M0 exponent bias
BLOCK_BYTES = 16  # 32 values per block, 2 per byte


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """blocks (..., G, 16) uint8, scales (..., G) uint8 -> values (..., G * 32) in `dtype`."""
    table = torch.tensor(FP4_VALUES, dtype=dtype, device=blocks.device)
    low, high = (blocks & 0x0F).long(), (blocks >> 4).long()  # (..., G, 16) codes each
    values = torch.stack((table[low], table[high]), dim=-1)  # (..., G, 16, 2): low nibble is the earlier value
    values = values.flatten(-2)  # (..., G, 32)
    exponents = scales.to(torch.int32)[..., None] - SCALE_BIAS  # (..., G, 1): one scale per block
    values = torch.ldexp(values, exponents).to(dtype)  # value * 2^(e - 127), exact: 3 significant bits
    return values.flatten(-2)  # (..., G * 32)


def dequantize_expert_weight(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Checkpoint blocks (E, out, G, 16) and scales (E, out, G) -> the parameter (E, in = G * 32, out)."""
    E, out_features, G, _ = blocks.shape
    weight = torch.empty(E, G * 32, out_features, dtype=dtype, device=blocks.device)
    for e in range(E):  # one expert at a time bounds the temporaries (int64 codes are 16x the packed bytes)
        weight[e] = dequantize_mxfp4(blocks[e], scales[e], dtype).T  # (out, in) -> (in, out)
    return weight


def check_mxfp4_pair(name: str, blocks: tuple[tuple[int, ...], str], scales: tuple[tuple[int, ...], str]) -> str:
    """Validate the (shape, dtype) headers of `<name>_blocks` / `<name>_scales`; return an error or ''."""
    (block_shape, block_dtype), (scale_shape, scale_dtype) = blocks, scales
    if block_dtype != "U8" or scale_dtype != "U8":
        return f"MXFP4 tensors '{name}_blocks' / '_scales' must be uint8, found {block_dtype} / {scale_dtype}"
    if len(block_shape) != 4 or block_shape[-1] != BLOCK_BYTES or block_shape[:-1] != scale_shape:
        return (f"MXFP4 tensor '{name}_blocks' has shape {list(block_shape)} and '_scales' {list(scale_shape)}; "
                f"expected (E, out, G, {BLOCK_BYTES}) and (E, out, G)")
    return ""


def dense_shape(block_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Blocks (E, out, G, 16) -> the parameter's shape (E, in = G * 32, out)."""
    E, out_features, G, _ = block_shape
    return (E, G * 2 * BLOCK_BYTES, out_features)
