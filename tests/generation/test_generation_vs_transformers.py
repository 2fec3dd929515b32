"""generate() against transformers 4.55.2's generate() on the same weights.

A tiny random LlamaForCausalLM (initializer_range 0.2, so the logits are spread and top tokens rarely tie)
is saved with save_pretrained and loaded with our load_pretrained; both run in float32. Sampling is
compared under one seed: transformers draws from the global RNG after torch.manual_seed(seed), we draw
from torch.Generator().manual_seed(seed), which is the same stream.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers  # the oracle

from generation import generate
from model import load_pretrained


PROMPT_LEN = 7
PAD = 5  # not 0: transformers' beam search fills with `pad_token_id or eos` and would treat 0 as missing


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2, bos_token_id=1,
        eos_token_id=2, pad_token_id=PAD)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny_llama")
    hf.save_pretrained(folder)
    return hf, load_pretrained(folder)


@pytest.fixture(scope="module")
def batch():
    """Three prompts, left-padded to 7 tokens: 4, 6 and 7 real tokens."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(6, 96, (3, PROMPT_LEN), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, :1] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def run_both(models, batch, seed=None, **options):
    hf, ours = models
    ids, mask = batch
    if seed is not None:
        torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = hf.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True,
                               pad_token_id=PAD, **options)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    got = generate(ours, ids, mask, output_scores=True, pad_token_id=PAD, generator=generator,
                   **{k: v for k, v in options.items() if not (k == "top_k" and v == 0)})
    return expected, got


def assert_scores_match(expected, got):
    """Same -inf mask; finite entries within 1e-5."""
    assert len(expected) == len(got)
    for step, (e, g) in enumerate(zip(expected, got)):
        assert torch.equal(torch.isfinite(e), torch.isfinite(g)), f"-inf mask differs at step {step}"
        finite = torch.isfinite(e)
        torch.testing.assert_close(g[finite], e[finite], rtol=0, atol=1e-5)


GREEDY_CASES = [
    dict(max_new_tokens=12, eos_token_id=[]),  # no end token: every row runs to the length limit
    dict(max_new_tokens=15, eos_token_id=[3, 40]),
    dict(max_new_tokens=12, repetition_penalty=1.5, eos_token_id=[]),
    dict(max_new_tokens=12, repetition_penalty=0.7, eos_token_id=[]),  # < 1 encourages repeats
    dict(max_new_tokens=14, no_repeat_ngram_size=2, eos_token_id=[]),
    dict(max_new_tokens=14, no_repeat_ngram_size=1, repetition_penalty=1.2, eos_token_id=[]),
    dict(max_new_tokens=12, eos_token_id=[2, 7, 30], min_new_tokens=6),
    dict(max_new_tokens=12, eos_token_id=[3], bad_words_ids=[[3], [40], [11, 12], [50, 51, 52]]),  # [3]: an eos, kept
    dict(max_new_tokens=12, eos_token_id=[], sequence_bias={(40,): -4.0, (11, 12): 3.5, (60,): 2.0, (7, 8, 9): -1.0}),
    dict(max_new_tokens=12, eos_token_id=[], repetition_penalty=1.3, bad_words_ids=[[20]], sequence_bias={(21,): 5.0}),
]


@pytest.mark.parametrize("options", GREEDY_CASES)
def test_greedy_matches_transformers(models, batch, options):
    expected, got = run_both(models, batch, do_sample=False, **options)
    assert torch.equal(got.sequences, expected.sequences)
    assert_scores_match(expected.scores, got.scores)


def test_greedy_rows_finish_on_eos_and_are_padded(models, batch):
    """Pick as EOS a token that transformers emits mid-way for some rows, so rows end at different steps."""
    free, _ = run_both(models, batch, do_sample=False, max_new_tokens=12, eos_token_id=[])
    eos = int(free.sequences[0, PROMPT_LEN + 3])  # row 0's 4th new token
    expected, got = run_both(models, batch, do_sample=False, max_new_tokens=12, eos_token_id=eos)
    assert torch.equal(got.sequences, expected.sequences)
    new = got.new_tokens
    assert got.stop_reasons[0] == "eos"
    end = int((new[0] == eos).nonzero()[0])
    assert end <= 3 and (new[0, end + 1:] == PAD).all()  # padding after the end token


BEAM_CASES = [
    dict(num_beams=2, length_penalty=1.0, early_stopping=False, num_return_sequences=1),
    dict(num_beams=4, length_penalty=1.0, early_stopping=True, num_return_sequences=2),
    dict(num_beams=3, length_penalty=0.5, early_stopping="never", num_return_sequences=3),
    dict(num_beams=4, length_penalty=-1.0, early_stopping=False, num_return_sequences=4),
    dict(num_beams=4, length_penalty=2.0, early_stopping="never", num_return_sequences=2),
    dict(num_beams=3, length_penalty=0.0, early_stopping=True, num_return_sequences=1, repetition_penalty=1.3),
    dict(num_beams=2, length_penalty=1.0, early_stopping=False, num_return_sequences=2, no_repeat_ngram_size=2),
]


