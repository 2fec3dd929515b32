"""Lesson 7 (entropy, trough, JSD, DoLa) against formulas evaluated in plain Python, transformers' DoLa
functions and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.utils import _dola_select_contrast, _relative_top_filter

from .helpers import check_close

LESSON = 7
NEG_INF = float("-inf")


def _python_entropy_bits(logits: list[float]) -> float:
    top = max(logits)
    weights = [math.exp(z - top) if z != NEG_INF else 0.0 for z in logits]
    total = sum(weights)
    return -sum(w / total * math.log2(w / total) for w in weights if w > 0)


def _python_jsd(p: list[float], q: list[float]) -> float:
    def kl(a: list[float], b: list[float]) -> float:
        return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)
    m = [(x + y) / 2 for x, y in zip(p, q)]
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


# ----------------------------------------------------------------------------------- 7.1 entropy
def test_entropy_bits_hand_computed(impl):
    """4 个 token 上的均匀分布：2 bit；确定的 token：0 bit"""
    got = impl.entropy_bits(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1e4, -1e4, -1e4]]))
    check_close(got, torch.tensor([2.0, 0.0]), "H = -Σ p log2 p，p = softmax(scores)；单位是 bit（以 2 为底）", atol=1e-4)


def test_entropy_bits_matches_python(impl, gen):
    """带若干 -inf 的随机 logits：与纯 Python 按公式算的相同，不出现 NaN"""
    scores = torch.randn(3, 10, generator=gen) * 2
    scores[0, :4] = NEG_INF
    expected = torch.tensor([_python_entropy_bits(row) for row in scores.tolist()])
    check_close(impl.entropy_bits(scores), expected, "-inf 表示概率 0：0 · log 0 记为 0，不能出现 NaN", atol=1e-4)


def test_entropy_bits_normalized(impl, gen):
    """normalize=True 时除以 log2(V)：均匀分布得 1"""
    scores = torch.randn(2, 16, generator=gen)
    got = impl.entropy_bits(torch.cat([torch.zeros(1, 16), scores]), normalize=True)
    expected = torch.tensor([1.0] + [_python_entropy_bits(r) / 4.0 for r in scores.tolist()])
    check_close(got, expected, "归一化：除以 log2(V)（V = 16 时是 4）", atol=1e-4)


# ----------------------------------------------------------------------------------- 7.2 trough
@pytest.mark.parametrize("costs, expected", [
    ([3.0, 1.0, 2.0, 4.0], 1),      # the docstring's example
    ([1.0, 2.0, 3.0, 4.0], 0),      # falls all the way down
    ([4.0, 3.0, 2.0, 1.0], 3),      # the last layer is already the lowest
    ([2.0, 2.0, 2.0, 2.0], 3),      # equal is not a fall: stay at the last layer
    ([5.0, 1.0, 3.0, 2.0, 6.0], 3),  # 6 > 2, then 3 is higher: stop at index 3
])
def test_trough_index_hand_computed(impl, costs, expected):
    """从最后一层往前走，只要代价严格变小就继续"""
    got = impl.trough_index(torch.tensor([costs]))
    check_close(got, torch.tensor([expected]), f"{costs} 的熵谷是 {expected}：从最后一列往前，只要严格变小就继续")


def test_trough_index_batch(impl):
    """每一行各走各的"""
    got = impl.trough_index(torch.tensor([[3.0, 1.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]))
    check_close(got, torch.tensor([1, 0, 3]), "每一行独立计算，返回 (B,)")


# ----------------------------------------------------------------------------------- 7.3 JSD
def test_jensen_shannon_divergence_hand_computed(impl):
    """不相交的两个分布：ln 2；相同的分布：0"""
    log_p = torch.tensor([[0.0, NEG_INF], [math.log(0.3), math.log(0.7)]])
    log_q = torch.tensor([[NEG_INF, 0.0], [math.log(0.3), math.log(0.7)]])
    check_close(impl.jensen_shannon_divergence(log_p, log_q), torch.tensor([math.log(2.0), 0.0]),
                "不相交的两个分布 JSD = ln 2；相同的分布 JSD = 0；概率为 0（-inf）的项记为 0", atol=1e-5)


def test_jensen_shannon_divergence_matches_python(impl, gen):
    """随机分布：与纯 Python 按公式算的相同"""
    log_p = torch.randn(4, 12, generator=gen).log_softmax(-1)
    log_q = (torch.randn(4, 12, generator=gen) * 3).log_softmax(-1)
    expected = torch.tensor([_python_jsd(p, q) for p, q in zip(log_p.exp().tolist(), log_q.exp().tolist())])
    check_close(impl.jensen_shannon_divergence(log_p, log_q), expected,
                "JSD = ½ Σ p (log p - log m) + ½ Σ q (log q - log m)，m = (p + q) / 2", atol=1e-5)


def test_jensen_shannon_divergence_broadcasts(impl, gen):
    """最后一层 (1, B, V) 对 L 个早期层 (L, B, V) 广播，DoLa 就是这样用的"""
    final = torch.randn(1, 2, 8, generator=gen).log_softmax(-1)
    layers = torch.randn(3, 2, 8, generator=gen).log_softmax(-1)
    expected = torch.tensor([[_python_jsd(final[0, b].exp().tolist(), layers[j, b].exp().tolist())
                              for b in range(2)] for j in range(3)])
    check_close(impl.jensen_shannon_divergence(final, layers), expected, "只在最后一维上求和，其余维度广播", atol=1e-5)


# ----------------------------------------------------------------------------------- 7.4 V_head
@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_plausibility_mask_matches_transformers(impl, gen, alpha):
    """保留的 token 与 transformers 的 _relative_top_filter 相同"""
    logits = torch.randn(3, 30, generator=gen) * 3
    kept, _ = _relative_top_filter(logits.clone(), logits.clone(), relative_top=alpha)
    check_close(impl.plausibility_mask(logits.log_softmax(-1), alpha), kept > NEG_INF,
                "保留 log q >= max log q + log(alpha) 的 token（在 log 空间比较）")


def test_plausibility_mask_hand_computed(impl):
    """q = [0.5, 0.3, 0.04, 0.16]，alpha = 0.1：阈值是 0.05，只去掉 0.04"""
    log_q = torch.tensor([[0.5, 0.3, 0.04, 0.16]]).log()
    check_close(impl.plausibility_mask(log_q, 0.1), torch.tensor([[True, True, False, True]]),
                "阈值是 alpha × 最大概率 = 0.05", )
    check_close(impl.plausibility_mask(log_q, 0.0), torch.ones(1, 4, dtype=torch.bool), "alpha = 0 时保留全部")


# ----------------------------------------------------------------------------------- 7.5 contrast
def test_dola_contrast_matches_transformers(impl, gen):
    """只有一个早期层时与 transformers 的 _dola_select_contrast 相同（alpha = 0.1）"""
    final = torch.randn(2, 25, generator=gen) * 3
    premature = torch.randn(2, 25, generator=gen) * 3
    expected = _dola_select_contrast([4], {4: premature.clone()}, final.clone())
    got = impl.dola_contrast(final.log_softmax(-1), premature.log_softmax(-1), 0.1)
    check_close(got, expected, "V_head 上是 log q_N - log q_M，V_head 之外是 -inf", atol=1e-5)


def test_dola_contrast_hand_computed(impl):
    """对比偏向从第 M 层到第 N 层概率变大的 token"""
    final = torch.tensor([[0.6, 0.3, 0.1]]).log()
    early = torch.tensor([[0.7, 0.1, 0.2]]).log()
    expected = torch.tensor([[math.log(0.6 / 0.7), math.log(0.3 / 0.1), math.log(0.1 / 0.2)]])
    check_close(impl.dola_contrast(final, early, 0.1), expected,
                "F(x) = log q_N(x) - log q_M(x)：token 1 从 0.1 涨到 0.3，对比后得分最高", atol=1e-5)


# ----------------------------------------------------------------------------------- 7.6 DoLa's layer choice
def _jsd_float64(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The definition, in float64: 1/2 KL(P || A) + 1/2 KL(Q || A), A = (P + Q) / 2, with 0 log 0 = 0."""
    a = 0.5 * (p + q)
    kl = lambda x, y: torch.where(x > 0, x * (x / y).log(), torch.zeros_like(x)).sum(-1)  # noqa: E731
    return 0.5 * kl(p, a) + 0.5 * kl(q, a)


