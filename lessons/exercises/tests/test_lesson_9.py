"""Lesson 9 (GGUF rows, MXFP4, MoE routing) against transformers' GGUF converter, its MXFP4 decoder and its
GPT-OSS router, and hand-computed cases."""

from __future__ import annotations

import numpy as np
import torch
from transformers import GptOssConfig
from transformers.integrations.mxfp4 import convert_moe_packed_tensors
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter

from model import ModelConfig
from model.moe import MoEMLP

from .helpers import check_close

LESSON = 9


# ----------------------------------------------------------------------------------- 9.1 GGUF rows
def test_unpermute_rope_rows_hand_computed(impl):
    """一个头的 4 行按 (0, 2, 1, 3) 存储，还原成 (0, 1, 2, 3)"""
    stored = np.array([[0.0], [2.0], [1.0], [3.0]])
    got = impl.unpermute_rope_rows(stored, 1)
    check_close(torch.as_tensor(np.asarray(got)), torch.tensor([[0.0], [1.0], [2.0], [3.0]]),
                "存储顺序是 (0, h, 1, h+1, ...)：偶数行是前半，奇数行是后半")


def test_unpermute_rope_rows_matches_transformers(impl):
    """3 个头、head_dim 8：还原出的行与 transformers 的 GGUF 加载器相同"""
    rng = np.random.default_rng(0)
    stored = rng.standard_normal((24, 5)).astype(np.float32)
    expected = LlamaTensorProcessor()._reverse_permute_weights(stored.copy(), 3, 3)
    got = impl.unpermute_rope_rows(stored.copy(), 3)
    check_close(torch.as_tensor(np.asarray(got)), torch.as_tensor(expected),
                "每个头单独处理：reshape(num_heads, h, 2, in)，交换中间两维，再 reshape 回去")


# ----------------------------------------------------------------------------------- 9.2 MXFP4
def test_dequantize_mxfp4_hand_made_block(impl):
    """编码 1、2（低 4 位在前）乘缩放 2^1 得 1.0、2.0；编码 15 是 -6"""
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0], blocks[0, 1] = 0x21, 0xF8   # low nibble first: codes 1, 2, then 8, 15
    values = impl.dequantize_mxfp4(blocks, torch.tensor([128], dtype=torch.uint8), torch.float32)
    expected = torch.zeros(32)
    expected[:4] = torch.tensor([1.0, 2.0, -0.0, -12.0])
    check_close(values, expected, "字节 0x21：低 4 位 1 -> 0.5，高 4 位 2 -> 1.0；缩放 2^(128-127) = 2；编码 15 是 -6；"
                "一个块解码成 32 个值")


def test_dequantize_mxfp4_matches_transformers(impl):
    """随机的块和缩放：解码出的值与 transformers 的 convert_moe_packed_tensors 相同"""
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 4, 5, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(100, 150, (3, 4, 5), dtype=torch.uint8, generator=gen)
    expected = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    check_close(impl.dequantize_mxfp4(blocks, scales, torch.float32), expected,
                "值 = FP4_VALUES[编码] * 2^(e - 127)；每块 16 字节 -> 32 个值，低 4 位在前；结果形状 (..., G * 32)")


# ----------------------------------------------------------------------------------- 9.3 routing
def _router_pair(E: int = 6, k: int = 2, H: int = 8):
    config = ModelConfig.from_dict(dict(model_type="gpt_oss", vocab_size=10, hidden_size=H, intermediate_size=4,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                        num_local_experts=E, num_experts_per_tok=k))
    ours = MoEMLP(config)
    theirs = GptOssTopKRouter(GptOssConfig(hidden_size=H, num_local_experts=E, num_experts_per_tok=k))
    with torch.no_grad():
        ours.router.weight.normal_(generator=torch.Generator().manual_seed(1))
        ours.router.bias.normal_(generator=torch.Generator().manual_seed(2))
        theirs.weight.copy_(ours.router.weight)
        theirs.bias.copy_(ours.router.bias)
    return ours, theirs


def test_moe_route_matches_transformers(impl, gen):
    """选出的专家和权重与 transformers 的 GptOssTopKRouter 相同"""
    ours, theirs = _router_pair()
    x = torch.randn(7, 8, generator=gen)
    with torch.no_grad():
        experts, weights = impl.moe_route(ours, x)
        scores, indices = theirs(x)
    check_close(experts, indices, "专家编号：router(x) 上 topk(k) 的下标")
    check_close(weights, torch.gather(scores, 1, indices),
                "权重：只在选中的 k 个 logit 上做 softmax（每行和为 1），不是在全部 E 个上")


def test_moe_route_weights_sum_to_one(impl, gen):
    """每个 token 的 k 个权重之和为 1"""
    ours, _ = _router_pair(E=8, k=3)
    with torch.no_grad():
        _, weights = impl.moe_route(ours, torch.randn(5, 8, generator=gen))
    check_close(weights.sum(-1), torch.ones(5), "softmax 只覆盖选中的 k 个专家，所以每行和为 1")
