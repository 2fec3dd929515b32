"""The logits steps and the decode loop's contract, held to transformers' processors, hand-computed
cases (course lesson 5 / seed 004 examples) and statistics; argument checks and their messages."""

from __future__ import annotations

import math

import pytest
import torch
import transformers.generation.logits_process as tlp  # the oracle

from generation import (GenerationOptions, LogitsStep, MinP, RepetitionPenalty, StepNeeds, Temperature, TopK, TopP,
                        build_logits_steps, generate, min_p_filter, no_repeat_ngram, order_steps, repetition_penalty,
                        select_sample, stream, temperature_scale, top_k_filter, top_p_filter)
from model import CausalLM, ModelConfig


VOCAB = 40


@pytest.fixture(scope="module")
def tiny_model():
    config = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.2, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return CausalLM(config).eval()


def random_scores(rows=4, vocab=VOCAB, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def assert_same_filter(got, expected):
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- each step vs transformers
@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    scores = random_scores()
    ids = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(1))
    expected = tlp.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
    assert_same_filter(repetition_penalty(scores, ids, penalty), expected)


def test_repetition_penalty_hand_computed():
    """Lesson 5, section 3.5: positive scores are divided, negative ones multiplied, others untouched."""
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    got = repetition_penalty(scores, torch.tensor([[0, 1, 1]]), 2.0)
    assert got.tolist() == [[1.0, -2.0, 0.5, 3.0]]