def test_select_premature_layer_against_the_definition(impl, gen):
    """每条序列选出的层使 JSD(q_N || q_j) 最大（对照 float64 的定义），JSD 表也要对"""
    final = (torch.randn(3, 30, generator=gen) * 2).log_softmax(-1)
    premature = (torch.randn(4, 3, 30, generator=gen) * 2).log_softmax(-1)
    premature[2, 1] = final[1]                         # identical to the last layer: JSD 0, never chosen
    expected = torch.stack([_jsd_float64(final.double().exp(), premature[j].double().exp()) for j in range(4)], 1)
    got = impl.select_premature_layer(final, premature)
    if not isinstance(got, tuple) or len(got) != 2:
        raise AssertionError("返回 (选中的候选下标 (B,), JSD 表 (B, L))")
    check_close(got[1], expected.float(), "JSD 表形状 (B, L)：第 b 行第 j 列是 JSD(q_N[b] || q_j[b])，单位 nats",
                atol=1e-5)
    check_close(got[0], expected.argmax(-1), "每一行分别取 JSD 最大的候选层（argmax 沿 L 那一维）")


# ----------------------------------------------------------------------------------- 7.7 random_after
def test_random_after_index_range_and_uniformity(impl):
    """每次抽到的层都在 [trough, last] 之内，且每个允许的层被抽到的次数大致相同"""
    generator = torch.Generator().manual_seed(0)
    trough = torch.tensor([26, 29, 20])
    counts = torch.zeros(3, 30)
    for _ in range(600):
        got = impl.random_after_index(trough, 29, generator)
        if not isinstance(got, torch.Tensor) or got.shape != (3,) or got.dtype != torch.long:
            raise AssertionError(f"返回 (B,) 的 long 张量，得到 {got!r}")
        counts[torch.arange(3), got] += 1
    for row, low in enumerate(trough.tolist()):
        outside = counts[row, :low].sum() + counts[row, 30:].sum()
        if outside:
            raise AssertionError(f"行 {row}：抽到了 [{low}, 29] 之外的层（两端都要包含，别越界）")
        allowed = counts[row, low:]
        if allowed.min() < 0.5 * 600 / len(allowed):
            raise AssertionError(f"行 {row}：[{low}, 29] 里每层应被抽到约 {600 / len(allowed):.0f} 次，"
                                 f"得到 {allowed.tolist()}（端点 last 也要能抽到）")


