"""Rotary position embeddings (RoFormer, Su et al. 2021) and the context-extension variants.

Layout: the `rotate_half` convention of Hugging Face LLaMA. Each head vector is split into two halves
(x1, x2) and rotated as (x1 cos - x2 sin, x2 cos + x1 sin) with one frequency per pair (i, i + d/2).
Checkpoints in the HF format are stored for this layout, so q/k weights load without any permutation.

Scaling types (all change only the inverse frequencies, plus an attention factor for YaRN):
  default  theta_i = base^(-2i/d)
  linear   theta_i / factor                                   (position interpolation, Chen et al. 2023)
  dynamic  base grows with the sequence past max_position_embeddings (NTK-aware, "dynamic NTK")
  llama3   low frequencies / factor, high kept, smooth ramp in between (Llama 3.1)
  yarn     ramp between interpolation and extrapolation + attention temperature (Peng et al. 2023)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def default_inv_freq(dim: int, base: float) -> torch.Tensor:
    """theta_i = base^(-2i/d) for i in [0, d/2)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (base**exponents)


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = scaling["factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_wavelen = old_context / scaling["low_freq_factor"]
    high_wavelen = old_context / scaling["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (low frequencies) are interpolated, short ones kept, the middle blended.
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - scaling["low_freq_factor"]) / (
        scaling["high_freq_factor"] - scaling["low_freq_factor"]
    )
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, blended, scaled)


def yarn_inv_freq(dim: int, base: float, scaling: dict, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """YaRN "NTK-by-parts" frequencies and the attention factor 0.1 ln(s) + 1 (Peng et al. 2023, eq. 19-22)."""
    factor = scaling["factor"]
    original_max = scaling.get("original_max_position_embeddings")
    if original_max is not None:
        factor = max_position_embeddings / original_max  # as transformers: the ratio of the two lengths
    else:
        original_max = max_position_embeddings

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def correction_dim(num_rotations: float) -> float:
        # The dimension whose wavelength completes `num_rotations` turns over the original context.
        return dim * math.log(original_max / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = correction_dim(scaling.get("beta_fast") or 32)
    high = correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)

    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_weight = 1 - ramp  # 1 for high-frequency dims (kept), 0 for low ones (interpolated)
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """Turns position ids into the (cos, sin) tables every attention layer uses."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.dim = config.head_dim
        self.base = config.rope_theta
        self.rope_type = config.rope_type
        scaling = config.rope_scaling or {}
        self.attention_scaling = 1.0
        inv_freq = default_inv_freq(self.dim, self.base)
        if self.rope_type == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif self.rope_type == "llama3":
            inv_freq = llama3_inv_freq(inv_freq, scaling)
        elif self.rope_type == "yarn":
            inv_freq, self.attention_scaling = yarn_inv_freq(
                self.dim, self.base, scaling, config.max_position_embeddings
            )
        # Built on the CPU explicitly so that a model made on the meta device still gets real values.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def dynamic_inv_freq(self, seq_len: int) -> torch.Tensor:
        """Dynamic NTK: past the trained length, grow the base so the longest wavelength covers seq_len.

        Stateless (it depends only on this call's longest position); transformers keeps the largest length
        seen so far instead, which gives the same numbers whenever the sequence only grows, as in decoding.
        """
        max_pos = self.config.max_position_embeddings
        if seq_len <= max_pos:
            return self.inv_freq
        factor = self.config.rope_scaling["factor"]
        base = self.base * ((factor * seq_len / max_pos) - (factor - 1)) ** (self.dim / (self.dim - 2))
        return default_inv_freq(self.dim, base).to(self.inv_freq.device)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin (B, T, head_dim) in `dtype`."""
        inv_freq = self.inv_freq
        if self.rope_type == "dynamic":
            inv_freq = self.dynamic_inv_freq(int(position_ids.max()) + 1)
        # Angles in float32: bf16 positions lose precision past a few hundred tokens.
        angles = position_ids[:, :, None].float() * inv_freq[None, None, :].float()  # (B, T, head_dim/2)
        angles = torch.cat((angles, angles), dim=-1)  # (B, T, head_dim): pair i with i + d/2
        cos = angles.cos() * self.attention_scaling
        sin = angles.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, head_dim) by cos/sin (B, T, head_dim)."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, head_dim): the same angle for every head
    return x * cos + rotate_half(x) * sin
