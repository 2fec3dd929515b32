"""Penalties that look at the history: transformers' processors (sequence bias, bad words, min_new_tokens) and the
frequency / presence penalties, held to a plain-Python rule (OpenAI's definition; transformers has none)."""

from __future__ import annotations

import pytest
import torch
import transformers
import transformers.generation.logits_process as tlp  # the oracle

from generation import frequency_presence_penalty, generate, sequence_bias
from generation.penalties import bad_words_biases, suppress_eos
from model import load_pretrained

VOCAB = 30


def random_case(seed: int, rows: int = 3, length: int = 12):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, VOCAB, generator=gen) * 3, torch.randint(0, 8, (rows, length), generator=gen)


def plain_frequency_presence(scores: list[float], generated: list[int], frequency: float,
                             presence: float) -> list[float]:
    """OpenAI: mu[j] - c[j] * alpha_frequency - float(c[j] > 0) * alpha_presence."""
    counts = {token: generated.count(token) for token in set(generated)}
    return [s - counts.get(j, 0) * frequency - (presence if counts.get(j, 0) > 0 else 0.0)
            for j, s in enumerate(scores)]


@pytest.mark.parametrize("frequency, presence", [(0.5, 0.0), (0.0, 1.5), (0.7, -0.4), (-1.0, 2.0)])
def test_frequency_presence_penalty_follows_the_plain_rule(frequency, presence):
    scores, generated = random_case(int(10 * frequency + presence + 10))
    got = frequency_presence_penalty(scores, generated, frequency, presence)
    for row in range(scores.shape[0]):
        expected = plain_frequency_presence(scores[row].tolist(), generated[row].tolist(), frequency, presence)
        torch.testing.assert_close(got[row], torch.tensor(expected), rtol=0, atol=1e-5)


def test_frequency_presence_count_the_generated_tokens_only(tmp_path):
    """generate() with the penalties equals a plain greedy loop over transformers' logits with the rule applied
    to the new tokens (the prompt, which repeats token 9, does not count)."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      initializer_range=0.3, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(3)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    prompt = [5, 9, 9, 9, 7]
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            logits = hf(torch.tensor([sequence])).logits[0, -1].tolist()
            scores = plain_frequency_presence(logits, sequence[len(prompt):], 0.8, 0.6)
            sequence.append(max(range(VOCAB), key=lambda j: scores[j]))
    got = generate(load_pretrained(tmp_path), torch.tensor([prompt]), max_new_tokens=10, eos_token_id=[],
                   frequency_penalty=0.8, presence_penalty=0.6)
    assert got.sequences[0].tolist() == sequence
    plain = generate(load_pretrained(tmp_path), torch.tensor([prompt]), max_new_tokens=10, eos_token_id=[])
    assert not torch.equal(plain.sequences, got.sequences)  # the penalties changed the text


@pytest.mark.parametrize("biases", [
    {(4,): -2.0, (6,): 3.0},
    {(1, 2): 5.0, (3,): -1.5, (7, 7): 2.0},
    {(5, 6, 7): -4.0, (6, 7): 1.0, (7,): 0.5},  # nested prefixes add up on token 7
    {tuple(range(1, 15)): 9.0},  # longer than the history: ignored
])
def test_sequence_bias_matches_transformers(biases):
    scores, ids = random_case(len(biases))
    ids[0, -2:] = torch.tensor([5, 6])
    ids[1, -1] = 1
    expected = tlp.SequenceBiasLogitsProcessor(dict(biases))(ids, scores.clone())
    torch.testing.assert_close(sequence_bias(scores, ids, tuple(biases.items())), expected, rtol=0, atol=1e-6)


def test_bad_words_match_transformers_and_an_end_token_is_never_banned():
    scores, ids = random_case(1)
    ids[:, -1] = 3
    bad = [[3, 4], [5], [2], [1, 2, 9]]
    expected = tlp.NoBadWordsLogitsProcessor(bad, eos_token_id=[2])(ids, scores.clone())
    got = sequence_bias(scores, ids, bad_words_biases(bad, [2]))
    assert torch.equal(torch.isinf(got), torch.isinf(expected)) and torch.isinf(got[:, 4]).all()
    assert torch.isfinite(got[:, 2]).all()  # [2] is an end token: banning it would forbid ending


@pytest.mark.parametrize("generated, minimum", [(0, 3), (2, 3), (3, 3), (5, 0)])
def test_min_new_tokens_matches_transformers(generated, minimum):
    scores, ids = random_case(2, length=4 + generated)
    eos = torch.tensor([2, 5])
    expected = tlp.MinNewTokensLengthLogitsProcessor(4, minimum, eos)(ids, scores.clone())
    assert torch.equal(suppress_eos(scores, generated, minimum, eos), expected)


@pytest.mark.parametrize("options, message", [
    (dict(frequency_penalty=3.0), r"frequency_penalty must be a number in \[-2, 2\]"),
    (dict(presence_penalty=float("nan")), r"presence_penalty must be .*got nan \(it must be finite\)"),
    (dict(bad_words_ids=[[]]), "bad_words_ids must be a non-empty list of non-empty lists"),
    (dict(bad_words_ids=[3]), "bad_words_ids must be a non-empty list"),
    (dict(bad_words_ids=[[999]]), r"bad_words_ids 999 is outside the vocabulary \[0, 30\)"),
    (dict(sequence_bias={(1,): "x"}), "sequence_bias must be a list of"),
    (dict(sequence_bias=[[[1, -2], 1.0]]), "sequence_bias must be a list of"),
    (dict(min_new_tokens=-1), "min_new_tokens must be an integer >= 0"),
])
def test_bad_penalty_options_are_refused_before_any_work(tmp_path, options, message):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, eos_token_id=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        generate(load_pretrained(tmp_path), torch.tensor([[3, 4]]), **options)
