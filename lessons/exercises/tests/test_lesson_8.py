"""Lesson 8 (speculative acceptance, LogU) against hand-computed cases, the theorem of speculative sampling
(the emitted token is distributed as p, checked by counting) and digamma values written as harmonic numbers."""

from __future__ import annotations

import pytest
import torch

from .helpers import check_close, check_equal

LESSON = 8
EULER_GAMMA = 0.5772156649015329


def _digamma_int(n: int) -> float:
    """psi(n) for a positive integer: the harmonic number H_{n-1} minus Euler's gamma."""
    return sum(1.0 / k for k in range(1, n)) - EULER_GAMMA


def _one_hot_scores(tokens: list[int], V: int = 6) -> torch.Tensor:
    scores = torch.zeros(len(tokens), V)
    scores[torch.arange(len(tokens)), torch.tensor(tokens)] = 5.0
    return scores


# ----------------------------------------------------------------------------------- 8.1 greedy
@pytest.mark.parametrize("target, drafts, expected", [
    ([1, 2, 3, 4], [1, 2, 3], (3, 4)),   # every draft agrees: keep all, plus the target's bonus token
    ([1, 5, 3, 4], [1, 2, 3], (1, 5)),   # disagreement at the second draft: keep 1, then the target's 5
    ([0, 2, 3, 4], [1, 2, 3], (0, 0)),   # the first draft is already wrong: keep none
])
def test_greedy_accept_hand_computed(impl, target, drafts, expected):
    """保留最长的一致前缀，再接上目标模型自己的 token"""
    got = impl.greedy_accept(_one_hot_scores(target), torch.tensor(drafts))
    check_equal(tuple(int(x) for x in got), expected,
                "目标模型每个位置取 argmax；从头比较，第一次不一致就停；返回 (一致的个数, 目标在该位置的 argmax)")


def test_greedy_accept_later_agreement_does_not_count(impl):
    """不一致之后又一致的草稿不保留"""
    got = impl.greedy_accept(_one_hot_scores([1, 3, 3, 4]), torch.tensor([1, 2, 3]))
    check_equal(tuple(int(x) for x in got), (1, 3), "只算**前缀**：第 2 个不一致后，第 3 个即使一致也不算")


# ----------------------------------------------------------------------------------- 8.2 sampling
def test_sampling_accept_same_distributions_accept_everything(impl):
    """p = q：每个草稿都被接受（p/q = 1）"""
    p = torch.tensor([[0.2, 0.5, 0.3]] * 4)
    accepted, token = impl.sampling_accept(p, p[:3], torch.tensor([1, 0, 2]), torch.Generator().manual_seed(0))
    check_equal(int(accepted), 3, "p = q 时 p/q = 1，每个草稿都接受")


def test_sampling_accept_impossible_draft_is_rejected(impl):
    """目标模型给概率 0 的草稿被拒绝；此时的 token 从 max(0, p - q) 里抽"""
    p = torch.tensor([[0.0, 1.0, 0.0], [0.3, 0.3, 0.4]])
    q = torch.tensor([[1.0, 0.0, 0.0]])
    accepted, token = impl.sampling_accept(p, q, torch.tensor([0]), torch.Generator().manual_seed(0))
    check_equal((int(accepted), int(token)), (0, 1),
                "p(d) = 0 时必定拒绝；残差 max(0, p - q) = [0, 1, 0]，所以结尾 token 必是 1")


def test_sampling_accept_emits_tokens_distributed_as_p(impl):
    """第一个输出的 token 严格服从 p（统计 4000 轮，gamma = 1）"""
    p = torch.tensor([[0.5, 0.1, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.1, 0.6, 0.2, 0.1]])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(4000):
        draft = torch.multinomial(q[0], 1, generator=gen)
        accepted, token = impl.sampling_accept(p, q, draft, gen)
        counts[int(draft) if int(accepted) == 1 else int(token)] += 1
    check_close(counts / 4000, p[0], "第一个输出的 token 应服从 p：接受概率 min(1, p/q)，拒绝后从 norm(max(0, p - q)) 抽",
                atol=0.03)