@pytest.mark.parametrize("options", BEAM_CASES)
def test_beam_search_matches_transformers(models, batch, options):
    # Several frequent tokens as EOS ids, so that hypotheses end at different lengths.
    expected, got = run_both(models, batch, do_sample=False, max_new_tokens=10, eos_token_id=[2, 7, 30], **options)
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(got.sequences_scores, expected.sequences_scores, rtol=0, atol=1e-5)
    assert_scores_match(expected.scores, got.scores)
    ended = [reason == "eos" for reason in got.stop_reasons]
    assert any(ended) == any(torch.isin(got.new_tokens, torch.tensor([2, 7, 30])).flatten().tolist())


SAMPLING_CASES = [
    dict(top_k=0),
    dict(temperature=0.7, top_k=10),
    dict(top_k=0, top_p=0.8, repetition_penalty=1.2),
    dict(top_k=0, min_p=0.1, temperature=1.5, no_repeat_ngram_size=3),
    dict(top_k=20, top_p=0.9, min_p=0.05, temperature=0.8, repetition_penalty=0.9),
    dict(top_k=3, top_p=0.5),
    dict(top_k=0, temperature=2.0, min_p=0.3),
    dict(top_k=0, top_p=0.9, num_return_sequences=3),
    dict(top_k=0, typical_p=0.7),
    dict(top_k=0, typical_p=0.3, temperature=1.5),
    dict(top_k=0, epsilon_cutoff=0.02),
    dict(top_k=0, eta_cutoff=0.05, temperature=1.3),
    dict(top_k=10, top_p=0.95, typical_p=0.9, epsilon_cutoff=0.001, eta_cutoff=0.002, min_new_tokens=4),
]


@pytest.mark.parametrize("options", SAMPLING_CASES)
def test_sampling_scores_and_tokens_match_transformers(models, batch, options):
    expected, got = run_both(models, batch, seed=1234, do_sample=True, max_new_tokens=10, eos_token_id=[2],
                             **options)
    assert_scores_match(expected.scores, got.scores)
    assert torch.equal(got.sequences, expected.sequences)


def test_min_new_tokens_holds_back_an_end_token_transformers_would_take(models, batch):
    """Take as EOS the token row 0 emits second: without min_new_tokens it ends there, with 5 it cannot."""
    free, _ = run_both(models, batch, do_sample=False, max_new_tokens=10, eos_token_id=[])
    eos = int(free.sequences[0, PROMPT_LEN + 1])
    expected, got = run_both(models, batch, do_sample=False, max_new_tokens=10, eos_token_id=eos, min_new_tokens=5)
    assert torch.equal(got.sequences, expected.sequences)
    assert_scores_match(expected.scores, got.scores)
    assert eos not in got.new_tokens[0, :5].tolist()


def test_bad_words_are_never_generated_and_a_bad_sequence_is_cut_before_its_last_token(models, batch):
    free, _ = run_both(models, batch, do_sample=False, max_new_tokens=10, eos_token_id=[])
    first, second = (int(t) for t in free.sequences[0, PROMPT_LEN:PROMPT_LEN + 2])
    expected, got = run_both(models, batch, do_sample=False, max_new_tokens=10, eos_token_id=[],
                             bad_words_ids=[[first, second]])
    assert torch.equal(got.sequences, expected.sequences)
    assert got.new_tokens[0, 0] == first and got.new_tokens[0, 1] != second


def test_logprobs_equal_transformers_transition_scores(models, batch):
    """out.logprobs: log_softmax of the processed scores at each chosen token, as transformers'
    compute_transition_scores(..., normalize_logits=True); top_logprobs: the n best of the same."""
    hf, ours = models
    ids, mask = batch
    options = dict(do_sample=True, max_new_tokens=8, eos_token_id=[], temperature=0.8, pad_token_id=PAD)
    torch.manual_seed(5)
    expected = hf.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True, top_k=0,
                           **options)
    got = generate(ours, ids, mask, generator=torch.Generator().manual_seed(5), logprobs=True, top_logprobs=3,
                   **options)
    assert torch.equal(got.sequences, expected.sequences)
    reference = hf.compute_transition_scores(expected.sequences, expected.scores, normalize_logits=True)  # (B, new)
    torch.testing.assert_close(got.logprobs, reference, rtol=0, atol=1e-5)
    top = torch.stack(expected.scores, dim=1).log_softmax(-1).topk(3, dim=-1)
    torch.testing.assert_close(got.top_logprobs, top.values, rtol=0, atol=1e-5)
    assert torch.equal(got.top_logprob_ids, top.indices)
    assert (got.top_logprobs[..., 0] >= got.logprobs - 1e-6).all()


