"""Lesson 4 (the block, positions) against transformers' LlamaMLP / LlamaDecoderLayer and hand-computed cases."""

from __future__ import annotations

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaMLP, LlamaRotaryEmbedding

from cache import DynamicCache
from model import ModelConfig
from model.layers import DecoderBlock, SwiGLU

from .helpers import check_close

LESSON = 4

SETTINGS = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2)


def _pair(ours_cls, theirs_cls, seed: int = 0):
    """Our module and transformers' one with the same random weights (the parameter names are the same)."""
    hf_config = LlamaConfig(**SETTINGS)
    hf_config._attn_implementation = "eager"
    theirs = theirs_cls(hf_config, 0) if theirs_cls is LlamaDecoderLayer else theirs_cls(hf_config)
    torch.manual_seed(seed)
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.3)
    config = ModelConfig(**SETTINGS)
    ours = ours_cls(config, 0) if ours_cls is DecoderBlock else ours_cls(config)
    ours.load_state_dict(theirs.state_dict())
    return ours.eval(), theirs.eval(), hf_config


def _additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))


# ----------------------------------------------------------------------------------- 4.1 SwiGLU
def test_swiglu_forward_matches_transformers(impl, gen):
    """权重相同时，与 transformers 的 LlamaMLP 输出相同"""
    ours, theirs, _ = _pair(SwiGLU, LlamaMLP)
    x = torch.randn(2, 3, 32, generator=gen)
    with torch.no_grad():
        check_close(impl.swiglu_forward(ours, x), theirs(x),
                    "down_proj(silu(gate_proj(x)) * up_proj(x))：silu 只作用在 gate 一支上", atol=1e-4)


# ----------------------------------------------------------------------------------- 4.2 the block
def test_decoder_block_forward_matches_transformers(impl, gen):
    """与 transformers 的 LlamaDecoderLayer 输出相同（因果掩码、GQA）"""
    ours, theirs, hf_config = _pair(DecoderBlock, LlamaDecoderLayer)
    x = torch.randn(2, 5, 32, generator=gen)
    positions = torch.arange(5)[None].expand(2, 5)
    cos, sin = LlamaRotaryEmbedding(hf_config)(x, positions)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        expected = theirs(x, attention_mask=_additive(causal), position_embeddings=(cos, sin))
        got = impl.decoder_block_forward(ours, x, cos, sin, causal)
    check_close(got, expected, "x + attn(norm1(x))，然后 h + mlp(norm2(h))：残差加的是归一化之前的值", atol=1e-4)


def test_decoder_block_forward_passes_the_cache(impl, gen):
    """先把 3 个 token 预填充进缓存，再输入 2 个：输出与 5 个一次算完相同"""
    ours, theirs, hf_config = _pair(DecoderBlock, LlamaDecoderLayer)
    x = torch.randn(1, 5, 32, generator=gen)
    cos, sin = LlamaRotaryEmbedding(hf_config)(x, torch.arange(5)[None])
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        expected = theirs(x, attention_mask=_additive(causal), position_embeddings=(cos, sin))
        cache = DynamicCache()
        first = impl.decoder_block_forward(ours, x[:, :3], cos[:, :3], sin[:, :3], causal[..., :3, :3], cache)
        second = impl.decoder_block_forward(ours, x[:, 3:], cos[:, 3:], sin[:, 3:], causal[..., 3:, :], cache)
    check_close(torch.cat([first, second], dim=1), expected,
                "把 cache 传给 self_attn(..., mask, cache)：第二次调用的注意力要看到缓存里的前 3 个 key", atol=1e-4)


# ----------------------------------------------------------------------------------- 4.3 positions
def test_default_position_ids_no_mask(impl):
    """没有 mask、缓存里有 3 个 token、新来 2 个：位置是 [[3, 4]]"""
    got = impl.default_position_ids(None, 3, 2, torch.device("cpu"))
    check_close(got, torch.tensor([[3, 4]]), "没有 mask 时位置从 past_length 开始连续编号，形状 (1, new_length)")


def test_default_position_ids_left_padding(impl):
    """左侧 padding：每行第一个真实 token 的位置是 0"""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = impl.default_position_ids(mask, 0, 5, torch.device("cpu"))
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    if not isinstance(got, torch.Tensor) or got.shape != (2, 5):
        raise AssertionError(f"形状应为 (B, new_length) = (2, 5)，得到 {getattr(got, 'shape', type(got))}")
    real = mask.bool()
    check_close(got[real], expected[real], "每行真实 token 的位置 = 它前面（含自己）真实 token 的个数 - 1：mask.cumsum(-1) - 1")


def test_default_position_ids_decode_step(impl):
    """带 padding 的提示词之后的一个新 token：它的位置只数真实 token"""
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    got = impl.default_position_ids(mask, 3, 1, torch.device("cpu"))
    check_close(got, torch.tensor([[2], [3]]), "只返回最后 new_length 列；padding 不计入位置")


# ----------------------------------------------------------------------------------- 4.4 the whole forward
def _hf_model(seed: int, **overrides):
    from transformers import LlamaForCausalLM

    settings = {**SETTINGS, "num_hidden_layers": 2, "rope_theta": 500.0, "rms_norm_eps": 1e-5, **overrides}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.ndim == 2 else p.uniform_(0.5, 1.5)   # norms too: a wrong norm shows
    return model, settings


def test_causal_lm_forward_matches_transformers(impl, gen):
    """由 state_dict 算出的 logits 与 transformers 的 LlamaForCausalLM 相同（2 层、GQA、输出头不共享权重）"""
    model, settings = _hf_model(0)
    ids = torch.randint(0, 50, (2, 7), generator=gen)
    with torch.no_grad():
        got = impl.causal_lm_forward(dict(model.state_dict()), settings, ids)
        expected = model(ids).logits
    check_close(got, expected, "embedding → 每层 [RMSNorm → 注意力(RoPE, GQA, 因果) → 残差，RMSNorm → SwiGLU → 残差]"
                " → 最终 RMSNorm → lm_head；RoPE 用 config['rope_theta']", atol=1e-4, rtol=1e-4)


def test_causal_lm_forward_tied_head(impl, gen):
    """tie_word_embeddings 时没有 lm_head.weight：embedding 矩阵就是输出头"""
    model, settings = _hf_model(1, tie_word_embeddings=True)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ids = torch.randint(0, 50, (1, 6), generator=gen)
    with torch.no_grad():
        got = impl.causal_lm_forward(state, settings, ids)
        expected = model(ids).logits
    check_close(got, expected, "state_dict 里没有 lm_head.weight 时，用 model.embed_tokens.weight 作输出投影（权重共享）",
                atol=1e-4, rtol=1e-4)
