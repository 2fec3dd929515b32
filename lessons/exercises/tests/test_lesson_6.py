"""Lesson 6 (one beam-search step) against loops over every (beam, token) pair and hand-computed cases; the whole
beam search (6.3) against transformers' generate(num_beams=K)."""

from __future__ import annotations

import pytest
import torch

from .helpers import check_close, check_equal

LESSON = 6


# ----------------------------------------------------------------------------------- 6.1 gather
def test_gather_beams_hand_computed(impl):
    """行 [10, 11, 12] 和 [20, 21, 22]，index [[2, 0], [1, 1]] 取出 [[12, 10], [21, 21]]"""
    tensor = torch.tensor([[10, 11, 12], [20, 21, 22]])
    got = impl.gather_beams(tensor, torch.tensor([[2, 0], [1, 1]]))
    check_close(got, torch.tensor([[12, 10], [21, 21]]), "结果 [b, j] = tensor[b, index[b, j]]：每个提示词只在自己的束里挑")


def test_gather_beams_sequences(impl, gen):
    """(B, K, L) 的张量：取出整条序列，与逐个循环取的结果对照"""
    tensor = torch.randint(0, 100, (2, 3, 5), generator=gen)
    index = torch.tensor([[1, 1, 0, 2], [2, 0, 0, 1]])
    expected = torch.stack([torch.stack([tensor[b, index[b, j]] for j in range(4)]) for b in range(2)])
    check_close(impl.gather_beams(tensor, index), expected,
                "tensor 多于 2 维时，先把 index 扩成 (B, J, 1, ...) 再沿第 1 维取（take_along_dim(tensor, index, dim=1)）")


# ----------------------------------------------------------------------------------- 6.2 candidates
def _brute_force(totals: torch.Tensor, K: int, C: int) -> list[list[tuple[float, int, int]]]:
    """Every (score, beam, token) of each prompt, best first, the C best kept (ties: lower flat index first)."""
    B, KV = totals.shape
    V = KV // K
    best = []
    for b in range(B):
        pairs = [(float(totals[b, beam * V + token]), beam, token) for beam in range(K) for token in range(V)]
        best.append(sorted(pairs, key=lambda p: -p[0])[:C])
    return best


def test_top_candidates_hand_computed(impl):
    """K=2 个束、V=3 个 token：全部 6 个 (束, token) 对里最好的 2 个，连同父束和序列"""
    totals = torch.tensor([[-1.0, -5.0, -2.5, -0.5, -3.0, -9.0]])  # beam 0: tokens 0..2, beam 1: tokens 0..2
    running = torch.tensor([[[7, 8, 0], [7, 9, 0]]])  # (B=1, K=2, L=3), position 2 is empty
    scores, seqs, parents = impl.top_candidates(totals, running, 2, 2, False, None)
    check_close(scores, torch.tensor([[-0.5, -1.0]]), "分数是 totals 里最大的 C 个，降序")
    check_close(parents, torch.tensor([[1, 0]]), "父束 = 扁平下标 // V：-0.5 在下标 3，属于束 1")
    check_close(seqs, torch.tensor([[[7, 9, 0], [7, 8, 0]]]), "新序列 = 父束的序列，位置 length 写入 token = 下标 % V")


def test_top_candidates_matches_brute_force(impl, gen):
    """2 个提示词、K=3、V=7、C=6：候选与把所有对排一遍的结果相同"""
    B, K, V, C, length = 2, 3, 7, 6, 4
    totals = torch.randn(B, K * V, generator=gen)
    running = torch.randint(0, V, (B, K, 6), generator=gen)
    scores, seqs, parents = impl.top_candidates(totals, running.clone(), length, C, False, None)
    for b, best in enumerate(_brute_force(totals, K, C)):
        check_close(scores[b], torch.tensor([s for s, _, _ in best]), "C 个最好的 (束, token) 对，分数降序")
        check_close(parents[b], torch.tensor([beam for _, beam, _ in best]), "父束 = 扁平下标 // V")
        expected = torch.stack([torch.cat([running[b, beam, :length], torch.tensor([token]),
                                           running[b, beam, length + 1:]]) for _, beam, token in best])
        check_close(seqs[b], expected, "每个候选：父束序列的拷贝，位置 length 换成 token = 扁平下标 % V")