CONTRASTIVE_CASES = [
    dict(penalty_alpha=0.6, top_k=4, max_new_tokens=12, eos_token_id=[]),
    dict(penalty_alpha=0.3, top_k=6, max_new_tokens=12, eos_token_id=[2, 7, 30]),
    dict(penalty_alpha=0.9, top_k=2, max_new_tokens=10, eos_token_id=[], repetition_penalty=1.2),
    dict(penalty_alpha=0.0, top_k=5, max_new_tokens=8, eos_token_id=[]),  # alpha 0: greedy
]


@pytest.fixture(scope="module")
def unpadded(batch):
    """Three prompts of 7 real tokens. (transformers 4.55.2's contrastive search gives a left-padded row another
    continuation than the same prompt unpadded; ours does not depend on the padding: see the test below.)"""
    ids, _ = batch
    return ids.masked_fill(ids == PAD, 9), torch.ones_like(ids)


@pytest.mark.parametrize("options", CONTRASTIVE_CASES)
def test_contrastive_search_matches_transformers(models, unpadded, options):
    expected, got = run_both(models, unpadded, do_sample=False, **options)
    assert torch.equal(got.sequences, expected.sequences)
    assert_scores_match(expected.scores, got.scores)


def test_contrastive_search_is_not_greedy_here(models, unpadded):
    """The cases above must test something: with a strong penalty the text differs from greedy decoding."""
    _, greedy = run_both(models, unpadded, do_sample=False, max_new_tokens=12, eos_token_id=[])
    _, contrastive = run_both(models, unpadded, do_sample=False, max_new_tokens=12, eos_token_id=[],
                              penalty_alpha=0.6, top_k=4)
    assert not torch.equal(greedy.sequences, contrastive.sequences)


def test_contrastive_search_of_a_padded_row_equals_transformers_on_the_prompt_alone(models, batch):
    """Padding must not change the text: each left-padded row continues as transformers continues its prompt alone."""
    hf, ours = models
    ids, mask = batch
    got = generate(ours, ids, mask, max_new_tokens=10, penalty_alpha=0.6, top_k=4, eos_token_id=[], pad_token_id=PAD)
    for row in range(ids.shape[0]):
        alone = ids[row:row + 1, int((mask[row] == 0).sum()):]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = hf.generate(alone, max_new_tokens=10, do_sample=False, penalty_alpha=0.6, top_k=4,
                                   eos_token_id=[], pad_token_id=PAD)
        assert got.new_tokens[row].tolist() == expected[0, alone.shape[1]:].tolist()


def test_beam_sampling_matches_transformers(models, batch):
    expected, got = run_both(models, batch, seed=7, do_sample=True, max_new_tokens=8, eos_token_id=[2, 7],
                             num_beams=3, num_return_sequences=2, top_k=8, temperature=0.9)
    assert torch.equal(got.sequences, expected.sequences)
    assert_scores_match(expected.scores, got.scores)


# --------------------------------------------------------------------------- the real default model
def default_model_folder():
    from model import zoo

    folder = zoo.default_model_path()
    return folder if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() else None


@pytest.mark.slow
def test_default_model_greedy_chat_matches_transformers():
    folder = default_model_folder()
    if folder is None:
        pytest.skip("default model not built: python -m model.zoo fetch smollm2-135m-instruct")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    expected = hf.generate(ids, max_new_tokens=25, do_sample=False)
    del hf
    got = generate(load_pretrained(folder, dtype=torch.float32), ids, max_new_tokens=25)
    assert torch.equal(got.sequences, expected)


@pytest.mark.slow
def test_default_model_contrastive_search_matches_transformers():
    folder = default_model_folder()
    if folder is None:
        pytest.skip("default model not built: python -m model.zoo fetch smollm2-135m-instruct")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "Describe a city at night in two sentences."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = hf.generate(ids, max_new_tokens=30, do_sample=False, penalty_alpha=0.6, top_k=4)
    del hf
    got = generate(load_pretrained(folder, dtype=torch.float32), ids, max_new_tokens=30, penalty_alpha=0.6, top_k=4)
    assert torch.equal(got.sequences, expected)


@pytest.mark.parametrize("alpha, k", [(0.6, 4), (0.3, 3)])
def test_contrastive_search_on_gpt_oss_matches_transformers(tmp_path, alpha, k):
    """GPT-OSS: sliding-window layers (window 4 < the 18 positions), sinks, experts; the cache is repeated k-fold
    for the candidates and reordered to the chosen one each position."""
    from helpers import save_tiny_gpt_oss

    hf = save_tiny_gpt_oss(tmp_path)
    ours = load_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                               penalty_alpha=alpha, top_k=k, eos_token_id=[], pad_token_id=0)
    got = generate(ours, ids, max_new_tokens=12, penalty_alpha=alpha, top_k=k, eos_token_id=[], pad_token_id=0)
    greedy = generate(ours, ids, max_new_tokens=12, eos_token_id=[], pad_token_id=0)
    assert torch.equal(got.sequences, expected)
    assert not torch.equal(greedy.sequences, got.sequences)  # the penalty changed the text: the case tests something
