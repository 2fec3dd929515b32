"""Lesson 2 (embeddings, RMSNorm, RoPE) against transformers' LLaMA code and hand-computed cases."""

from __future__ import annotations

import math

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.llama.modeling_llama import rotate_half as hf_rotate_half

from model.layers import RMSNorm

from .helpers import check_close

LESSON = 2


def _norm_pair(H: int = 8, eps: float = 1e-6, seed: int = 0) -> tuple[RMSNorm, LlamaRMSNorm]:
    weight = torch.randn(H, generator=torch.Generator().manual_seed(seed))
    ours, theirs = RMSNorm(H, eps), LlamaRMSNorm(H, eps)
    with torch.no_grad():
        ours.weight.copy_(weight)
        theirs.weight.copy_(weight)
    return ours, theirs


def _hf_cos_sin(head_dim: int, positions: torch.Tensor, theta: float = 10000.0):
    config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, rope_theta=theta)
    dummy = torch.zeros(1, dtype=torch.float32)
    return LlamaRotaryEmbedding(config)(dummy, positions)  # (B, T, d) each


# ----------------------------------------------------------------------------------- 2.1 RMSNorm
def test_rms_norm_forward_hand_computed(impl):
    """[3, 4] 的 RMSNorm（weight 为 1）：除以 sqrt((9 + 16) / 2)"""
    got = impl.rms_norm_forward(RMSNorm(2, eps=0.0), torch.tensor([[3.0, 4.0]]))
    rms = math.sqrt(12.5)
    check_close(got, torch.tensor([[3 / rms, 4 / rms]]),
                "RMSNorm: y = x / sqrt(mean(x**2) + eps) * weight, the mean taken over the last dimension")


def test_rms_norm_forward_no_mean_subtraction(impl):
    """常数向量不会变成零（RMSNorm 不是 LayerNorm）"""
    got = impl.rms_norm_forward(RMSNorm(4, eps=0.0), torch.full((1, 4), 2.0))
    check_close(got, torch.ones(1, 4), "RMSNorm 不减均值：[2, 2, 2, 2] 应变成 [1, 1, 1, 1]")


def test_rms_norm_forward_matches_transformers(impl, gen):
    """与 transformers 的 LlamaRMSNorm 输出相同（随机的 weight 和输入）"""
    ours, theirs = _norm_pair()
    x = torch.randn(2, 5, 8, generator=gen)
    check_close(impl.rms_norm_forward(ours, x), theirs(x),
                "与 LlamaRMSNorm 不一致：用了 self.eps 吗？乘了 self.weight 吗？均值是在最后一维上取的吗？")


def test_rms_norm_forward_half_precision(impl, gen):
    """bfloat16 输入：和 LlamaRMSNorm 一样在 float32 里计算，以 bfloat16 返回"""
    ours, theirs = _norm_pair()
    ours, theirs = ours.to(torch.bfloat16), theirs.to(torch.bfloat16)
    x = (torch.randn(2, 3, 8, generator=gen) * 300).to(torch.bfloat16)
    got = impl.rms_norm_forward(ours, x)
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bfloat16:
        raise AssertionError(f"输出 dtype 应与输入相同（bfloat16），得到 {getattr(got, 'dtype', type(got))}")
    check_close(got, theirs(x), "先 x.float() 算均方，归一化后 .to(x.dtype)，最后乘 weight", atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------- 2.2 frequencies
def test_default_inv_freq_hand_computed(impl):
    """dim=4、base=100 时，theta = [100^0, 100^(-2/4)] = [1, 0.1]"""
    check_close(impl.default_inv_freq(4, 100.0), torch.tensor([1.0, 0.1]),
                "theta_i = base ** (-2i / dim)，i = 0 .. dim/2 - 1")


def test_default_inv_freq_matches_transformers(impl):
    """频率与 LlamaRotaryEmbedding 的相同（head_dim 64，rope_theta 10000）"""
    config = LlamaConfig(hidden_size=512, num_attention_heads=8, rope_theta=10000.0)
    check_close(impl.default_inv_freq(64, 10000.0), LlamaRotaryEmbedding(config).inv_freq,
                "与 LlamaRotaryEmbedding.inv_freq 对照：形状 (dim/2,)，float32")


# ----------------------------------------------------------------------------------- 2.3 rotate_half
def test_rotate_half_hand_computed(impl):
    """rotate_half([1, 2, 3, 4]) 等于 [-3, -4, 1, 2]"""
    check_close(impl.rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-3.0, -4.0, 1.0, 2.0]),
                "切成两半 x1 = [1, 2]、x2 = [3, 4]，返回 cat(-x2, x1)：注意是两半，不是相邻两个元素交替")


def test_rotate_half_matches_transformers(impl, gen):
    """在 (B, heads, T, d) 的张量上与 transformers 的 rotate_half 相同"""
    x = torch.randn(2, 3, 5, 8, generator=gen)
    check_close(impl.rotate_half(x), hf_rotate_half(x), "只在最后一维上切分与拼接")


# ----------------------------------------------------------------------------------- 2.4 apply_rotary
def test_apply_rotary_matches_transformers(impl, gen):
    """用 LlamaRotaryEmbedding 的 cos/sin 时，与 transformers 的 apply_rotary_pos_emb 相同"""
    q = torch.randn(2, 4, 6, 16, generator=gen)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12]])
    cos, sin = _hf_cos_sin(16, positions)
    expected, _ = apply_rotary_pos_emb(q, q, cos, sin)
    check_close(impl.apply_rotary(q, cos, sin), expected,
                "x * cos + rotate_half(x) * sin，cos/sin 要先在 head 维上 unsqueeze(1) 才能广播到 (B, heads, T, d)")


def test_apply_rotary_position_zero_is_identity(impl, gen):
    """位置 0 的旋转角为 0：向量不变"""
    x = torch.randn(1, 2, 1, 8, generator=gen)
    cos, sin = torch.ones(1, 1, 8), torch.zeros(1, 1, 8)
    check_close(impl.apply_rotary(x, cos, sin), x, "cos = 1、sin = 0 时结果应等于输入")


def test_apply_rotary_relative_position(impl, gen):
    """<R_m q, R_n k> 只取决于 m - n（RoPE 正是为此而设计）"""
    q, k = torch.randn(1, 1, 1, 8, generator=gen), torch.randn(1, 1, 1, 8, generator=gen)

    def score(m: int, n: int) -> torch.Tensor:
        cos_m, sin_m = _hf_cos_sin(8, torch.tensor([[m]]))
        cos_n, sin_n = _hf_cos_sin(8, torch.tensor([[n]]))
        return (impl.apply_rotary(q, cos_m, sin_m) * impl.apply_rotary(k, cos_n, sin_n)).sum()

    check_close(score(7, 3).reshape(1), score(104, 100).reshape(1),
                "旋转后 q·k 只应依赖相对位置 m - n：检查正负号（x1 cos - x2 sin, x2 cos + x1 sin）", atol=1e-4)