def test_random_after_index_uses_the_generator(impl):
    """种子相同的两个 generator 抽出相同的结果"""
    trough = torch.tensor([3, 5, 0, 7])
    first = impl.random_after_index(trough, 9, torch.Generator().manual_seed(5))
    torch.manual_seed(123)                                   # the global generator must not matter
    second = impl.random_after_index(trough, 9, torch.Generator().manual_seed(5))
    check_close(first, second, "随机数只来自传入的 generator：torch.rand(..., generator=generator)")


# ----------------------------------------------------------------------------------- 7.8 the entropy layer step
def _curve_states(rows: list[list[list[float]]]) -> tuple[torch.Tensor, ...]:
    """Hidden states whose early-exit logits (with norm = head = identity) are the given probabilities' logs.

    rows[b][j-1] is layer j's distribution for sequence b; position 0 holds noise (only the last position counts).
    """
    B, N, V = len(rows), len(rows[0]), len(rows[0][0])
    logits = torch.tensor(rows).clamp(min=1e-30).log().clamp(min=-30.0)   # (B, N, V); p = 0 -> logit -30
    noise = torch.randn(B, 1, V, generator=torch.Generator().manual_seed(9)) * 5
    embeddings = torch.zeros(B, 2, V)
    return (embeddings, *[torch.cat([noise, logits[:, j:j + 1]], dim=1) for j in range(N)])


QUARTER, HALF, MIXED = [0.25] * 4, [0.5, 0.5, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0]   # 2, 1 and 1.5 bits
CURVES = [[QUARTER, HALF, MIXED, QUARTER],      # entropies 2, 1, 1.5, 2: walk 4 -> 3 -> 2, stop (2 is not < 1)
          [HALF, MIXED, QUARTER, QUARTER]]      # entropies 1, 1.5, 2, 2: layer 3 is not lower than 4, stay at 4


def test_entropy_layer_choice_hand_computed_curves(impl):
    """熵曲线 [2, 1, 1.5, 2] 和 [1, 1.5, 2, 2] bit：熵谷在第 2 层和第 4 层，返回这两层的 logits"""
    states = _curve_states(CURVES)
    identity = torch.nn.Identity()
    got = impl.entropy_layer_choice(states, identity, identity, "trough")
    if not isinstance(got, tuple) or len(got) != 3:
        raise AssertionError("返回 (选中层的 logits (B, V), 选中的层号 (B,), entropies (B, N)) 三个张量")
    logits, layers, entropies = got
    check_close(entropies, torch.tensor([[2.0, 1.0, 1.5, 2.0], [1.0, 1.5, 2.0, 2.0]]),
                "每层只看最后一个位置 h_j[:, -1]：均匀的 4 个 token 是 2 bit，[0.5, 0.5] 是 1 bit，"
                "[0.5, 0.25, 0.25] 是 1.5 bit；第 j - 1 列是第 j 层（不含下标 0 的词嵌入）", atol=1e-4)
    check_close(layers, torch.tensor([2, 4]),
                "熵谷：从第 N 层往浅层走，只要更浅一层的熵严格更小就继续；层号从 1 数起（第 1 个块是 1）")
    check_close(logits, torch.stack([states[2][0, -1], states[4][1, -1]]),
                "返回的 logits 是选中那一层的早退 logits lm_head(norm(h_j[:, -1]))", atol=1e-5)


