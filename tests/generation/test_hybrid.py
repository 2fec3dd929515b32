"""Hybrid small/large routing (generation/hybrid.py), LogU uncertainty and the profiler, against references:

- LogU's aleatoric / epistemic formulas on hand-computed cases (psi(n + 1) - psi(n) = 1/n);
- routing at the two extreme thresholds must reproduce generate() of the small / the large model alone,
  greedy and sampled with the same seed;
- a mixed run must equal a reference written here without any cache (a full forward of each model over the
  whole sequence at every step, the routing rule applied by hand), and both caches must equal a plain forward;
- the profile's records must hold the small model's measures and the chosen model's probabilities.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from helpers import save_tiny_llama
from generation import generate, generate_with_profile, hybrid_generate
from generation.hybrid import HybridStats
from generation.profiling import ProfileResult, TokenRecord
from generation.profiling import spearman
from generation.uncertainty import logu_uncertainty, share_threshold
from model import load_pretrained
from test_speculative import assert_cache_matches_forward

PROMPT = torch.tensor([[1, 5, 9, 13, 20]])
ENTROPY_THRESHOLD = 4.9  # bits; the tiny small model's entropies spread over about 3.9 .. 5.7


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(small, large): unrelated tiny LLaMAs (2 and 3 layers) with one vocabulary, float64."""
    folder = tmp_path_factory.mktemp("hybrid")
    save_tiny_llama(folder / "small", seed=0, num_hidden_layers=2, initializer_range=0.3)
    save_tiny_llama(folder / "large", seed=1, num_hidden_layers=3, initializer_range=0.3)
    return (load_pretrained(folder / "small", dtype=torch.float64),
            load_pretrained(folder / "large", dtype=torch.float64))


class DigitTokenizer:
    def decode(self, ids):
        return "".join(f"t{i} " for i in ids)


def entropy_in_bits(logits: torch.Tensor) -> float:
    p = logits.double().softmax(-1)
    return float(-(p * p.log2()).sum())


# --------------------------------------------------------------------------- LogU on hand-computed cases
def test_logu_matches_hand_computed_values():
    # evidence (1, 1): AU = psi(3) - psi(2) = 1/2; EU = 2 / (2 + 2) = 1/2
    # evidence (3, 1): AU = 3/4 (psi(5) - psi(4)) + 1/4 (psi(5) - psi(2)) = 3/16 + (1/2 + 1/3 + 1/4) / 4; EU = 2/6
    # no evidence (negative logits): expected probabilities uniform, AU = 0, EU = K / K = 1
    logits = torch.tensor([[1.0, 1.0, -2.0], [1.0, 3.0, 0.0], [-1.0, -2.0, -3.0]])
    aleatoric, epistemic = logu_uncertainty(logits, top_k=2)
    torch.testing.assert_close(aleatoric, torch.tensor([0.5, 3 / 16 + (1 / 2 + 1 / 3 + 1 / 4) / 4, 0.0]))
    torch.testing.assert_close(epistemic, torch.tensor([0.5, 1 / 3, 1.0]))
    with pytest.raises(ValueError, match="logu top_k"):
        logu_uncertainty(logits, top_k=4)


# --------------------------------------------------------------------------- extremes = one model alone
@pytest.mark.parametrize("do_sample", [False, True])
def test_extreme_thresholds_reproduce_each_model_alone(models, do_sample):
    small, large = models
    options = dict(max_new_tokens=15, eos_token_id=[], do_sample=do_sample)
    if do_sample:
        options["temperature"] = 0.8
    for threshold, alone in ((math.inf, small), (-1.0, large)):
        expected = generate(alone, PROMPT, generator=torch.Generator().manual_seed(3), **options)
        out = hybrid_generate(small, large, PROMPT, routing_metric="entropy", threshold=threshold,
                              generator=torch.Generator().manual_seed(3), **options)
        assert torch.equal(out.sequences, expected.sequences)
    assert out.stats.large_tokens == 15 and out.stats.small_tokens == 0