def test_sampling_accept_uses_the_generator(impl):
    """generator 种子相同，结果相同"""
    p = torch.softmax(torch.randn(4, 7, generator=torch.Generator().manual_seed(1)), -1)
    q = torch.softmax(torch.randn(3, 7, generator=torch.Generator().manual_seed(2)), -1)
    drafts = torch.tensor([1, 4, 6])
    runs = [impl.sampling_accept(p, q, drafts, torch.Generator().manual_seed(5)) for _ in range(2)]
    check_equal(tuple(map(int, runs[0])), tuple(map(int, runs[1])), "随机数只能来自传入的 generator")


# ----------------------------------------------------------------------------------- 8.3 LogU
def test_logu_uncertainty_no_evidence(impl):
    """所有 logits <= 0：没有证据，AU = 0，EU = 1"""
    au, eu = impl.logu_uncertainty(torch.tensor([[-1.0, -2.0, -3.0, -0.5]]), top_k=2)
    check_close(au, torch.tensor([0.0]), "没有证据（alpha_0 = 0）时期望概率取均匀 1/K，ψ(1) - ψ(1) = 0，所以 AU = 0")
    check_close(eu, torch.tensor([1.0]), "EU = K / Σ(alpha_k + 1) = 2 / 2 = 1")


def test_logu_uncertainty_hand_computed(impl):
    """最大的 2 个 logits 为 [1, 1]（其余不计）：AU = psi(3) - psi(2) = 1/2，EU = 2/4"""
    au, eu = impl.logu_uncertainty(torch.tensor([1.0, 1.0, -4.0, 0.5]), top_k=2)
    check_close(au, torch.tensor(_digamma_int(3) - _digamma_int(2)),
                "AU = -Σ (α_k/α_0)(ψ(α_k + 1) - ψ(α_0 + 1))，只用最大的 top_k 个")
    check_close(eu, torch.tensor(0.5), "EU = top_k / Σ(α_k + 1)")


def test_logu_uncertainty_concentrated_evidence(impl):
    """证据 [3, 0, 0]：AU = 0（证据全在一个 token 上），EU = 3/6"""
    au, eu = impl.logu_uncertainty(torch.tensor([[3.0, -1.0, 0.0, -2.0]]), top_k=3)
    check_close(au, torch.tensor([0.0]), "证据全在一个 token 上时 AU = -(1)(ψ(4) - ψ(4)) = 0", atol=1e-6)
    check_close(eu, torch.tensor([0.5]), "EU = 3 / (4 + 1 + 1)")


def test_logu_uncertainty_bad_top_k(impl):
    """top_k 大于词表大小时要报错"""
    with pytest.raises(ValueError):
        impl.logu_uncertainty(torch.zeros(1, 4), top_k=5)


# ----------------------------------------------------------------------------------- 8.4 the speculative loop
def _greedy_reference(model, ids: torch.Tensor, n: int) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(ids).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


@pytest.mark.parametrize("gamma", [1, 3, 4])
def test_speculative_greedy_equals_target_greedy(impl, gamma):
    """草稿模型与目标模型不同：结果与目标模型自己贪心解码逐 token 相同（对照 transformers 的模型）"""
    from .helpers import tiny_llama_pair

    target, target_hf = tiny_llama_pair(0)
    draft, _ = tiny_llama_pair(0, std=0.25)                  # a related but different model: some rejections
    ids = torch.tensor([[1, 5, 9, 13, 7]])
    got = impl.speculative_greedy(target, draft, ids, 12, gamma)
    check_equal(got.tolist() if isinstance(got, torch.Tensor) else got, [_greedy_reference(target_hf, ids, 12)],
                "结果必须与目标模型自己贪心解码逐 token 相同：接受一致的最长前缀，接上目标在第一个不一致处的 "
                "token；被拒绝的部分要从两个缓存里 crop 掉")


