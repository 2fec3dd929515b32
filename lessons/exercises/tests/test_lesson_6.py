"""Lesson 6 (one beam-search step) against loops over every (beam, token) pair and hand-computed cases."""

from __future__ import annotations

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
