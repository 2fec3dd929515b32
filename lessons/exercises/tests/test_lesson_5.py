"""Lesson 5 (KV cache, sampling steps) against transformers' DynamicCache and logits processors,
the numbers of the course text, and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache as HFDynamicCache
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from cache.dynamic import DynamicLayer

from .helpers import check_close, check_equal

LESSON = 5
NEG_INF = float("-inf")


def _scores(gen: torch.Generator, B: int = 3, V: int = 40) -> torch.Tensor:
    return torch.randn(B, V, generator=gen) * 3


# ----------------------------------------------------------------------------------- 5.1 cache update
def test_cache_layer_update_matches_transformers(impl, gen):
    """Three updates (prefill of 4, then 1, then 1) return what transformers' DynamicCache returns"""
    ours, theirs = DynamicLayer(), HFDynamicCache()
    for T in (4, 1, 1):
        k, v = torch.randn(2, 3, T, 8, generator=gen), torch.randn(2, 3, T, 8, generator=gen)
        got = impl.cache_layer_update(ours, k, v)
        expected = theirs.update(k, v, 0)
        if not isinstance(got, tuple) or len(got) != 2:
            raise AssertionError("返回 (keys, values) 两个张量组成的元组")
        check_close(got[0], expected[0], "keys 要沿序列维（dim=-2）拼接在已缓存的后面，并返回全部")
        check_close(got[1], expected[1], "values 同理：torch.cat([self.values, values], dim=-2)")


def test_cache_layer_update_stores_the_result(impl, gen):
    """After two updates self.keys / self.values hold all positions (the layer remembers them)"""
    layer = DynamicLayer()
    k1, v1 = torch.randn(1, 2, 3, 4, generator=gen), torch.randn(1, 2, 3, 4, generator=gen)
    k2, v2 = torch.randn(1, 2, 1, 4, generator=gen), torch.randn(1, 2, 1, 4, generator=gen)
    impl.cache_layer_update(layer, k1, v1)
    impl.cache_layer_update(layer, k2, v2)
    if layer.keys is None:
        raise AssertionError("更新后要把结果存回 self.keys / self.values")
    check_close(layer.keys, torch.cat([k1, k2], dim=2), "第二次更新要接在第一次存下的 keys 后面")
    check_close(layer.values, torch.cat([v1, v2], dim=2), "values 也要存回 self.values")


# ----------------------------------------------------------------------------------- 5.2 memory formula
@pytest.mark.parametrize("kv_heads, expected", [(32, 2 * 1024**3), (8, 512 * 1024**2)])
def test_kv_cache_bytes_course_numbers(impl, kv_heads, expected):
    """LLaMA-7B, batch 1, 4096 tokens, fp16: 2 GiB with 32 kv heads, 512 MiB with GQA (8) -- course section 2.4"""
    got = impl.kv_cache_bytes(32, 1, kv_heads, 4096, 128, torch.float16)
    check_equal(got, expected, "2 × 层数 × batch × kv头数 × seq_len × head_dim × 每元素字节数（fp16 = 2）")


def test_kv_cache_bytes_dtype_size(impl):
    """float32 elements take 4 bytes, bfloat16 2"""
    got = (impl.kv_cache_bytes(2, 3, 4, 5, 6, torch.float32), impl.kv_cache_bytes(2, 3, 4, 5, 6, torch.bfloat16))
    check_equal(got, (2 * 2 * 3 * 4 * 5 * 6 * 4, 2 * 2 * 3 * 4 * 5 * 6 * 2),
                "每元素字节数要由 dtype 得到（例如 torch.tensor([], dtype=dtype).element_size()）")


def test_kv_cache_bytes_measured(impl, gen):
    """Equals the bytes of the tensors a transformers DynamicCache holds"""
    cache = HFDynamicCache()
    for layer in range(3):
        cache.update(torch.randn(2, 4, 7, 16, generator=gen), torch.randn(2, 4, 7, 16, generator=gen), layer)
    measured = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    check_equal(impl.kv_cache_bytes(3, 2, 4, 7, 16, torch.float32), measured, "公式应与实际张量占用的字节数相同")


# ----------------------------------------------------------------------------------- 5.3 temperature
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_temperature_scale_matches_transformers(impl, gen, temperature):
    """Same as transformers' TemperatureLogitsWarper"""
    scores = _scores(gen)
    expected = TemperatureLogitsWarper(temperature)(None, scores.clone())
    check_close(impl.temperature_scale(scores, temperature), expected, "温度是除法：scores / temperature")


