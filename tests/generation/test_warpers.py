"""The warpers added for locally typical, epsilon and eta sampling, held to transformers 4.55.2's warpers
(processed scores within 1e-5, the same -inf mask), with hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import transformers.generation.logits_process as tlp  # the oracle

from generation import epsilon_filter, eta_filter, typical_filter

VOCAB = 50


def random_scores(seed: int, rows: int = 5, scale: float = 3.0) -> torch.Tensor:
    scores = torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale
    scores[0, :10] = float("-inf")  # a row already filtered by an earlier step
    return scores


def assert_same(got, expected):
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], rtol=0, atol=1e-5)


@pytest.mark.parametrize("mass, keep, seed", [(0.2, 1, 0), (0.5, 1, 1), (0.9, 1, 2), (0.95, 3, 3), (0.05, 4, 4)])
def test_typical_p_matches_transformers(mass, keep, seed):
    scores = random_scores(seed)
    expected = tlp.TypicalLogitsWarper(mass, min_tokens_to_keep=keep)(None, scores.clone())
    assert_same(typical_filter(scores, mass, keep), expected)


@pytest.mark.parametrize("epsilon, keep, seed", [(1e-4, 1, 0), (0.01, 1, 1), (0.1, 1, 2), (0.5, 2, 3), (0.9, 5, 4)])
def test_epsilon_cutoff_matches_transformers(epsilon, keep, seed):
    scores = random_scores(seed)
    expected = tlp.EpsilonLogitsWarper(epsilon, min_tokens_to_keep=keep)(None, scores.clone())
    assert_same(epsilon_filter(scores, epsilon, keep), expected)


@pytest.mark.parametrize("eta, keep, seed", [(1e-4, 1, 0), (0.01, 1, 1), (0.1, 1, 2), (0.3, 2, 3), (0.9, 5, 4)])
def test_eta_cutoff_matches_transformers(eta, keep, seed):
    scores = random_scores(seed, scale=1.0 + seed)
    expected = tlp.EtaLogitsWarper(eta, min_tokens_to_keep=keep)(None, scores.clone())
    assert_same(eta_filter(scores, eta, keep), expected)


def test_typical_hand_computed():
    """p = (0.5, 0.25, 0.125, 0.125): H = 1.75 bits = 1.213 nats; surprisals (nats) 0.693, 1.386, 2.079, 2.079:
    distances 0.520, 0.173, 0.866, 0.866. Most typical first: token 1 (0.25), then 0 (0.25 + 0.5 = 0.75)."""
    scores = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()
    assert torch.isfinite(typical_filter(scores, 0.2)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(typical_filter(scores, 0.7)).tolist() == [[True, True, False, False]]


def test_eta_threshold_hand_computed():
    """Uniform over 4 tokens: H = log 4, sqrt(eta) * exp(-H) = sqrt(0.2) / 4 = 0.1118 < 0.2, and p = 0.25 is
    above it: every token stays. With p = (0.7, 0.1, 0.1, 0.1), H = 0.940 nats: threshold
    min(0.2, sqrt(0.2) * exp(-0.940)) = 0.1747: the three 0.1 tokens go."""
    uniform = torch.zeros(1, 4)
    assert torch.isfinite(eta_filter(uniform, 0.2)).all()
    peaked = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).log()
    entropy = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    assert min(0.2, math.sqrt(0.2) * math.exp(-entropy)) > 0.1
    assert torch.isfinite(eta_filter(peaked, 0.2)).tolist() == [[True, False, False, False]]