# --------------------------------------------------------------------------- mixed routing, caches in sync
def uncached_routing(small, large, steps: int, threshold: float) -> tuple[torch.Tensor, list[str], list[float]]:
    """The routing rule with no cache at all: each model reads the whole sequence at every step."""
    sequence, used, entropies = PROMPT, [], []
    with torch.no_grad():
        for _ in range(steps):
            small_logits = small(sequence).logits[0, -1]
            entropies.append(entropy_in_bits(small_logits))
            use_large = entropies[-1] > threshold
            logits = large(sequence).logits[0, -1] if use_large else small_logits
            used.append("llm" if use_large else "slm")
            sequence = torch.cat([sequence, logits.argmax().view(1, 1)], dim=1)
    return sequence, used, entropies


def test_mixed_routing_equals_an_uncached_reference_and_caches_stay_in_sync(models):
    small, large = models
    expected, used, entropies = uncached_routing(small, large, 20, ENTROPY_THRESHOLD)
    assert min(abs(h - ENTROPY_THRESHOLD) for h in entropies) > 1e-6  # no decision rests on rounding
    assert 3 <= used.count("llm") <= 17  # both models write, in several alternating runs
    profile = generate_with_profile(small, large, PROMPT, routing_metric="entropy", threshold=ENTROPY_THRESHOLD,
                                    max_new_tokens=20, eos_token_id=[])
    assert torch.equal(profile.sequences, expected)
    assert [t.model_used for t in profile.tokens] == used
    out = hybrid_generate(small, large, PROMPT, routing_metric="entropy", threshold=ENTROPY_THRESHOLD,
                          max_new_tokens=20, eos_token_id=[])
    assert torch.equal(out.sequences, expected)
    assert out.stats.large_tokens == used.count("llm") == out.stats.large_forward_passes
    n = out.sequences.shape[1]
    assert out.caches["slm"].get_seq_length() == n - 1  # the small model has read every token but the last
    assert out.caches["llm"].get_seq_length() <= n - 1  # the large one up to the last token it chose
    assert_cache_matches_forward(small, out.caches["slm"], out.sequences)
    assert_cache_matches_forward(large, out.caches["llm"], out.sequences)


