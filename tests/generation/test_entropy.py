"""Entropy-based layer choice: the pure functions against hand-computed cases and the definitions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import accel.entropy as kernel_module
from accel.entropy import entropy_kernel_available, fused_entropy_and_top_token
from generation.entropy import (check_entropy_arguments, consistency_cost, entropy_and_top_token, entropy_bits,
                                random_after_index, trough_index, walk_to_trough)

ACCELERATED = SimpleNamespace(acceleration=SimpleNamespace(entropy_kernel=True))  # what accelerate() marks


def fused(scores: torch.Tensor, normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel, as entropy decoding calls it for an accelerated model."""
    result = fused_entropy_and_top_token(scores, normalize)
    assert result is not None
    return result


def test_entropy_bits_hand_computed():
    assert entropy_bits(torch.zeros(4)).item() == pytest.approx(2.0)  # uniform over 4 tokens: 2 bits
    assert entropy_bits(torch.zeros(4), normalize=True).item() == pytest.approx(1.0)
    assert entropy_bits(torch.tensor([0.5, 0.25, 0.25]).log()).item() == pytest.approx(1.5)
    one_hot = torch.tensor([0.0, -math.inf, -math.inf])  # filtered scores (top-k) are -inf
    assert entropy_bits(one_hot).item() == pytest.approx(0.0)
    p = torch.tensor([0.7, 0.2, 0.1])
    assert entropy_bits(p.log()).item() == pytest.approx(-(p * p.log2()).sum().item(), abs=1e-6)


def entropy_float64(scores: torch.Tensor) -> torch.Tensor:
    """The definition, -sum p log2 p with 0 log 0 = 0, in float64."""
    p = scores.double().softmax(-1)
    return -torch.where(p > 0, p * p.log2(), torch.zeros_like(p)).sum(-1)