def test_temperature_scale_limits(impl):
    """T -> 0 tends to one-hot, large T to uniform (course section 3.2)"""
    scores = torch.tensor([[2.0, 1.0, 0.0]])
    cold = impl.temperature_scale(scores, 0.01).softmax(-1)
    hot = impl.temperature_scale(scores, 1000.0).softmax(-1)
    check_close(cold, torch.tensor([[1.0, 0.0, 0.0]]), "T 很小时分布应接近 one-hot", atol=1e-4)
    check_close(hot, torch.full((1, 3), 1 / 3), "T 很大时分布应接近均匀", atol=1e-2)


# ----------------------------------------------------------------------------------- 5.4 top-k
@pytest.mark.parametrize("top_k", [1, 5, 39])
def test_top_k_filter_matches_transformers(impl, gen, top_k):
    """Same as transformers' TopKLogitsWarper"""
    scores = _scores(gen)
    expected = TopKLogitsWarper(top_k)(None, scores.clone())
    check_close(impl.top_k_filter(scores, top_k), expected, "保留每行最大的 k 个（torch.topk），其余设为 -inf")


def test_top_k_filter_hand_computed(impl):
    """k=2 of [1, 3, 2, 3]: the tie at 3 keeps both 3s"""
    got = impl.top_k_filter(torch.tensor([[1.0, 3.0, 2.0, 3.0]]), 2)
    check_close(got, torch.tensor([[NEG_INF, 3.0, NEG_INF, 3.0]]), "第 k 名的分数是阈值，比它小的才去掉")


def test_top_k_filter_min_tokens_to_keep(impl, gen):
    """min_tokens_to_keep raises k"""
    scores = _scores(gen)
    expected = TopKLogitsWarper(2, min_tokens_to_keep=4)(None, scores.clone())
    check_close(impl.top_k_filter(scores, 2, min_tokens_to_keep=4), expected,
                "k = max(top_k, min_tokens_to_keep)，且不超过词表大小")


# ----------------------------------------------------------------------------------- 5.5 top-p
@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95])
def test_top_p_filter_matches_transformers(impl, gen, top_p):
    """Same as transformers' TopPLogitsWarper"""
    scores = _scores(gen)
    expected = TopPLogitsWarper(top_p)(None, scores.clone())
    check_close(impl.top_p_filter(scores, top_p), expected,
                "升序排序 -> softmax -> cumsum；累积和 <= 1 - top_p 的去掉；再用 scatter 放回原来的顺序")


def test_top_p_filter_course_examples(impl):
    """Distribution A keeps 1 token, distribution B keeps 3 (course section 3.4, p = 0.85)"""
    probs = torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.1, 0.2, 0.4, 0.3]])
    kept = impl.top_p_filter(probs.log(), 0.85) > NEG_INF
    check_close(kept, torch.tensor([[True, False, False, False], [False, True, True, True]]),
                "分布 A [0.9, ...] 只需第一个就够 0.85；分布 B 需要 0.4 + 0.3 + 0.2")


def test_top_p_filter_min_tokens_to_keep(impl, gen):
    """The best min_tokens_to_keep tokens always stay"""
    scores = _scores(gen) * 5
    expected = TopPLogitsWarper(0.1, min_tokens_to_keep=3)(None, scores.clone())
    check_close(impl.top_p_filter(scores, 0.1, min_tokens_to_keep=3), expected,
                "排序后最好的 min_tokens_to_keep 个（升序时在末尾）不能去掉")


# ----------------------------------------------------------------------------------- 5.6 repetition
def test_repetition_penalty_hand_computed(impl):
    """penalty 2: a positive score is halved, a negative one doubled, an unseen one untouched"""
    scores = torch.tensor([[4.0, -1.0, 3.0, 0.5]])
    got = impl.repetition_penalty(scores, torch.tensor([[0, 1, 1]]), 2.0)
    check_close(got, torch.tensor([[2.0, -2.0, 3.0, 0.5]]),
                "出现过的 token：正分数 / penalty，负分数 * penalty；重复出现也只罚一次；没出现过的不变")


def test_repetition_penalty_matches_transformers(impl, gen):
    """Same as transformers' RepetitionPenaltyLogitsProcessor on a batch"""
    scores = _scores(gen)
    input_ids = torch.randint(0, 40, (3, 12), generator=gen)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(input_ids, scores.clone())
    check_close(impl.repetition_penalty(scores, input_ids, 1.3), expected, "每一行只看这一行自己的 input_ids")


def test_repetition_penalty_does_not_modify_its_input(impl, gen):
    """The input scores are left as they were (a step returns a new tensor)"""
    scores = _scores(gen)
    before = scores.clone()
    impl.repetition_penalty(scores, torch.tensor([[1, 2], [3, 4], [5, 6]]), 1.5)
    check_close(scores, before, "不要原地修改传入的 scores：用 scatter（不是 scatter_）返回新张量")