def test_top_candidates_leaves_running_untouched(impl, gen):
    """running 里的束不被原地修改"""
    running = torch.randint(0, 5, (1, 2, 4), generator=gen)
    before = running.clone()
    impl.top_candidates(torch.randn(1, 10, generator=gen), running, 2, 4, False, None)
    check_close(running, before, "新序列要从 running 取出拷贝（gather 本身就返回新张量），不要写进 running")


def test_top_candidates_sampling(impl):
    """do_sample=True：用 generator 抽出 C 个互不相同的候选，不会抽到 -inf 的对，结果可复现"""
    totals = torch.full((1, 12), float("-inf"))
    totals[0, [0, 3, 5, 8, 11]] = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.5])
    running = torch.zeros(1, 3, 3, dtype=torch.long)
    scores, _, parents = impl.top_candidates(totals, running, 1, 4, True, torch.Generator().manual_seed(1))
    again, _, _ = impl.top_candidates(totals, running, 1, 4, True, torch.Generator().manual_seed(1))
    check_equal(bool(torch.isfinite(scores).all()), True, "抽样时概率为 0（-inf）的对不能被抽中：用 softmax(totals)")
    check_equal(len(set(scores[0].tolist())), 4, "不放回地抽 C 个：torch.multinomial(..., replacement=False)")
    check_close(scores, again, "同一个 generator 种子应得到同样的抽样结果：把 generator 传给 multinomial")
    check_close(parents, parents.clamp(0, 2), "父束在 0..K-1 之内")


# ----------------------------------------------------------------------------------- 6.3 the whole beam search
def _transformers_beam_search(hf_model, ids: torch.Tensor, K: int, n: int, length_penalty: float, eos: int | None,
                              returned: int):
    """The oracle: transformers' generate(num_beams=K, do_sample=False). Returns (each hypothesis' new tokens up to
    and including EOS, best first; their sequences_scores; the number of steps it ran)."""
    hf_model.generation_config.eos_token_id = eos          # None: no EOS at all (not the config's default one)
    out = hf_model.generate(ids, num_beams=K, max_new_tokens=n, length_penalty=length_penalty, do_sample=False,
                            eos_token_id=eos, pad_token_id=0, num_return_sequences=returned, output_scores=True,
                            return_dict_in_generate=True)
    rows = []
    for row in out.sequences[:, ids.shape[1]:].tolist():
        rows.append(row[:row.index(eos) + 1] if eos is not None and eos in row else row)   # drop the padding
    return rows, out.sequences_scores, len(out.scores)


def _prompt_and_eos(seed: int, K: int, eos_position: int | None):
    """A tiny LLaMA pair, a prompt, and an EOS id that makes hypotheses end early: the token transformers' best
    beam (searched without EOS) generates at `eos_position` (None: no EOS)."""
    from .helpers import tiny_llama_pair

    ours, theirs = tiny_llama_pair(seed)
    ids = torch.randint(3, 61, (1, 5), generator=torch.Generator().manual_seed(seed))
    if eos_position is None:
        return ours, theirs, ids, None
    best, _, _ = _transformers_beam_search(theirs, ids, K, 8, 1.0, None, 1)
    return ours, theirs, ids, best[0][eos_position]


def _as_lists(hypotheses) -> list[list[int]]:
    return [[int(t) for t in tokens] for tokens in hypotheses]