def awkward_rows(width: int, generator: torch.Generator) -> torch.Tensor:
    """Rows (6, width): spread, filtered (-inf), uniform, one spike, a tie for the top, a very peaked one."""
    rows = torch.randn(6, width, generator=generator) * 4
    rows[1, 1::3] = -math.inf
    rows[2] = 0.0
    rows[3, width // 2] = 60.0
    rows[4, [0, width - 1]] = 30.0  # the first of two equal maxima is argmax's choice
    rows[5] *= 40.0
    return rows


needs_entropy_kernel = pytest.mark.skipif(not entropy_kernel_available(),
                                          reason="the fused entropy kernel cannot be built here")


@needs_entropy_kernel
@pytest.mark.parametrize("width", [1, 2, 7, 8, 15, 16, 17, 96, 1001, 49152])
def test_fused_kernel_gives_the_entropy_and_the_top_token(width):
    rows = awkward_rows(width, torch.Generator().manual_seed(width))
    entropy, top = fused(rows)
    finite = torch.isfinite(rows).any(-1)  # rows with a token left (all of them here; NaN rows: the next test)
    torch.testing.assert_close(entropy[finite].double(), entropy_float64(rows)[finite], rtol=0, atol=2e-5)
    # entropy_bits sums 49152 float32 terms in PyTorch's order: off by up to ~5e-5 relative at that width
    torch.testing.assert_close(entropy[finite], entropy_bits(rows)[finite], rtol=1e-4, atol=2e-5)
    assert torch.equal(top, rows.argmax(-1))
    normalized, _ = fused(rows, normalize=True)
    if width > 1:
        torch.testing.assert_close(normalized[finite].double(), entropy_float64(rows)[finite] / math.log2(width),
                                   rtol=0, atol=2e-6)


@needs_entropy_kernel
def test_fused_kernel_on_hand_computed_rows_and_the_edge_cases():
    rows = torch.full((5, 40), -math.inf)
    rows[0, :4] = 0.0  # uniform over 4 tokens: exactly 2 bits
    rows[1, :8] = 1.5  # over 8: exactly 3
    rows[2, 7] = 0.0  # one token left: 0
    rows[3] = torch.arange(40.0)
    rows[3, 9] = math.nan  # a NaN: entropy NaN, argmax at the NaN (as torch.argmax)
    entropy, top = fused(rows)  # row 4: every token removed: NaN, like entropy_bits
    assert entropy[:3].tolist() == [2.0, 3.0, 0.0]
    assert entropy[3:].isnan().all() and entropy_bits(rows)[3:].isnan().all()
    assert top.tolist() == rows.argmax(-1).tolist() == [0, 0, 7, 9, 0]
    batch = torch.randn(3, 2, 50)  # leading dimensions are kept, as entropy_bits keeps them
    entropy, top = fused(batch)
    assert entropy.shape == top.shape == (3, 2)
    torch.testing.assert_close(entropy, entropy_bits(batch), rtol=0, atol=1e-5)


def test_without_the_kernel_the_same_numbers_come_from_pytorch(monkeypatch):
    """A plain model, an accelerated one where the kernel cannot run, or scores it does not take: the formula."""
    rows = awkward_rows(300, torch.Generator().manual_seed(0))
    for model in (None, SimpleNamespace(acceleration=SimpleNamespace(entropy_kernel=False))):
        entropy, top = entropy_and_top_token(rows, model=model)
        assert torch.equal(entropy, entropy_bits(rows)) and torch.equal(top, rows.argmax(-1))
    monkeypatch.setattr(kernel_module, "entropy_kernel_available", lambda: False)
    entropy, top = entropy_and_top_token(rows, model=ACCELERATED)
    assert torch.equal(entropy, entropy_bits(rows)) and torch.equal(top, rows.argmax(-1))
    half = rows.bfloat16()  # not float32: never the kernel
    monkeypatch.undo()
    entropy, top = entropy_and_top_token(half, model=ACCELERATED)
    assert torch.equal(entropy, entropy_bits(half)) and torch.equal(top, half.argmax(-1))


@needs_entropy_kernel
def test_an_accelerated_model_takes_the_kernel(monkeypatch):
    rows = awkward_rows(300, torch.Generator().manual_seed(1))
    calls = []
    monkeypatch.setattr(kernel_module, "fused_entropy_and_top_token",
                        lambda *args: calls.append(1) or fused_entropy_and_top_token(*args))
    entropy, top = entropy_and_top_token(rows, model=ACCELERATED)
    assert calls and torch.equal(top, rows.argmax(-1))
    torch.testing.assert_close(entropy, entropy_bits(rows), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("costs, expected", [
    ([3, 1, 2, 4], 1),  # 4 > 2 > 1, then 3 is not lower: trough at column 1
    ([4, 3, 2, 1], 3),  # already rising below the last layer: stay at the last
    ([1, 2, 3, 4], 0),  # falls all the way down
    ([5, 2, 2, 3], 2),  # a tie stops the walk (strictly falling)
    ([7], 0),
])
def test_trough_hand_computed(costs, expected):
    assert trough_index(torch.tensor([costs], dtype=torch.float)).tolist() == [expected]


def test_random_after_is_uniform_between_trough_and_last_and_reproducible():
    trough = torch.tensor([1, 3, 0])
    draws = torch.stack([random_after_index(trough, 3, torch.Generator().manual_seed(s)) for s in range(600)])
    assert (draws[:, 1] == 3).all()  # trough == last: nothing to draw
    assert set(draws[:, 0].tolist()) == {1, 2, 3} and set(draws[:, 2].tolist()) == {0, 1, 2, 3}
    counts = torch.bincount(draws[:, 0], minlength=4)[1:].float() / 600
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.07)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(random_after_index(trough, 3, g1), random_after_index(trough, 3, g2))


def test_consistency_cost_hand_computed():
    entropy = torch.tensor([[2.0], [1.0]])  # (L=2, B=1)
    last = torch.tensor([[1.0, 0.0]])
    hidden = torch.tensor([[[1.0, 0.0]], [[0.0, 3.0]]])  # layer 0 parallel to h_N (cos 1), layer 1 orthogonal
    assert consistency_cost(entropy, hidden, last, alpha=0.5).tolist() == [[1.5], [1.0]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=12, max_size=12), min_size=1, max_size=4),
       st.sampled_from([1, 3, 8]))
def test_lazy_walk_finds_the_same_trough_as_the_full_table(rows, first_chunk):
    costs = torch.tensor(rows, dtype=torch.float)  # (B, L=12), few distinct values: many ties and plateaus
    layers = list(range(1, 13))
    asked = []

    def layer_costs(chunk):
        asked.extend(chunk)
        return costs[:, [j - 1 for j in chunk]]

    trough, computed, computed_costs = walk_to_trough(layer_costs, costs[:, -1], layers, first_chunk)
    assert torch.equal(trough, trough_index(costs))
    assert len(asked) == len(set(asked)) and computed == sorted(asked + [12])  # each layer at most once
    assert torch.equal(computed_costs, costs[:, [j - 1 for j in computed]])


def test_lazy_walk_stops_early_when_the_last_layer_is_the_trough():
    costs = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0, 5, 1]])  # layer 12 (cost 1) < layer 11 (cost 5)
    asked = []
    trough, computed, _ = walk_to_trough(lambda c: asked.extend(c) or costs[:, [j - 1 for j in c]],
                                         costs[:, -1], list(range(1, 13)))
    assert trough.tolist() == [11] and asked == [11]  # one extra layer computed, not eleven


def test_bad_entropy_arguments_are_refused():
    with pytest.raises(ValueError, match="entropy_decoding must be one of"):
        check_entropy_arguments("valley", None)
    with pytest.raises(ValueError, match="entropy_consistency_alpha"):
        check_entropy_arguments("trough", -1.0)