@pytest.mark.parametrize("ngram_size", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_transformers(ngram_size):
    ids = torch.randint(0, 5, (4, 12), generator=torch.Generator().manual_seed(ngram_size))  # many repeats
    scores = random_scores()
    expected = tlp.NoRepeatNGramLogitsProcessor(ngram_size)(ids, scores.clone())
    assert_same_filter(no_repeat_ngram(scores, ids, ngram_size), expected)


def test_no_repeat_ngram_hand_computed():
    # "a b c a b" with n=3: the prefix "a b" was followed by "c" -> c is banned, nothing else.
    got = no_repeat_ngram(torch.zeros(1, 4), torch.tensor([[0, 1, 2, 0, 1]]), 3)
    assert torch.isinf(got).tolist() == [[False, False, True, False]]


@pytest.mark.parametrize("top_k,keep", [(1, 1), (5, 1), (5, 8), (VOCAB + 3, 1)])
def test_top_k_matches_transformers(top_k, keep):
    scores = random_scores()
    expected = tlp.TopKLogitsWarper(top_k, min_tokens_to_keep=keep)(None, scores.clone())
    assert_same_filter(top_k_filter(scores, top_k, keep), expected)


@pytest.mark.parametrize("top_p,keep", [(0.05, 1), (0.5, 1), (0.9, 1), (0.9, 3), (1.0, 1)])
def test_top_p_matches_transformers(top_p, keep):
    scores = random_scores()
    expected = tlp.TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(None, scores.clone())
    assert_same_filter(top_p_filter(scores, top_p, keep), expected)


def test_top_p_hand_computed():
    """Lesson 5, section 3.4: p = 0.9 keeps [0.9, ...] -> 1 token, [0.4, 0.3, 0.2, 0.1] -> 3 tokens."""
    sharp = torch.tensor([[0.9, 0.05, 0.03, 0.02]]).log()
    flat = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    assert torch.isfinite(top_p_filter(sharp, 0.9)).sum() == 1
    assert torch.isfinite(top_p_filter(flat, 0.9)).tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("min_p,keep", [(0.0, 1), (0.05, 1), (0.3, 1), (1.0, 1), (0.5, 4)])
def test_min_p_matches_transformers(min_p, keep):
    scores = random_scores()
    expected = tlp.MinPLogitsWarper(min_p, min_tokens_to_keep=keep)(None, scores.clone())
    assert_same_filter(min_p_filter(scores, min_p, keep), expected)


def test_min_p_hand_computed():
    # top probability 0.5; min_p 0.3 -> threshold 0.15: drops 0.1 and 0.05, keeps 0.35
    probs = torch.tensor([[0.5, 0.35, 0.1, 0.05]])
    assert torch.isfinite(min_p_filter(probs.log(), 0.3)).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_temperature_matches_transformers(temperature):
    scores = random_scores()
    expected = tlp.TemperatureLogitsWarper(temperature)(None, scores.clone())
    torch.testing.assert_close(temperature_scale(scores, temperature), expected, rtol=0, atol=0)


def test_build_logits_steps_order_follows_transformers():
    def mine(scores, ctx):
        return scores

    options = GenerationOptions(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_p=0.1,
                                repetition_penalty=1.2, no_repeat_ngram_size=2, logits_steps=[mine])
    steps = order_steps(build_logits_steps(options, [2]))
    assert [type(s).__name__ for s in steps] == ["RepetitionPenalty", "NoRepeatNGram", "FunctionStep", "Temperature",
                                                "TopK", "TopP", "MinP"]
    beam = build_logits_steps(GenerationOptions(do_sample=True, num_beams=3, top_k=5), [2, 3])
    assert beam == [TopK(5, min_tokens_to_keep=3)]  # beams keep num_eos + 1 tokens, as transformers
    with pytest.warns(UserWarning, match="ignored"):  # warpers only act on sampling, as in transformers
        assert build_logits_steps(GenerationOptions(top_k=5, temperature=0.5, do_sample=False), [2]) == []


# --------------------------------------------------------------------------- sampling statistics
def chi_square_critical(df: int, z: float = 3.09) -> float:
    """Upper critical value of chi-square at alpha = 0.001 (z = 3.09), Wilson-Hilferty approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_sampling_frequencies_fit_the_processed_distribution(tiny_model):
    """Many one-token samples of one prompt through the whole pipeline vs softmax of the processed scores."""
    draws = 6000
    prompt = torch.tensor([[3, 17, 9, 21]])
    out = generate(tiny_model, prompt, max_new_tokens=1, do_sample=True, num_return_sequences=draws,
                   temperature=1.3, top_p=0.95, output_scores=True, generator=torch.Generator().manual_seed(0))
    probs = out.scores[0][0].softmax(-1).double()  # every row has the same prompt, so the same scores
    assert torch.equal(out.scores[0][0], out.scores[0][-1])
    counts = torch.bincount(out.new_tokens[:, 0], minlength=VOCAB).double()
    assert counts[probs == 0].sum() == 0  # a filtered token is never drawn
    expected = probs * draws
    # Pool the categories expected fewer than 5 times into one, as the chi-square approximation needs.
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expect = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = expect > 0
    statistic = float(((observed[keep] - expect[keep]) ** 2 / expect[keep]).sum())
    df = int(keep.sum()) - 1
    assert df >= 5
    assert statistic < chi_square_critical(df), f"chi2 = {statistic:.1f} with {df} degrees of freedom"


def test_chi_square_check_rejects_a_wrong_distribution():
    """The statistic above is able to fail: samples from a different temperature are rejected."""
    scores = random_scores(rows=1)
    draws = 6000
    tokens = select_sample(temperature_scale(scores, 1.6).expand(draws, -1), torch.Generator().manual_seed(0))
    expected = scores[0].softmax(-1).double() * draws
    counts = torch.bincount(tokens, minlength=VOCAB).double()
    big = expected >= 5
    statistic = float(((counts[big] - expected[big]) ** 2 / expected[big]).sum())
    assert statistic > chi_square_critical(int(big.sum()) - 1)


def test_same_seed_same_tokens_other_seed_other_tokens(tiny_model):
    prompt = torch.tensor([[3, 17, 9, 21], [5, 6, 7, 8]])

    def sample(seed):
        return generate(tiny_model, prompt, max_new_tokens=12, do_sample=True, eos_token_id=[],
                        generator=torch.Generator().manual_seed(seed)).sequences

    assert torch.equal(sample(11), sample(11))
    assert not torch.equal(sample(11), sample(12))


def test_temperature_zero_is_greedy(tiny_model):
    prompt = torch.tensor([[3, 17, 9, 21]])
    greedy = generate(tiny_model, prompt, max_new_tokens=10).sequences
    cold = generate(tiny_model, prompt, max_new_tokens=10, do_sample=True, temperature=0.0).sequences
    assert torch.equal(cold, greedy)


# --------------------------------------------------------------------------- the loop's contract
def test_stream_yields_the_same_tokens_as_generate(tiny_model):
    prompt = torch.tensor([[3, 17, 9, 21], [0, 0, 4, 5]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    out = generate(tiny_model, prompt, mask, max_new_tokens=9, repetition_penalty=1.2)
    streamed = torch.stack(list(stream(tiny_model, prompt, mask, max_new_tokens=9, repetition_penalty=1.2)), dim=1)
    assert torch.equal(streamed, out.new_tokens)


def test_custom_step_runs_in_place_and_records(tiny_model):
    """A user step sits after the penalties, before the warpers, and can record per-step data."""
    seen = []

    def ban_token_13(scores, ctx):
        seen.append((ctx.position, ctx.input_ids.shape[1], ctx.hidden_states))
        ctx.record("p13", scores.softmax(-1)[:, 13])
        return scores.index_fill(-1, torch.tensor([13]), float("-inf"))

    prompt = torch.tensor([[13, 13, 13]])
    out = generate(tiny_model, prompt, max_new_tokens=5, eos_token_id=[], logits_steps=[ban_token_13])
    assert 13 not in out.new_tokens.tolist()[0]
    assert [s[:2] for s in seen] == [(i, 3 + i) for i in range(5)]
    assert all(s[2] is None for s in seen)  # nobody asked for hidden states: none were computed
    assert len(out.records["p13"]) == 5


def test_step_declaring_hidden_states_gets_every_layer(tiny_model):
    class LastLayerLogits(LogitsStep):
        needs = StepNeeds(hidden_states=True)

        def __call__(self, scores, ctx):
            assert len(ctx.hidden_states) == 3 and ctx.hidden_states[0].shape == (1, 1, 32)
            n = len(ctx.hidden_states) - 1
            rebuilt = ctx.model.early_exit_logits(ctx.hidden_states, [n])[0].float()
            torch.testing.assert_close(rebuilt, ctx.logits)  # layer N read out = the normal logits
            ctx.record("checked", True)
            return scores

    out = generate(tiny_model, torch.tensor([[3, 4, 5]]), max_new_tokens=4, eos_token_id=[],
                   logits_steps=[LastLayerLogits()])
    assert out.records["checked"] == [True] * 4


def test_a_step_returning_the_wrong_shape_is_named(tiny_model):
    with pytest.raises(TypeError, match="must return a tensor of shape"):
        generate(tiny_model, torch.tensor([[3, 4]]), logits_steps=[lambda scores, ctx: scores[:, :5]])


class CharTokenizer:
    """Token i decodes to one letter: enough to test that stop strings are matched on decoded text."""

    def decode(self, ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_string_ends_the_row_at_the_token_that_completes_it(tiny_model):
    tok = CharTokenizer()
    prompt = torch.tensor([[3, 17, 9, 21], [5, 6, 7, 8]])
    free = generate(tiny_model, prompt, max_new_tokens=12, eos_token_id=[])
    text = tok.decode(free.new_tokens[0].tolist())
    stop = text[4:6]  # a two-letter string that row 0 produces; it may occur first even earlier
    end = text.index(stop) + len(stop)
    out = generate(tiny_model, prompt, max_new_tokens=12, eos_token_id=[], stop_strings=[stop], tokenizer=tok)
    assert out.stop_reasons[0] == "stop_string"
    assert torch.equal(out.new_tokens[0, :end], free.new_tokens[0, :end])
    assert (out.new_tokens[0, end:] == 0).all()  # pad (config.pad_token_id) after the end


# --------------------------------------------------------------------------- argument checks
BAD_ARGUMENTS = [
    (dict(temperature=-0.5), r"temperature must be a number >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-1), r"top_k must be an integer >= 0"),
    (dict(min_p=1.5), r"min_p must be in \[0, 1\]"),
    (dict(min_p=-0.1), r"min_p must be in \[0, 1\]"),
    (dict(num_beams=0), r"num_beams must be an integer >= 1"),
    (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences \(3\) must be <= num_beams \(2\)"),
    (dict(num_return_sequences=2), r"num_return_sequences=2 needs do_sample=True"),
    (dict(max_new_tokens=0), r"max_new_tokens must be an integer >= 1"),
    (dict(max_new_tokens=100), r"\+ max_new_tokens \(100\) = 103 exceeds max_position_embeddings \(64\)"),
    (dict(repetition_penalty=0.0), r"repetition_penalty must be a number > 0"),
    (dict(no_repeat_ngram_size=-2), r"no_repeat_ngram_size must be an integer >= 0"),
    (dict(early_stopping="always"), r"early_stopping must be True, False or 'never'"),
    (dict(length_penalty="long"), r"length_penalty must be a real number"),
    (dict(eos_token_id=VOCAB), r"eos_token_id 40 is outside the vocabulary \[0, 40\)"),
    (dict(eos_token_id=[2, -1]), r"eos_token_id -1 is outside the vocabulary"),
    (dict(pad_token_id=VOCAB + 1), r"pad_token_id 41 is outside the vocabulary"),
    (dict(stop_strings=["\n"]), r"pass tokenizer="),
    (dict(stop_strings=[""], tokenizer=CharTokenizer()), r"stop_strings must be a non-empty string"),
    (dict(generator=0), r"generator must be a torch.Generator"),
    (dict(do_sample="yes"), r"do_sample must be True or False"),
    (dict(logits_steps=[RepetitionPenalty(1.1)], repetition_penalty=1.2), r"RepetitionPenalty is both in"),
    (dict(logits_steps=[Temperature(0.5)], temperature=0.7, do_sample=True), r"Temperature is both in"),
]


@pytest.mark.parametrize("options,message", BAD_ARGUMENTS)
def test_bad_argument_is_named_before_any_forward_pass(tiny_model, monkeypatch, options, message):
    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(tiny_model, "forward", no_forward)
    with pytest.raises(ValueError, match=message):
        generate(tiny_model, torch.tensor([[3, 4, 5]]), **options)


BAD_INPUTS = [
    (torch.zeros(1, 0, dtype=torch.long), None, r"input_ids is empty"),
    (torch.tensor([3, 4, 5]), None, r"input_ids must be a \(batch, length\) torch.long tensor"),
    (torch.tensor([[3.0, 4.0]]), None, r"torch.long"),
    (torch.tensor([[3, VOCAB]]), None, r"outside the vocabulary \[0, 40\)"),
    (torch.tensor([[3, 4, 5]]), torch.tensor([[1, 1, 0]]), r"right padding"),
    (torch.tensor([[3, 4, 5]]), torch.tensor([[0, 0, 0]]), r"all padding"),
    (torch.tensor([[3, 4, 5]]), torch.tensor([[1, 1]]), r"attention_mask must have the shape of input_ids"),
    (torch.tensor([[3, 4, 5]]), torch.tensor([[0, 2, 1]]), r"only 0 \(padding\) and 1"),
]


@pytest.mark.parametrize("ids,mask,message", BAD_INPUTS)
def test_bad_prompt_is_named(tiny_model, ids, mask, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model, ids, mask)


def test_stream_checks_arguments_at_the_call(tiny_model):
    with pytest.raises(ValueError, match="top_p must be in"):
        stream(tiny_model, torch.tensor([[3, 4]]), top_p=2.0)  # no next(): the error comes at once
    with pytest.raises(ValueError, match="stream\\(\\) needs num_beams=1"):
        stream(tiny_model, torch.tensor([[3, 4]]), num_beams=2)


def test_warpers_without_sampling_warn(tiny_model):
    with pytest.warns(UserWarning, match="temperature, top_k only shape the distribution"):
        generate(tiny_model, torch.tensor([[3, 4]]), max_new_tokens=2, temperature=0.5, top_k=3)


def test_step_objects_are_the_pure_functions():
    scores, ids = random_scores(), torch.randint(0, VOCAB, (4, 6), generator=torch.Generator().manual_seed(3))

    class Ctx:
        input_ids = ids

    assert torch.equal(RepetitionPenalty(1.4)(scores, Ctx), repetition_penalty(scores, ids, 1.4))
    assert torch.equal(TopK(3)(scores, Ctx), top_k_filter(scores, 3))
    assert torch.equal(TopP(0.7)(scores, Ctx), top_p_filter(scores, 0.7))
    assert torch.equal(MinP(0.2)(scores, Ctx), min_p_filter(scores, 0.2))
