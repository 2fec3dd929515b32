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
    """三次更新（先预填充 4 个，再 1 个、1 个）的返回值与 transformers 的 DynamicCache 相同"""
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
    """两次更新之后 self.keys / self.values 存着全部位置（这一层记住了它们）"""
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
    """LLaMA-7B、batch 1、4096 个 token、fp16：32 个 kv 头是 2 GiB，GQA（8 个）是 512 MiB（课时5 第 2.4 节）"""
    got = impl.kv_cache_bytes(32, 1, kv_heads, 4096, 128, torch.float16)
    check_equal(got, expected, "2 × 层数 × batch × kv头数 × seq_len × head_dim × 每元素字节数（fp16 = 2）")


def test_kv_cache_bytes_dtype_size(impl):
    """float32 每个元素占 4 字节，bfloat16 占 2 字节"""
    got = (impl.kv_cache_bytes(2, 3, 4, 5, 6, torch.float32), impl.kv_cache_bytes(2, 3, 4, 5, 6, torch.bfloat16))
    check_equal(got, (2 * 2 * 3 * 4 * 5 * 6 * 4, 2 * 2 * 3 * 4 * 5 * 6 * 2),
                "每元素字节数要由 dtype 得到（例如 torch.tensor([], dtype=dtype).element_size()）")


def test_kv_cache_bytes_measured(impl, gen):
    """等于 transformers 的 DynamicCache 里张量实际占的字节数"""
    cache = HFDynamicCache()
    for layer in range(3):
        cache.update(torch.randn(2, 4, 7, 16, generator=gen), torch.randn(2, 4, 7, 16, generator=gen), layer)
    measured = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    check_equal(impl.kv_cache_bytes(3, 2, 4, 7, 16, torch.float32), measured, "公式应与实际张量占用的字节数相同")


# ----------------------------------------------------------------------------------- 5.3 temperature
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_temperature_scale_matches_transformers(impl, gen, temperature):
    """与 transformers 的 TemperatureLogitsWarper 相同"""
    scores = _scores(gen)
    expected = TemperatureLogitsWarper(temperature)(None, scores.clone())
    check_close(impl.temperature_scale(scores, temperature), expected, "温度是除法：scores / temperature")


def test_temperature_scale_limits(impl):
    """T → 0 时趋于 one-hot，T 很大时趋于均匀分布（课时5 第 3.2 节）"""
    scores = torch.tensor([[2.0, 1.0, 0.0]])
    cold = impl.temperature_scale(scores, 0.01).softmax(-1)
    hot = impl.temperature_scale(scores, 1000.0).softmax(-1)
    check_close(cold, torch.tensor([[1.0, 0.0, 0.0]]), "T 很小时分布应接近 one-hot", atol=1e-4)
    check_close(hot, torch.full((1, 3), 1 / 3), "T 很大时分布应接近均匀", atol=1e-2)


# ----------------------------------------------------------------------------------- 5.4 top-k
@pytest.mark.parametrize("top_k", [1, 5, 39])
def test_top_k_filter_matches_transformers(impl, gen, top_k):
    """与 transformers 的 TopKLogitsWarper 相同"""
    scores = _scores(gen)
    expected = TopKLogitsWarper(top_k)(None, scores.clone())
    check_close(impl.top_k_filter(scores, top_k), expected, "保留每行最大的 k 个（torch.topk），其余设为 -inf")


def test_top_k_filter_hand_computed(impl):
    """[1, 3, 2, 3] 取 k=2：并列的两个 3 都保留"""
    got = impl.top_k_filter(torch.tensor([[1.0, 3.0, 2.0, 3.0]]), 2)
    check_close(got, torch.tensor([[NEG_INF, 3.0, NEG_INF, 3.0]]), "第 k 名的分数是阈值，比它小的才去掉")


def test_top_k_filter_min_tokens_to_keep(impl, gen):
    """min_tokens_to_keep 比 k 大时，保留 min_tokens_to_keep 个"""
    scores = _scores(gen)
    expected = TopKLogitsWarper(2, min_tokens_to_keep=4)(None, scores.clone())
    check_close(impl.top_k_filter(scores, 2, min_tokens_to_keep=4), expected,
                "k = max(top_k, min_tokens_to_keep)，且不超过词表大小")


