"""Lesson 3 (masks, GQA attention) against transformers, PyTorch's fused attention and masks written by loops."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward as gpt_oss_attention
from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

from .helpers import check_close

LESSON = 3


def _loop_mask(padding: list[list[int]] | None, T: int, S: int, window: int | None = None) -> torch.Tensor:
    """The rules of Exercise 3.2 written as plain loops, one (query, key) pair at a time."""
    rows = padding if padding is not None else [[1] * S]
    out = torch.zeros(len(rows), 1, T, S, dtype=torch.bool)
    for b, row in enumerate(rows):
        for i in range(T):
            q_pos = S - T + i
            for j in range(S):
                ok = j <= q_pos and row[j] == 1 and (window is None or j > q_pos - window)
                out[b, 0, i, j] = ok or j == q_pos
    return out


# ----------------------------------------------------------------------------------- 3.1 repeat_kv
def test_repeat_kv_order(impl):
    """头 [a, b] 各重复两次得 [a, a, b, b]，而不是 [a, b, a, b]"""
    x = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)  # (B=1, n_kv=2, S=1, d=1)
    check_close(impl.repeat_kv(x, 2), torch.tensor([1.0, 1.0, 2.0, 2.0]).view(1, 4, 1, 1),
                "query 头 i 用 kv 头 i // n_rep，所以每个 kv 头要连续重复：repeat_interleave(n_rep, dim=1)")


@pytest.mark.parametrize("n_rep", [1, 3])
def test_repeat_kv_matches_transformers(impl, gen, n_rep):
    """在 (B, n_kv, S, d) 上与 transformers 的 repeat_kv 相同"""
    x = torch.randn(2, 2, 5, 4, generator=gen)
    check_close(impl.repeat_kv(x, n_rep), hf_repeat_kv(x, n_rep), "沿第 1 维（头）复制，其余维度不变")


# ----------------------------------------------------------------------------------- 3.2 the mask
def test_build_attention_mask_causal(impl):
    """没有 padding、4 个新 token：下三角"""
    got = impl.build_attention_mask(None, 4, 4, torch.device("cpu"))
    check_close(got, _loop_mask(None, 4, 4), "因果掩码：query i 只能看 key j <= i（下三角，含对角线）")


def test_build_attention_mask_left_padding(impl):
    """左侧 padding：没有 query 能看到 padding 的 key（但 padding 位置的 query 能看到自己）"""
    padding = [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    got = impl.build_attention_mask(torch.tensor(padding), 5, 5, torch.device("cpu"))
    check_close(got, _loop_mask(padding, 5, 5),
                "padding 的 key（attention_mask 为 0）谁也不能看；每个 query 总能看到自己；形状 (B, 1, T, S)")


def test_build_attention_mask_with_cache(impl):
    """缓存了 3 个 key 之后来了 2 个新 query：它们的位置是 3 和 4"""
    padding = [[0, 1, 1, 1, 1]]
    got = impl.build_attention_mask(torch.tensor(padding), 2, 5, torch.device("cpu"))
    check_close(got, _loop_mask(padding, 2, 5), "有缓存时 query i 的位置是 S - T + i，不是 i")


def test_build_attention_mask_sliding_window(impl):
    """sliding_window=2：每个 query 只看到自己和它前面的一个 key"""
    got = impl.build_attention_mask(None, 5, 5, torch.device("cpu"), sliding_window=2)
    check_close(got, _loop_mask(None, 5, 5, window=2), "窗口：只看 q_pos - window < j <= q_pos 的 key")


def test_build_attention_mask_single_token(impl):
    """没有 padding 时，单个新 token 能看到所有 key：返回 None 或全为 True"""
    got = impl.build_attention_mask(None, 1, 6, torch.device("cpu"))
    if got is not None:
        check_close(got.expand(1, 1, 1, 6), torch.ones(1, 1, 1, 6, dtype=torch.bool),
                    "单个新 token（最新的位置）可以看所有 key")


def test_build_attention_mask_wrong_length(impl):
    """padding 掩码没有覆盖全部 S 个位置时要报错"""
    with pytest.raises(ValueError):
        impl.build_attention_mask(torch.ones(1, 3), 1, 5, torch.device("cpu"))


# ----------------------------------------------------------------------------------- 3.3 attention
def test_eager_attention_matches_sdpa_gqa(impl, gen):
    """GQA（6 个 query 头、2 个 kv 头）加因果 + padding 掩码，与 F.scaled_dot_product_attention 对照"""
    q = torch.randn(2, 6, 5, 8, generator=gen)
    k, v = torch.randn(2, 2, 5, 8, generator=gen), torch.randn(2, 2, 5, 8, generator=gen)
    mask = _loop_mask([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], 5, 5)
    expected = F.scaled_dot_product_attention(q, hf_repeat_kv(k, 3), hf_repeat_kv(v, 3), attn_mask=mask,
                                              scale=0.3)
    check_close(impl.eager_attention(q, k, v, mask, 0.3), expected,
                "softmax(q @ k.transpose(-2, -1) * scale，mask 为 False 处填 -inf) @ v；k、v 先 repeat_kv 到 n_heads 个头")


def test_eager_attention_no_mask(impl, gen):
    """mask=None：每个 query 都能看到所有 key（带缓存的一步解码）"""
    q, k, v = (torch.randn(1, 2, 1, 4, generator=gen), torch.randn(1, 2, 7, 4, generator=gen),
               torch.randn(1, 2, 7, 4, generator=gen))
    expected = torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1) @ v
    check_close(impl.eager_attention(q, k, v, None, 0.5), expected, "mask 为 None 时不遮挡任何位置")


def test_eager_attention_one_key_copies_value(impl, gen):
    """只能看 key 0 的 query，输出恰好是 value 0"""
    q, k, v = (torch.randn(1, 1, 3, 4, generator=gen), torch.randn(1, 1, 3, 4, generator=gen),
               torch.randn(1, 1, 3, 4, generator=gen))
    out = impl.eager_attention(q, k, v, _loop_mask(None, 3, 3), 1.0)
    check_close(out[:, :, 0], v[:, :, 0], "第一个 query 只能看第一个 key：softmax 权重是 [1, 0, 0]，输出就是 v[0]")


def test_eager_attention_with_sinks(impl, gen):
    """GPT-OSS 的 attention sinks：每个头在 softmax 里多一列，算完再去掉（对照 transformers 的 GPT-OSS）"""
    q = torch.randn(1, 4, 3, 8, generator=gen)
    k, v = torch.randn(1, 2, 3, 8, generator=gen), torch.randn(1, 2, 3, 8, generator=gen)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    mask = _loop_mask(None, 3, 3)
    module = SimpleNamespace(num_key_value_groups=2, sinks=sinks, training=False)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    expected, _ = gpt_oss_attention(module, q, k, v, additive, 0.35)
    check_close(impl.eager_attention(q, k, v, mask, 0.35, sinks), expected.transpose(1, 2),
                "sinks：把 sinks.view(1, n_heads, 1, 1) 扩展成一列拼在分数最后，softmax 后去掉这一列再乘 v")


# ----------------------------------------------------------------------------------- 3.4 the attention module
def _hf_attention(seed: int = 0):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, vocab_size=10)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    attention = LlamaAttention(config, 0).eval()
    return attention, LlamaRotaryEmbedding(config)


def _weights(attention):
    return (attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight, attention.o_proj.weight)


def _additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))


def test_attention_forward_matches_transformers(impl, gen):
    """与 transformers 的 LlamaAttention 输出相同（4 个 query 头、2 个 kv 头、因果掩码）"""
    attention, rotary = _hf_attention()
    x = torch.randn(2, 5, 32, generator=gen)
    cos, sin = rotary(x, torch.arange(5)[None].expand(2, 5))
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        expected = attention(x, (cos, sin), _additive(causal))[0]
        got = impl.attention_forward(x, *_weights(attention), 4, 2, cos, sin, causal)
    if not isinstance(got, tuple) or len(got) != 2:
        raise AssertionError("返回 (输出, (keys, values))")
    check_close(got[0], expected, "投影 → 拆头 → RoPE → GQA 重复 kv 头 → softmax(qkᵀ/√d + 掩码)·v → 合并头 → o_proj",
                atol=1e-5)
    keys, values = got[1]
    if tuple(keys.shape) != (2, 2, 5, 8) or tuple(values.shape) != (2, 2, 5, 8):
        raise AssertionError(f"返回的 keys、values 应为 (B, n_kv, T, d) = (2, 2, 5, 8)（GQA 重复之前），"
                             f"得到 {tuple(keys.shape)}、{tuple(values.shape)}")


def test_attention_forward_with_past_kv(impl, gen):
    """先预填充 3 个 token，再带 past_kv 输入 2 个：输出与 5 个一次算完相同"""
    attention, rotary = _hf_attention(1)
    x = torch.randn(1, 5, 32, generator=gen)
    cos, sin = rotary(x, torch.arange(5)[None])
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        expected = attention(x, (cos, sin), _additive(causal))[0]
        first, past = impl.attention_forward(x[:, :3], *_weights(attention), 4, 2, cos[:, :3], sin[:, :3],
                                             causal[..., :3, :3])
        second, _ = impl.attention_forward(x[:, 3:], *_weights(attention), 4, 2, cos[:, 3:], sin[:, 3:],
                                           causal[..., 3:, :], past)
    check_close(torch.cat([first, second], dim=1), expected,
                "有 past_kv 时把新的 k、v 接在缓存后面（dim=2），query 只有新的 2 个位置，key 有全部 5 个", atol=1e-5)