def test_beam_search_without_eos_matches_transformers(impl):
    """没有 EOS：K = 3 的束搜索返回的 3 个假设及其分数与 transformers 的 generate(num_beams=3) 相同"""
    ours, theirs, ids, _ = _prompt_and_eos(1, 3, None)
    expected, scores, _ = _transformers_beam_search(theirs, ids, 3, 6, 1.0, None, 3)
    got = impl.beam_search(ours, ids, 3, 6, 1.0, None, 3)
    if not isinstance(got, tuple) or len(got) != 2:
        raise AssertionError("返回 (假设的列表, 分数张量) 两项")
    check_equal(_as_lists(got[0]), expected,
                "每步：log_softmax + 束的累计分数，展平成 K·V，取最好的 2K 个候选；前 K 个不结束的成为新束，缓存随之 "
                "reorder；到最大长度时排名前 K 的候选进入已完成的堆；返回最好的 num_return_sequences 个（只含新 token）")
    check_close(got[1], scores, "分数 = 累计 log 概率 / 生成长度 ** length_penalty，从高到低", atol=1e-4)


@pytest.mark.parametrize("seed, K, eos_position, length_penalty", [
    (3, 3, 3, 1.0),    # hypotheses end with EOS; the search stops after 4 steps
    (3, 3, 3, 0.5),    # the same, a weaker length penalty: a shorter hypothesis wins
    (1, 3, 3, 0.5),    # an EOS candidate ranked below K must not finish
    (4, 2, 3, 2.0),    # length_penalty 2 favours the long ones
    (0, 2, 1, 2.0),    # EOS after 2 tokens: both hypotheses end early and the search stops at once
    (8, 3, 5, 1.0),    # several beams pick EOS in one step: 2K candidates still leave K that go on
])
def test_beam_search_with_eos_and_length_penalty_matches_transformers(impl, seed, K, eos_position, length_penalty):
    """有 EOS（假设提前结束），length_penalty 为 0.5、1 或 2：所有假设及其分数与 transformers 的 generate 相同"""
    ours, theirs, ids, eos = _prompt_and_eos(seed, K, eos_position)
    expected, scores, _ = _transformers_beam_search(theirs, ids, K, 8, length_penalty, eos, K)
    hypotheses, got_scores = impl.beam_search(ours, ids, K, 8, length_penalty, eos, K)
    check_equal(_as_lists(hypotheses), expected,
                "候选的 token 是 EOS 就结束：只有排名前 K 的结束候选放进堆（分数 = 累计 log 概率 / n ** length_penalty，"
                "n 含 EOS），堆里最多 K 个；不结束的前 K 个才是新束；假设要含 EOS，按分数从高到低返回")
    check_close(got_scores, scores, "已完成假设的分数 = 累计 log 概率 / 生成长度 ** length_penalty", atol=1e-4)


@pytest.mark.parametrize("seed, K, eos_position, length_penalty", [(3, 3, 3, 1.0), (0, 2, 1, 2.0)])
def test_beam_search_stops_when_transformers_stops(impl, seed, K, eos_position, length_penalty):
    """提前停止与 transformers 默认的 early_stopping=False 同一步；用 KV 缓存：prefill 一次，之后每步只送新 token"""
    from .helpers import CountingModel

    ours, theirs, ids, eos = _prompt_and_eos(seed, K, eos_position)
    _, _, steps = _transformers_beam_search(theirs, ids, K, 8, length_penalty, eos, K)
    assert steps < 8, "test case broken: transformers ran to the maximum length"
    counting = CountingModel(ours)
    impl.beam_search(counting, ids, K, 8, length_penalty, eos, K)
    check_equal(counting.calls, steps,
                f"transformers 在第 {steps} 步就停了：堆里已有 K 个假设，且最好的运行中的束按当前长度算的分数"
                "（累计 log 概率 / n ** length_penalty）不高于堆里最差的，就不再前向")
    check_equal(counting.tokens_fed, ids.shape[1] + counting.calls - 1,
                "第一次前向送入整个提示词（K 份，形状 (K, T)），之后每步只送每条束的新 token (K, 1)，缓存用 reorder 跟着父束走")