# ----------------------------------------------------------------------------------- 5.5 top-p
@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95])
def test_top_p_filter_matches_transformers(impl, gen, top_p):
    """与 transformers 的 TopPLogitsWarper 相同"""
    scores = _scores(gen)
    expected = TopPLogitsWarper(top_p)(None, scores.clone())
    check_close(impl.top_p_filter(scores, top_p), expected,
                "升序排序 -> softmax -> cumsum；累积和 <= 1 - top_p 的去掉；再用 scatter 放回原来的顺序")


def test_top_p_filter_course_examples(impl):
    """分布 A 保留 1 个 token，分布 B 保留 3 个（课时5 第 3.4 节，p = 0.85）"""
    probs = torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.1, 0.2, 0.4, 0.3]])
    kept = impl.top_p_filter(probs.log(), 0.85) > NEG_INF
    check_close(kept, torch.tensor([[True, False, False, False], [False, True, True, True]]),
                "分布 A [0.9, ...] 只需第一个就够 0.85；分布 B 需要 0.4 + 0.3 + 0.2")


def test_top_p_filter_min_tokens_to_keep(impl, gen):
    """最好的 min_tokens_to_keep 个 token 总会留下"""
    scores = _scores(gen) * 5
    expected = TopPLogitsWarper(0.1, min_tokens_to_keep=3)(None, scores.clone())
    check_close(impl.top_p_filter(scores, 0.1, min_tokens_to_keep=3), expected,
                "排序后最好的 min_tokens_to_keep 个（升序时在末尾）不能去掉")


# ----------------------------------------------------------------------------------- 5.6 repetition
def test_repetition_penalty_hand_computed(impl):
    """penalty 2：出现过的 token，正分数减半、负分数加倍；没出现过的不变"""
    scores = torch.tensor([[4.0, -1.0, 3.0, 0.5]])
    got = impl.repetition_penalty(scores, torch.tensor([[0, 1, 1]]), 2.0)
    check_close(got, torch.tensor([[2.0, -2.0, 3.0, 0.5]]),
                "出现过的 token：正分数 / penalty，负分数 * penalty；重复出现也只罚一次；没出现过的不变")


def test_repetition_penalty_matches_transformers(impl, gen):
    """在一个 batch 上与 transformers 的 RepetitionPenaltyLogitsProcessor 相同"""
    scores = _scores(gen)
    input_ids = torch.randint(0, 40, (3, 12), generator=gen)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(input_ids, scores.clone())
    check_close(impl.repetition_penalty(scores, input_ids, 1.3), expected, "每一行只看这一行自己的 input_ids")


def test_repetition_penalty_does_not_modify_its_input(impl, gen):
    """传入的 scores 保持原样（步骤函数返回新张量）"""
    scores = _scores(gen)
    before = scores.clone()
    impl.repetition_penalty(scores, torch.tensor([[1, 2], [3, 4], [5, 6]]), 1.5)
    check_close(scores, before, "不要原地修改传入的 scores：用 scatter（不是 scatter_）返回新张量")


# ----------------------------------------------------------------------------------- 5.7 min-p
def test_min_p_filter_matches_transformers(impl, gen):
    """与 transformers 的 MinPLogitsWarper 分数相同（min_p = 0.1 和 0.3）"""
    from transformers.generation.logits_process import MinPLogitsWarper

    scores = _scores(gen)
    for min_p in (0.1, 0.3):
        expected = MinPLogitsWarper(min_p)(None, scores.clone())
        check_close(impl.min_p_filter(scores, min_p), expected,
                    "概率 < min_p × 每行最大概率 的 token 设为 -inf；概率用 softmax(scores)")


