"""DoLa's pure functions against hand-computed cases, the paper's formulas and transformers 4.55.2's own code."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.utils import _dola_select_contrast

from generation.dola import (bucket_layers, check_dola_arguments, dola_buckets, dola_candidate_layers,
                             dola_contrast, jensen_shannon_divergence, paper_dola_scores, plausibility_mask,
                             select_premature_layer, transformers_dola_scores)

LN2 = math.log(2.0)


def log(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


# ------------------------------------------------------------------------------------ candidate layers

@pytest.mark.parametrize("N, tied, which, expected", [
    (30, True, "low", [2, 4, 6, 8, 10, 12, 14]),  # range(2, 15, 2): tied embeddings skip layer 0
    (30, True, "high", [15, 17, 19, 21, 23, 25, 27, 29]),  # range(15, 30, 2)
    (30, False, "low", [0, 2, 4, 6, 8, 10, 12, 14]),
    (48, True, "low", [2, 4, 6, 8, 10, 12, 14, 16, 18]),  # N > 40: the first 20 layers
    (48, True, "high", list(range(28, 48, 2))),  # N > 40: the last 20 layers
    (2, True, "low", [1]),  # start == N // 2
    (2, False, "low", [0]),
    (2, True, "high", [1]),
])
def test_low_high_follow_transformers_rule(N, tied, which, expected):
    assert dola_candidate_layers(which, N, tied) == expected


def test_empty_transformers_rule_is_refused():
    # 3 tied layers: transformers starts at layer 2 and takes range(2, 3 // 2, 2), which is empty.
    with pytest.raises(ValueError, match="no candidate layer"):
        dola_candidate_layers("low", 3, True)


def test_seed_buckets_for_30_layers():
    assert dola_buckets(30) == [(1, 10), (11, 20), (21, 29)]
    assert bucket_layers(21, 29) == [22, 24, 26, 28]  # the seed's example
    assert dola_candidate_layers("bucket0", 30, True) == [2, 4, 6, 8, 10]
    assert dola_candidate_layers("bucket2", 30, True) == [22, 24, 26, 28]
    assert dola_buckets(2) == [(1, 1)] and dola_candidate_layers("bucket0", 2, True) == [1]


@pytest.mark.parametrize("dola_layers, message", [
    ("middle", "dola_layers must be 'low', 'high'"),
    ("bucket3", "bucket0"),
    ([4, 30], "layer indices in 0..29"),
    ([], "layer indices"),
    ([-1], "layer indices"),
])
def test_bad_dola_layers_are_refused(dola_layers, message):
    with pytest.raises(ValueError, match=message):
        dola_candidate_layers(dola_layers, 30, True)


def test_bad_variant_and_alpha_are_refused():
    with pytest.raises(ValueError, match="dola_variant must be one of"):
        check_dola_arguments("official", 0.1)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        check_dola_arguments("paper", 1.5)


# ------------------------------------------------------------------------------------------ formulas

def test_jsd_hand_computed():
    # P = [1/2, 1/2, 0], Q = [0, 1/2, 1/2], A = [1/4, 1/2, 1/4]: KL(P||A) = KL(Q||A) = 1/2 ln 2.
    assert jensen_shannon_divergence(log([0.5, 0.5, 0.0]), log([0.0, 0.5, 0.5])).item() == pytest.approx(LN2 / 2)
    assert jensen_shannon_divergence(log([1.0, 0.0]), log([0.0, 1.0])).item() == pytest.approx(LN2)  # disjoint
    p = log([0.2, 0.3, 0.5])
    assert jensen_shannon_divergence(p, p).item() == pytest.approx(0.0, abs=1e-12)


def test_jsd_matches_definition_on_random_distributions():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(4, 7, generator=g).softmax(-1), torch.randn(4, 7, generator=g).softmax(-1)
    a = (p + q) / 2
    expected = 0.5 * (p * (p / a).log()).sum(-1) + 0.5 * (q * (q / a).log()).sum(-1)
    assert torch.allclose(jensen_shannon_divergence(p.log(), q.log()), expected, atol=1e-6)


def test_premature_layer_is_argmax_jsd_per_row():
    final = torch.stack([log([0.7, 0.2, 0.1]), log([0.1, 0.2, 0.7])]).float()  # (B=2, V=3)
    near_row0 = log([0.6, 0.3, 0.1]).float()
    near_row1 = log([0.1, 0.3, 0.6]).float()
    premature = torch.stack([torch.stack([near_row0, near_row0]),  # candidate 0: close to row 0 only
                             torch.stack([near_row1, near_row1])])  # candidate 1: close to row 1 only
    index, jsd = select_premature_layer(final, premature)
    assert index.tolist() == [1, 0]  # each row picks the layer that disagrees with it most
    assert jsd.shape == (2, 2)


def test_plausibility_mask_hand_computed():
    q = log([0.5, 0.3, 0.04, 0.16]).float()[None]
    assert plausibility_mask(q, 0.1).tolist() == [[True, True, False, True]]  # threshold 0.05
    assert plausibility_mask(q, 1.0).tolist() == [[True, False, False, False]]
    assert plausibility_mask(q, 0.0).all()


def test_alpha_one_keeps_only_the_top_token():
    g = torch.Generator().manual_seed(1)
    final, premature = torch.randn(5, 50, generator=g), torch.randn(3, 5, 50, generator=g)
    scores, _, _ = paper_dola_scores(final, premature, [1, 2, 3], alpha=1.0)
    assert torch.equal(scores.argmax(-1), final.argmax(-1))
    assert (scores.isfinite().sum(-1) == 1).all()


def test_uniform_premature_and_alpha_zero_give_q_n_exactly():
    g = torch.Generator().manual_seed(2)
    final_lp = torch.randn(3, 40, generator=g, dtype=torch.float64).log_softmax(-1)
    uniform = torch.full_like(final_lp, -math.log(40))
    p_hat = dola_contrast(final_lp, uniform, alpha=0.0).softmax(-1)
    assert torch.allclose(p_hat, final_lp.exp(), atol=1e-12)


def test_premature_equal_to_mature_gives_uniform_on_v_head():
    # The correction to seed 001 section 6: M = N makes p_hat uniform over V_head, not q_N.
    final_lp = log([0.5, 0.3, 0.04, 0.16]).float()[None]
    p_hat = dola_contrast(final_lp, final_lp, alpha=0.1).softmax(-1)
    assert torch.allclose(p_hat, torch.tensor([[1 / 3, 1 / 3, 0.0, 1 / 3]]))


def test_paper_contrast_is_log_ratio_on_v_head():
    final = log([0.5, 0.3, 0.04, 0.16]).float()[None]
    premature = log([0.25, 0.25, 0.25, 0.25]).float()[None, None]
    scores, layer, _ = paper_dola_scores(final, premature, [7], alpha=0.1)
    # F = log(q_N / q_M) = log [2, 1.2, -, 0.64] on V_head, so p_hat = [2, 1.2, 0, 0.64] / 3.84.
    assert scores[0].exp().tolist() == pytest.approx([2 / 3.84, 1.2 / 3.84, 0.0, 0.64 / 3.84], abs=1e-6)
    assert scores[0, 2].item() == -math.inf
    assert layer.tolist() == [7]


# ---------------------------------------------------------------------- transformers variant, same choices

@pytest.mark.parametrize("num_layers, spread, dtype", [(1, 3, torch.float32), (3, 3, torch.float32),
                                                       (8, 3, torch.float32), (8, 3, torch.bfloat16),
                                                       (5, 80, torch.float32)])
def test_transformers_variant_equals_transformers_select_contrast(num_layers, spread, dtype):
    """Including premature logits in bfloat16 (a half-precision model) and a spread so wide that softmax
    underflows to exact zeros (transformers' xlogy takes 0 log 0 = 0 there)."""
    g = torch.Generator().manual_seed(3)
    final = spread * torch.randn(4, 64, generator=g)
    premature = (spread * torch.randn(num_layers, 4, 64, generator=g)).to(dtype)
    layers = [2 * i for i in range(num_layers)]
    ours, chosen, _ = transformers_dola_scores(final, premature, layers)
    reference = _dola_select_contrast(layers, dict(zip(layers, premature)), final.clone())
    assert torch.equal(ours, reference)
    # the layer recorded is the one whose contrast transformers returned, the same for every row
    matching = [j for j, logits in zip(layers, premature)
                if torch.equal(dola_contrast(final.log_softmax(-1), logits.log_softmax(-1), 0.1), reference)]
    assert chosen.tolist() == [matching[0]] * final.shape[0]