# --------------------------------------------------------------------------- the profile
def test_profile_records_hold_the_small_models_measures_and_the_chosen_distribution(models, tmp_path):
    small, large = models
    profile = generate_with_profile(small, large, PROMPT, routing_metric="aleatoric", threshold=2.135,
                                    max_new_tokens=12, eos_token_id=[], tokenizer=DigitTokenizer(), top_probs=3)
    new = profile.sequences[0, PROMPT.shape[1]:].tolist()
    assert [t.token_id for t in profile.tokens] == new and [t.position for t in profile.tokens] == list(range(12))
    assert {t.model_used for t in profile.tokens} == {"slm", "llm"}
    assert profile.generated_text == DigitTokenizer().decode(new) and profile.tokens[0].token_text == f"t{new[0]} "
    with torch.no_grad():
        small_logits = small(profile.sequences).logits[0, PROMPT.shape[1] - 1:-1]  # (12, V) what predicted each
        large_logits = large(profile.sequences).logits[0, PROMPT.shape[1] - 1:-1]
    for i, record in enumerate(profile.tokens):
        assert record.entropy == pytest.approx(entropy_in_bits(small_logits[i]), abs=1e-5)
        evidence = small_logits[i].topk(10).values.clamp(min=0)
        assert record.epistemic_uncertainty == pytest.approx(10 / float((evidence + 1).sum()), abs=1e-5)
        strength = evidence.sum()
        aleatoric = -(evidence / strength * (torch.digamma(evidence + 1) - torch.digamma(strength + 1))).sum()
        assert record.aleatoric_uncertainty == pytest.approx(float(aleatoric), abs=1e-5)
        assert (record.aleatoric_uncertainty > 2.135) == (record.model_used == "llm")
        chosen = (large_logits if record.model_used == "llm" else small_logits)[i].softmax(-1).topk(3)
        assert [tid for tid, _ in record.top_k_probs] == chosen.indices.tolist()
        assert [p for _, p in record.top_k_probs] == pytest.approx(chosen.values.tolist(), abs=1e-6)
    saved = json.loads(profile.save_to_file(tmp_path / "profile.json").read_text())
    assert saved["tokens"] == json.loads(json.dumps([asdict(t) for t in profile.tokens]))
    assert saved["stop_reasons"] == profile.stop_reasons == ["max_new_tokens"]
    assert saved["stats"]["large_tokens"] == sum(t.model_used == "llm" for t in profile.tokens)
    assert set(saved["analysis"]) == {"entropy", "aleatoric", "epistemic"}
    png = profile.plot_distributions(tmp_path / "profile.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def hand_made_profile(values: list[float]) -> ProfileResult:
    tokens = [TokenRecord(i, f"t{i}", i, entropy=v, aleatoric_uncertainty=v, epistemic_uncertainty=0.0,
                          model_used="slm", top_k_probs=[]) for i, v in enumerate(values)]
    return ProfileResult(tokens, "", HybridStats("aleatoric", 0.5, new_tokens=len(values), seconds=1.0),
                         torch.zeros(1, 0, dtype=torch.long), "hand")


def test_distribution_analysis_on_hand_computed_percentiles(capsys):
    profile = hand_made_profile([3.0, 1.0, 4.0, 10.0, 5.0, 9.0, 2.0, 6.0, 8.0, 7.0])  # 1..10 shuffled
    a = profile.analyze_distribution("uncertainty", percentiles=[10, 20, 50])
    assert a["count"] == 10 and a["mean"] == 5.5 and a["median"] == 5.5 and (a["min"], a["max"]) == (1.0, 10.0)
    assert a["std"] == pytest.approx(math.sqrt(8.25))  # population std of 1..10
    # linear interpolation on the sorted values: the q-quantile sits at index q * 9
    assert a["percentiles"] == pytest.approx({"top_10%": 9.1, "top_20%": 8.2, "top_50%": 5.5})
    assert a["top_10_percent"] == {"mean": 10.0, "min": 10.0, "max": 10.0, "count": 1}
    assert [t.aleatoric_uncertainty for t in profile.get_high_uncertainty_tokens(3)] == [10.0, 9.0, 8.0]
    profile.print_summary(top_n=2)
    printed = capsys.readouterr().out
    assert "Profile Summary - Strategy: hand" in printed and "top_10%: 9.1000" in printed
    assert "Top 2 Most Uncertain Tokens" in printed and "Pos   3" in printed
    with pytest.raises(ValueError, match="metric must be one of"):
        profile.analyze_distribution("surprise")


def test_bad_routing_arguments_are_refused(models):
    small, large = models
    with pytest.raises(ValueError, match="routing_metric must be one of"):
        hybrid_generate(small, large, PROMPT, routing_metric="surprise", threshold=0.5)
    with pytest.raises(ValueError, match="not both"):
        hybrid_generate(small, large, PROMPT, threshold=0.5, share=0.2)
    with pytest.raises(ValueError, match="share must be a number in"):
        hybrid_generate(small, large, PROMPT, share=1.5)
    with pytest.raises(ValueError, match="calibration_ids must be one text"):
        hybrid_generate(small, large, PROMPT, share=0.5, calibration_ids=PROMPT[:, :1])
    with pytest.raises(ValueError, match="threshold must be a number"):
        hybrid_generate(small, large, PROMPT)
    with pytest.raises(ValueError, match="one unpadded prompt"):
        hybrid_generate(small, large, PROMPT.repeat(2, 1), threshold=0.5)
    with pytest.raises(ValueError, match="top_probs"):
        generate_with_profile(small, None, PROMPT, top_probs=0)


# --------------------------------------------------------------------------- seed 003's name, shares, separation
def test_uncertainty_is_seed_003s_name_for_aleatoric(models):
    small, large = models
    options = dict(threshold=2.135, max_new_tokens=12, eos_token_id=[])
    named = hybrid_generate(small, large, PROMPT, routing_metric="uncertainty", **options)
    aleatoric = hybrid_generate(small, large, PROMPT, routing_metric="aleatoric", **options)
    assert torch.equal(named.sequences, aleatoric.sequences) and named.stats.routing_metric == "aleatoric"
    profile = generate_with_profile(small, large, PROMPT, routing_metric="uncertainty", **options)
    assert profile.strategy == "profiled_aleatoric"


def test_share_threshold_on_hand_computed_cases():
    values = torch.tensor([0.5, 3.0, 1.0, 2.0])
    assert share_threshold(values, 0.5) == 1.5  # between the 2nd (2.0) and 3rd (1.0) largest
    assert share_threshold(values, 0.25) == 2.5
    assert share_threshold(values, 0.0) == 3.0  # nothing is above the largest
    assert share_threshold(values, 1.0) < 0.5
    assert share_threshold(values, 0.3) == 2.5  # round(0.3 * 4) = 1 token


def test_spearman_on_hand_computed_cases():
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120
    assert spearman(torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([2.0, 1, 4, 3, 5])) == pytest.approx(0.8)
    # ties share their average rank: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4) -> 4.5 / sqrt(4.5 * 5)
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(4.5 / 22.5 ** 0.5)
    assert math.isnan(spearman(torch.ones(4), torch.tensor([1.0, 2, 3, 4])))


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_a_share_routes_that_share_of_tokens(models, share):
    # The same model as small and large: routing never changes the sequence, so the calibration run on the
    # prompt sees exactly the routed run's measures and the count must be round(share * n) exactly.
    small, _ = models
    for metric in ("entropy", "aleatoric", "epistemic"):
        out = hybrid_generate(small, small, PROMPT, routing_metric=metric, share=share, max_new_tokens=16,
                              eos_token_id=[])
        assert out.stats.large_tokens == round(share * 16) and out.stats.share == share


def test_a_share_calibrated_on_a_text_uses_its_teacher_forced_measures(models):
    small, large = models
    text = torch.tensor([[3, 8, 1, 40, 41, 7, 7, 9, 60, 2, 11]])
    with torch.no_grad():
        logits = small(text).logits[0, :-1].double()  # (10, V)
    entropies = [entropy_in_bits(row) for row in logits]
    expected = sorted(entropies, reverse=True)[2:4]  # share 0.3 of 10: between the 3rd and 4th largest
    out = hybrid_generate(small, large, PROMPT, routing_metric="entropy", share=0.3, calibration_ids=text,
                          max_new_tokens=8, eos_token_id=[])
    assert out.stats.threshold == pytest.approx(sum(expected) / 2, abs=1e-5)


def test_separation_report_and_flat_metric_warning(models):
    small, large = models
    profile = generate_with_profile(small, large, PROMPT, routing_metric="entropy", threshold=ENTROPY_THRESHOLD,
                                    max_new_tokens=20, eos_token_id=[])
    with torch.no_grad():
        best_small = small(profile.sequences).logits[0, PROMPT.shape[1] - 1:-1].argmax(-1)
        best_large = large(profile.sequences).logits[0, PROMPT.shape[1] - 1:-1].argmax(-1)
    assert [t.models_disagree for t in profile.tokens] == (best_small != best_large).tolist()
    report = profile.separation()
    assert report["entropy"]["spearman_with_entropy"] == pytest.approx(1.0)
    assert report["entropy"]["spearman_with_disagreement"] is not None
    flat = hand_made_profile([2.30, 2.31, 2.29, 2.30, 2.32])
    assert "barely varies" in flat.flat_metric_warning("aleatoric")
    assert hand_made_profile([0.1, 2.0, 5.0, 0.3, 1.0]).flat_metric_warning("aleatoric") is None