def test_min_p_filter_keeps_min_tokens(impl):
    """min_tokens_to_keep=2：即使第二名远低于 min_p × 最大概率，也保留最好的两个"""
    scores = torch.tensor([[10.0, 0.0, -1.0, 5.0]])
    got = impl.min_p_filter(scores, 0.5, min_tokens_to_keep=2)
    check_close(got, torch.tensor([[10.0, NEG_INF, NEG_INF, 5.0]]), "最好的 min_tokens_to_keep 个 token 总是保留")


# ----------------------------------------------------------------------------------- 5.8 generate with a cache
def _greedy_by_full_forward(hf_model, ids: torch.Tensor, n: int) -> list[int]:
    """The oracle: transformers' model, the whole sequence every step, argmax."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            token = int(hf_model(ids).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def test_generate_with_cache_greedy_matches_transformers(impl):
    """贪心：与每步都把整个序列送进 transformers 模型的结果逐 token 相同"""
    from .helpers import tiny_llama_pair

    ours, theirs = tiny_llama_pair(0)
    ids = torch.tensor([[1, 5, 9, 13, 7]])
    got = impl.generate_with_cache(ours, ids, max_new_tokens=10)
    check_equal(got.tolist() if isinstance(got, torch.Tensor) else got, [_greedy_by_full_forward(theirs, ids, 10)],
                "贪心：每步取 logits[:, -1] 的 argmax；返回新 token，形状 (1, n)")


def test_generate_with_cache_feeds_only_new_tokens(impl):
    """有缓存时模型只看一次提示词，之后每步只看一个 token（共 T + n - 1 个 token、n 次调用）"""
    from .helpers import CountingModel, tiny_llama_pair

    ours, _ = tiny_llama_pair(0)
    counting = CountingModel(ours)
    ids = torch.tensor([[1, 5, 9, 13, 7]])
    impl.generate_with_cache(counting, ids, max_new_tokens=6)
    check_equal((counting.calls, counting.tokens_fed), (6, 5 + 6 - 1),
                "第一步 prefill 整个提示词，之后每步只把新 token 送进模型（cache=cache），共 n 次前向")


def test_generate_with_cache_stops_at_eos(impl):
    """生成 eos_token_id 后立即停止，EOS 本身留在输出里"""
    from .helpers import tiny_llama_pair

    ours, theirs = tiny_llama_pair(2)
    ids = torch.tensor([[1, 4, 4, 8]])
    full = _greedy_by_full_forward(theirs, ids, 12)
    k = next(i for i in range(2, 12) if full[i] not in full[:i])   # a token that first appears at step k
    got = impl.generate_with_cache(ours, ids, max_new_tokens=12, eos_token_id=full[k])
    check_equal(got.tolist() if isinstance(got, torch.Tensor) else got, [full[:k + 1]],
                "生成了 eos_token_id 就停止（EOS 本身也在输出里）")


PAD = 0  # TINY_LLAMA's pad_token_id; its eos_token_id is 2
PROMPTS = [[1, 5, 9, 13, 7, 3], [1, 8, 11], [1, 4, 4, 8, 20]]  # three lengths: rows 1 and 2 are left-padded


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask (B, T) with the padding on the left, as tokenizers do for generation."""
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _transformers_generate(theirs, ids, mask, seed: int = 0, **options) -> list[list[int]]:
    """The oracle: transformers' generate() on the padded batch; only the new tokens, (B, n) as lists."""
    options = {"top_k": None, "top_p": None, "pad_token_id": PAD, **options}  # no top-k 50 by default
    torch.manual_seed(seed)  # transformers samples with the global generator
    with torch.no_grad():
        out = theirs.generate(ids, attention_mask=mask, **options)
    return out[:, ids.shape[1]:].tolist()


def _first_step(row: list[int], token: int) -> int:
    return row.index(token) if token in row else len(row)


