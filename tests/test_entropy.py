"""Entropy-based layer choice: the pure functions against hand-computed cases and the definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.entropy import (check_entropy_arguments, consistency_cost, entropy_bits, random_after_index,
                                trough_index, walk_to_trough)


def test_entropy_bits_hand_computed():
    assert entropy_bits(torch.zeros(4)).item() == pytest.approx(2.0)  # uniform over 4 tokens: 2 bits
    assert entropy_bits(torch.zeros(4), normalize=True).item() == pytest.approx(1.0)
    assert entropy_bits(torch.tensor([0.5, 0.25, 0.25]).log()).item() == pytest.approx(1.5)
    one_hot = torch.tensor([0.0, -math.inf, -math.inf])  # filtered scores (top-k) are -inf
    assert entropy_bits(one_hot).item() == pytest.approx(0.0)
    p = torch.tensor([0.7, 0.2, 0.1])
    assert entropy_bits(p.log()).item() == pytest.approx(-(p * p.log2()).sum().item(), abs=1e-6)


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