def test_speculative_greedy_saves_target_passes(impl):
    """草稿模型就是目标本身时每个草稿都被接受：目标模型约前向 12 / (gamma + 1) 次"""
    from .helpers import CountingModel, tiny_llama_pair

    model, model_hf = tiny_llama_pair(1)
    target = CountingModel(model)
    ids = torch.tensor([[1, 2, 3]])
    got = impl.speculative_greedy(target, model, ids, 12, 3)
    check_equal(got.tolist() if isinstance(got, torch.Tensor) else got, [_greedy_reference(model_hf, ids, 12)],
                "草稿与目标相同时输出仍是目标的贪心结果")
    if target.calls > 5:
        raise AssertionError(f"目标模型前向了 {target.calls} 次：每轮只能有一次（对 [上一个 token, d_1..d_γ] 一起），"
                             "全部接受时一轮前进 γ + 1 个 token，12 个 token 应约 3-4 次（加上 prefill）")


# ----------------------------------------------------------------------------------- 8.5 the speculative sampling loop
def _target_sampling_same_stream(hf_model, ids: torch.Tensor, n: int, gamma: int, generator: torch.Generator,
                                 temperature: float) -> list[int]:
    """The oracle: transformers' model alone samples every token from softmax(logits / T), drawing random numbers
    in the order a speculative round uses when it accepts everything (gamma draws, gamma uniforms, one more)."""
    seq, out = ids[0].tolist(), []

    def draw() -> int:
        with torch.no_grad():
            probs = (hf_model(torch.tensor([seq])).logits[0, -1].float() / temperature).softmax(-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        seq.append(token)
        out.append(token)
        return token

    while len(out) < n:
        g = min(gamma, n - len(out) - 1)
        for _ in range(g):
            draw()
        torch.rand(g, generator=generator)                     # the acceptance test's uniforms: p = q accepts all
        draw()
    return out


@pytest.mark.parametrize("gamma, temperature", [(1, 1.0), (3, 0.8)])
def test_speculative_sampling_with_the_target_as_draft_is_target_sampling(impl, gamma, temperature):
    """草稿模型就是目标模型：每个草稿都被接受，所以输出就是目标模型用同一个随机数流自己抽样的结果"""
    from .helpers import CountingModel, tiny_llama_pair

    model, model_hf = tiny_llama_pair(1)
    target = CountingModel(model)
    ids = torch.tensor([[1, 2, 3]])
    got = impl.speculative_sampling(target, model, ids, 12, gamma, torch.Generator().manual_seed(7), temperature)
    expected = _target_sampling_same_stream(model_hf, ids, 12, gamma, torch.Generator().manual_seed(7), temperature)
    check_equal(got.tolist() if isinstance(got, torch.Tensor) else got, [expected],
                "草稿与目标相同时 p = q，每个草稿都被接受：输出就是目标模型自己按 softmax(logits / temperature) "
                "抽样的结果。随机数的顺序：γ 次 multinomial 抽草稿，一次 torch.rand(γ)，一次 multinomial 抽最后的 token；"
                "γ = min(num_draft_tokens, 还需要的个数 - 1)")
    rounds = -(-12 // (gamma + 1))
    if target.calls > rounds + 1:
        raise AssertionError(f"目标模型前向了 {target.calls} 次：每轮只能有一次（对 [上一个 token, d_1..d_γ] 一起），"
                             f"全部接受时一轮前进 γ + 1 个 token，12 个 token 最多 {rounds + 1} 次（含 prefill）")


def test_speculative_sampling_emits_the_target_distribution(impl):
    """6 个 token 的词表：2000 次运行里 (x1, x2) 的频率严格服从 p(x1) p(x2 | x1)（二项分布的容差）"""
    from .helpers import tiny_llama_pair

    target, target_hf = tiny_llama_pair(1, vocab_size=6)
    draft, draft_hf = tiny_llama_pair(2, vocab_size=6, std=0.6)   # a quite different draft: ~43% acceptance
    prompt = [1, 3, 4]
    with torch.no_grad():
        p1 = target_hf(torch.tensor([prompt])).logits[0, -1].double().softmax(-1)              # (6,)
        p2 = target_hf(torch.tensor([prompt + [x] for x in range(6)])).logits[:, -1].double().softmax(-1)  # (6, 6)
        q1 = draft_hf(torch.tensor([prompt])).logits[0, -1].double().softmax(-1)
    exact = p1[:, None] * p2                                                                 # (6, 6) joint
    # the classic mistake (on rejection, draw from p instead of the residual) must be visible at this size
    wrong_first = torch.minimum(p1, q1) + (1 - torch.minimum(p1, q1).sum()) * p1
    assert 0.5 * float((wrong_first - p1).abs().sum()) > 0.1, "test models too similar to grade anything"
    draws, counts = 2000, torch.zeros(6, 6, dtype=torch.float64)
    generator, threads = torch.Generator().manual_seed(0), torch.get_num_threads()
    torch.set_num_threads(1)                                   # tiny matrices: one thread is much faster
    try:
        for _ in range(draws):
            x1, x2 = impl.speculative_sampling(target, draft, torch.tensor([prompt]), 2, 1, generator).reshape(-1)
            counts[int(x1), int(x2)] += 1
    finally:
        torch.set_num_threads(threads)
    for name, freq, prob in (("第一个 token", counts.sum(1) / draws, p1), ("(x1, x2)", counts / draws, exact)):
        allowed = 4.5 * (prob * (1 - prob) / draws).sqrt() + 1.0 / draws      # 4.5 binomial standard errors
        worst = float(((freq - prob).abs() - allowed).max())
        if worst > 0:
            raise AssertionError(f"{name} 的频率与目标分布 p 不符（超出容差 {worst:.3f}）：以 min(1, p/q) 接受草稿；"
                                 "被拒绝时从 norm(max(0, p - q)) 抽（不是从 p，也不是从 q）；全部接受时从 p_{γ+1} 抽额外的 token\n"
                                 f"(frequencies\n{freq.numpy().round(3)}\nexpected\n{prob.numpy().round(3)})")


@pytest.mark.parametrize("gamma, temperature", [(1, 1.0), (3, 0.7), (4, 1.0)])
def test_speculative_sampling_equals_the_package(impl, gamma, temperature):
    """草稿模型不同、种子相同：与 generation/speculative.py 的投机采样循环逐 token 相同"""
    from generation.speculative import speculative_generate

    from .helpers import tiny_llama_pair

    target, _ = tiny_llama_pair(0)
    draft, _ = tiny_llama_pair(0, std=0.25)
    ids = torch.tensor([[1, 5, 9, 13, 7]])
    package = speculative_generate(target, draft, ids, num_draft_tokens=gamma, do_sample=True, max_new_tokens=12,
                                   eos_token_id=[], temperature=temperature, generator=torch.Generator().manual_seed(4))
    assert package.stats.accepted < package.stats.drafted, "test models broken: nothing was rejected"
    got = impl.speculative_sampling(target, draft, ids, 12, gamma, torch.Generator().manual_seed(4), temperature)
    check_equal(got.tolist() if isinstance(got, torch.Tensor) else got, [package.sequences[0, 5:].tolist()],
                "与包的投机采样用同一个随机数流时要逐 token 相同：每个草稿 multinomial 一次，然后一次 torch.rand(γ)，"
                "最后一次 multinomial；γ = min(num_draft_tokens, 还需要的个数 - 1)；被拒绝的部分从两个缓存里 crop 掉")