@pytest.mark.parametrize("finish", ["one_row_early", "every_row"])
def test_generate_with_cache_padded_batch_greedy_matches_transformers(impl, finish):
    """左 padding 的一批提示词、贪心、EOS：与 transformers 的 generate() 逐 token 相同"""
    from .helpers import tiny_llama_pair

    ours, theirs = tiny_llama_pair(5)
    ids, mask = _left_padded(PROMPTS)
    n = 10
    alone = [_greedy_by_full_forward(theirs, torch.tensor([p]), n) for p in PROMPTS]  # each prompt by itself
    vocab = sorted({t for row in alone for t in row})
    if finish == "one_row_early":  # EOS: a token only row 0 makes, early; rows 1 and 2 run to max_new_tokens
        eos = next(t for t in vocab if _first_step(alone[0], t) < n // 2 and all(t not in r for r in alone[1:]))
    else:  # EOS: a token every row makes, at different steps; generation ends before max_new_tokens
        eos = next(t for t in vocab if all(t in r for r in alone) and len({r.index(t) for r in alone}) > 1
                   and max(r.index(t) for r in alone) < n - 1)
    expected = _transformers_generate(theirs, ids, mask, max_new_tokens=n, do_sample=False, eos_token_id=eos)
    got = impl.generate_with_cache(ours, ids, max_new_tokens=n, eos_token_id=eos, attention_mask=mask,
                                   pad_token_id=PAD)
    if isinstance(got, torch.Tensor) and got.shape[0] == 3 and got.tolist()[1:] != expected[1:] \
            and got.tolist()[0] == expected[0]:
        raise AssertionError("不带 padding 的第 0 行对了，带左 padding 的第 1、2 行不对：把 attention_mask 传给模型"
                             "（每步都要覆盖缓存里的位置加上新 token，(B, past + 1)），位置编号从 mask 算："
                             "cumsum(mask) - 1，每行第一个真实 token 是位置 0"
                             f"\n(got {got.tolist()!r}, expected {expected!r})")
    check_equal(got.tolist() if isinstance(got, torch.Tensor) else got, expected,
                "每行生成了 eos_token_id 之后只再得到 pad_token_id；所有行都结束了（或到了 max_new_tokens）就停止；"
                "返回新 token，形状 (B, n)")


@pytest.mark.parametrize("options", [dict(temperature=1.3, top_k=20), dict(temperature=0.9, top_k=30, top_p=0.8)],
                         ids=["temperature_top_k", "temperature_top_k_top_p"])
def test_generate_with_cache_padded_batch_sampling_matches_transformers(impl, options):
    """左 padding 的一批提示词、采样、一行提前遇到 EOS：与同一种子下 transformers 的 generate() 逐 token 相同"""
    from .helpers import tiny_llama_pair

    ours, theirs = tiny_llama_pair(5)
    ids, mask = _left_padded(PROMPTS)
    eos, seed, n = 2, 3, 10
    expected = _transformers_generate(theirs, ids, mask, seed, max_new_tokens=n, do_sample=True, eos_token_id=eos,
                                      **options)
    # the case this test is about: one row reaches EOS early and is padded while the others go on to the end
    assert len(expected[0]) == n and any(row[-1] == PAD and eos in row for row in expected), expected
    got = impl.generate_with_cache(ours, ids, max_new_tokens=n, eos_token_id=eos, do_sample=True,
                                   generator=torch.Generator().manual_seed(seed), attention_mask=mask,
                                   pad_token_id=PAD, **options)
    check_equal(got.tolist() if isinstance(got, torch.Tensor) else got, expected,
                "每步：logits / temperature → top-k → top-p（与 transformers 相同：升序排序，累积和 <= 1 - top_p 的去掉）"
                "→ softmax → 整个 batch 一次 torch.multinomial(probs, 1, generator=generator)；"
                "已经结束的行也参加这次抽样，但得到的 token 换成 pad_token_id")


class _ShapeRecorder(torch.nn.Module):
    """Wraps a model and records, per forward call, the input_ids shape, the attention_mask and the position_ids."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.config, self.calls, self.masks, self.positions = model, model.config, [], [], []

    def forward(self, input_ids, *args, **kwargs):
        mask = kwargs.get("attention_mask", args[0] if args else None)
        positions = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        self.calls.append((tuple(input_ids.shape), None if mask is None else mask.shape[-1]))
        self.masks.append(mask)
        self.positions.append(positions)
        return self.model(input_ids, *args, **kwargs)


def test_generate_with_cache_padded_batch_feeds_one_token_per_step(impl):
    """一批提示词：先一次 prefill (B, T)，之后每步只送 (B, 1)，attention_mask 每步长一列"""
    from .helpers import tiny_llama_pair

    ours, _ = tiny_llama_pair(5)
    recorder = _ShapeRecorder(ours)
    ids, mask = _left_padded(PROMPTS)
    B, T = ids.shape
    impl.generate_with_cache(recorder, ids, max_new_tokens=5, attention_mask=mask, pad_token_id=PAD)
    check_equal(recorder.calls, [((B, T), T)] + [((B, 1), T + step) for step in range(1, 5)],
                "第一步把整批提示词 (B, T) 连同 attention_mask 送进模型（prefill），之后每步只送新 token (B, 1)，"
                "并把 attention_mask 接上一列 1（它覆盖缓存里的全部位置和新 token）；没有 EOS 时正好 max_new_tokens 步")


def test_generate_with_cache_padded_batch_positions_count_real_tokens(impl):
    """位置编号从 attention_mask 算：每行第一个真实 token 是位置 0，之后每步加 1"""
    from .helpers import tiny_llama_pair

    ours, _ = tiny_llama_pair(5)
    recorder = _ShapeRecorder(ours)
    ids, mask = _left_padded(PROMPTS)
    impl.generate_with_cache(recorder, ids, max_new_tokens=4, attention_mask=mask, pad_token_id=PAD)
    if not recorder.calls or recorder.masks[0] is None:
        raise AssertionError("把 attention_mask 传给模型：model(ids, attention_mask=mask, cache=cache)")
    lengths = torch.tensor([len(p) for p in PROMPTS])[:, None]     # real prompt tokens per row, (B, 1)
    for step, positions in enumerate(recorder.positions):
        if positions is None:
            continue  # the model then counts the mask's real tokens itself (model.causal_lm.default_position_ids)
        T = ids.shape[1] if step == 0 else 1
        # the real slots: the last len(p) of the prompt at step 0, the one new token afterwards
        expected = (torch.arange(ids.shape[1])[None, :] - (ids.shape[1] - lengths)) if step == 0 else lengths - 1 + step
        real = mask.bool() if step == 0 else torch.ones(len(PROMPTS), 1, dtype=torch.bool)
        got = positions.expand(len(PROMPTS), T)
        if not torch.equal(got[real], expected.expand(len(PROMPTS), T)[real]):
            raise AssertionError(
                "位置编号 = cumsum(attention_mask) - 1：左边的 padding 不占位置，每行第一个真实 token 是位置 0，"
                "之后每步加 1。（RoPE 只看相对位置，整行平移在这个小模型的 logits 里看不出来；但 transformers "
                "就是这样编号的，位置也不能超出 max_position_embeddings）"
                f"\n(第 {step} 次前向：got {got.tolist()!r}，真实 token 应为 {expected.tolist()!r})")


def test_generate_with_cache_sampling_distribution(impl):
    """temperature 1.5、top_k 5 采样：第一个 token 服从 softmax(top-5(logits / 1.5))"""
    from .helpers import tiny_llama_pair

    ours, theirs = tiny_llama_pair(3, std=0.15)
    ids = torch.tensor([[1, 6, 2, 9]])
    with torch.no_grad():
        logits = theirs(ids).logits[0, -1].double() / 1.5
    top = logits.topk(5).indices
    expected = torch.zeros_like(logits)
    expected[top] = logits[top].softmax(-1)
    generator, draws = torch.Generator().manual_seed(0), 1500
    counts = torch.zeros_like(logits)
    for _ in range(draws):
        token = impl.generate_with_cache(ours, ids, max_new_tokens=1, do_sample=True, temperature=1.5, top_k=5,
                                         generator=generator)
        counts[int(token.reshape(-1)[0])] += 1
    outside = int(counts.sum() - counts[top].sum())
    if outside:
        raise AssertionError(f"top_k=5：只能抽到概率最高的 5 个 token，却有 {outside}/{draws} 次抽到了别的")
    distance = 0.5 * float((counts / draws - expected).abs().sum())
    if distance > 0.06:
        raise AssertionError(f"抽样频率与 softmax(top-k(logits / temperature)) 相差太大（总变差 {distance:.3f}）："
                             "先除以 temperature，再 top-k，再 softmax，用 torch.multinomial(probs, 1, generator=generator)")


def test_generate_with_cache_top_p_support(impl):
    """top_p 0.6 采样：只抽到累积概率达到 0.6 的最小集合里的 token"""
    from .helpers import tiny_llama_pair

    ours, theirs = tiny_llama_pair(4, std=0.15)
    ids = torch.tensor([[1, 3, 3, 7]])
    with torch.no_grad():
        probs = theirs(ids).logits[0, -1].double().softmax(-1)
    ranked = probs.argsort(descending=True)
    size = int((probs[ranked].cumsum(0) < 0.6).sum()) + 1            # the nucleus: reach 0.6, then stop
    nucleus = set(ranked[:size].tolist())
    generator = torch.Generator().manual_seed(1)
    drawn = {int(impl.generate_with_cache(ours, ids, max_new_tokens=1, do_sample=True, top_p=0.6,
                                          generator=generator).reshape(-1)[0]) for _ in range(300)}
    if not drawn <= nucleus:
        raise AssertionError(f"top_p=0.6 只能从累积概率达到 0.6 的最小集合 {sorted(nucleus)} 里抽，"
                             f"却抽到了 {sorted(drawn - nucleus)}")
    if len(nucleus) > 1 and len(drawn) < 2:
        raise AssertionError("do_sample=True 时要真的采样（torch.multinomial），而不是取 argmax")


# ----------------------------------------------------------------------------------- 5.9 stop strings
@pytest.mark.parametrize("text, stops, expected", [
    ("a\nb\n", ["\n"], ("a\n", True)),
    ("Hello world. Bye.", [". ", "Bye"], ("Hello world. ", True)),
    ("xxENDyySTOP", ["STOP", "END"], ("xxEND", True)),
    ("no stop here", ["\n\n", "###"], ("no stop here", False)),
    ("abc", ["", "zz"], ("abc", False)),
])
def test_trim_at_stop_string_cases(impl, text, stops, expected):
    """截到最早结束的停止词末尾，保留停止词；没有停止词则原样返回"""
    check_equal(impl.trim_at_stop_string(text, stops), expected,
                "找出**最早结束**的那个停止词，截到它的末尾（含停止词）；一个都没有则原样返回并给 False")


# ----------------------------------------------------------------------------------- 5.10 repeated n-gram
@pytest.mark.parametrize("tokens, n, expected", [
    ([1, 2, 3, 1, 2], 2, True), ([1, 2, 3, 4], 2, False), ([7, 7, 7], 2, True), ([5, 6], 2, False),
    ([1, 2, 3, 9, 1, 2, 3], 3, True), ([1, 2, 3, 9, 1, 2, 4], 3, False), ([], 4, False),
])
def test_repeated_ngram_cases(impl, tokens, n, expected):
    """最后 n 个 token 在前面出现过吗（允许重叠）？"""
    check_equal(impl.repeated_ngram(tokens, n), expected,
                "比较最后 n 个 token 与之前每个起点的 n 元组（起点 0 .. len-n-1，可以与最后 n 个重叠）")


# ----------------------------------------------------------------------------------- 5.11 distinct-n
@pytest.mark.parametrize("rows, n, expected", [
    ([[1, 2, 1, 2]], 2, 2 / 3), ([[1, 2, 3], [1, 2, 3]], 2, 2 / 4), ([[1, 2, 3]], 1, 1.0), ([[1]], 2, 0.0),
    ([[4, 4, 4, 4]], 1, 1 / 4),
])
def test_distinct_n_cases(impl, rows, n, expected):
    """不同 n 元组数 / n 元组总数，n 元组不跨行"""
    got = impl.distinct_n(rows, n)
    if not isinstance(got, float) or not math.isclose(got, expected):
        raise AssertionError(f"不同的 n 元组个数 / n 元组总数（n 元组不跨行）\n(got {got!r}, expected {expected!r})")