def test_entropy_layer_choice_random_after_hand_computed(impl):
    """同样的曲线用 random_after：层 = 熵谷层 + floor(u × [熵谷层, N] 里的层数)，u 来自一次 torch.rand(B)"""
    states = _curve_states(CURVES)
    identity = torch.nn.Identity()
    for seed in range(6):
        u = torch.rand(2, generator=torch.Generator().manual_seed(seed))
        expected = torch.tensor([2, 4]) + (u * torch.tensor([3, 1])).long()   # [2, 4] holds 3 layers, [4, 4] one
        logits, layers, _ = impl.entropy_layer_choice(states, identity, identity, "random_after",
                                                      torch.Generator().manual_seed(seed))
        check_close(layers, expected, "random_after：一次 u = torch.rand(B, generator=generator)，"
                    "层 = 熵谷层 + floor(u × [熵谷层, N] 里的层数)（同 7.7）")
        check_close(logits, torch.stack([states[int(j)][b, -1] for b, j in enumerate(expected)]),
                    "返回抽中那一层的 logits", atol=1e-5)


def _early_exit_entropies_float64(hf_model, ids: torch.Tensor) -> torch.Tensor:
    """Every layer's next-token entropy in bits, in float64, from transformers' hidden states: (B, N)."""
    with torch.no_grad():
        out = hf_model(ids, output_hidden_states=True)
    norm, head = hf_model.model.norm, hf_model.lm_head.weight.double()
    N = len(out.hidden_states) - 1
    curves = []
    for j in range(1, N + 1):
        h = out.hidden_states[j][:, -1].double()
        if j < N:  # transformers' last hidden state already went through the final norm
            h = norm.weight.double() * h / (h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
        p = (h @ head.T).softmax(-1)
        curves.append(-(p * p.log2()).sum(-1))
    return torch.stack(curves, dim=1)


def test_entropy_layer_choice_entropies_match_float64(impl):
    """6 层的小 LLaMA 上：每层的熵与由 transformers 的隐藏状态用 float64 算出的相同"""
    from .helpers import tiny_llama_pair

    ours, theirs = tiny_llama_pair(0, num_hidden_layers=6)
    ids = torch.tensor([[1, 5, 9, 13, 7], [1, 8, 3, 3, 20]])
    with torch.no_grad():
        states = ours(ids, output_hidden_states=True).hidden_states
        _, _, entropies = impl.entropy_layer_choice(states, ours.norm, ours.lm_head, "trough")
    check_close(entropies, _early_exit_entropies_float64(theirs, ids).float(),
                "每层（1..N）的早退 logits 是 lm_head(norm(h_j[:, -1]))：中间层也要先过最终的 norm，"
                "再用同一个输出头；熵以 2 为底", atol=1e-4)


@pytest.mark.parametrize("strategy", ["trough", "random_after"])
def test_entropy_layer_choice_decodes_like_the_package(impl, strategy):
    """用你写的这一步做贪心解码，与 generate(entropy_decoding=...) 逐 token、逐层相同"""
    from generation import generate

    from .helpers import tiny_llama_pair

    ours, _ = tiny_llama_pair(0, num_hidden_layers=6)
    ids = torch.tensor([[1, 5, 9, 13, 7], [1, 8, 3, 3, 20]])
    package = generate(ours, ids, max_new_tokens=8, entropy_decoding=strategy, eos_token_id=[],
                       generator=torch.Generator().manual_seed(3))
    expected_layers = torch.stack(package.records["entropy_selected_layer_indices"], dim=1)   # (B, steps)
    if strategy == "trough" and bool((expected_layers == 6).all()):
        raise AssertionError("test model broken: the trough never leaves the last layer")
    generator, sequence, layers = torch.Generator().manual_seed(3), ids, []
    with torch.no_grad():
        for _ in range(8):
            states = ours(sequence, output_hidden_states=True).hidden_states
            logits, chosen, _ = impl.entropy_layer_choice(states, ours.norm, ours.lm_head, strategy, generator)
            layers.append(chosen)
            sequence = torch.cat([sequence, logits.argmax(-1)[:, None]], dim=1)
    check_close(torch.stack(layers, dim=1), expected_layers,
                "每步选中的层要与包的熵解码相同：熵谷从第 N 层往下走、严格变小才继续；random_after 每步只用一次 "
                "torch.rand(B, generator=generator)")
    check_close(sequence, package.sequences, "用选中层的 logits 贪心解码，结果要与包逐 token 相同")
