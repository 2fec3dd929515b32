"""Reliability: bad prompts and bad generation arguments are refused by name, before any forward pass.

tests/generation/test_generation_steps.py already checks the common argument errors on generate(); this file adds the
cases it leaves out (non-finite numbers, wrong types, unknown names, layer-selection options), runs each one
through every entry point (generate, stream, beam search, self-speculative and hybrid decoding), and checks
the prompt edge cases end to end: an empty prompt, a prompt longer than max_position_embeddings, a stop
string that never occurs, and a set of steps that bans every token.
"""

from __future__ import annotations

import pytest
import torch

from generation import TopK, generate, hybrid_generate, speculative_generate, stream
from model import CausalLM, ModelConfig

VOCAB, MAX_POSITIONS = 40, 64


@pytest.fixture(scope="module")
def tiny_model():
    config = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                         initializer_range=0.2, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return CausalLM(config).eval()


@pytest.fixture
def no_forward(tiny_model, monkeypatch):
    """The tiny model, whose forward fails: an error raised later than the argument checks shows up."""
    def forward(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(tiny_model, "forward", forward)
    return tiny_model


def run_generate(model, ids, **options):
    return generate(model, ids, **options)


def run_stream(model, ids, **options):
    return list(stream(model, ids, **options))  # the checks happen at the call, before the first next()


def run_beams(model, ids, **options):
    return generate(model, ids, num_beams=2, **options)


def run_self_speculative(model, ids, **options):
    return speculative_generate(model, 1, ids, **options)  # the first layer drafts


def run_hybrid(model, ids, **options):
    return hybrid_generate(model, model, ids, threshold=1.0, logu_top_k=2, **options)


ENTRY_POINTS = {"generate": run_generate, "stream": run_stream, "beam search": run_beams,
                "speculative": run_self_speculative, "hybrid": run_hybrid}
PROMPT = torch.tensor([[3, 4, 5]])

# (options, message): cases tests/generation/test_generation_steps.py does not already cover.
BAD_ARGUMENTS = [
    (dict(temperature=float("nan"), do_sample=True), r"temperature must be a number >= 0.*got nan \(it must be finite"),
    (dict(temperature=float("inf"), do_sample=True), r"temperature must be .*got inf \(it must be finite\)"),
    (dict(temperature="0.7", do_sample=True), r"temperature must be a number >= 0"),
    (dict(repetition_penalty=float("inf")), r"repetition_penalty must be a number > 0 .*got inf \(it must be finite\)"),
    (dict(length_penalty=float("nan")), r"length_penalty must be a real number .*got nan \(it must be finite\)"),
    (dict(top_p=float("nan"), do_sample=True), r"top_p must be in \(0, 1\]"),
    (dict(top_p="0.9", do_sample=True), r"top_p must be in \(0, 1\]"),
    (dict(min_p=float("nan"), do_sample=True), r"min_p must be in \[0, 1\]"),
    (dict(top_k=2.5, do_sample=True), r"top_k must be an integer >= 0"),
    (dict(no_repeat_ngram_size=1.5), r"no_repeat_ngram_size must be an integer >= 0"),
    (dict(max_new_tokens=5.0), r"max_new_tokens must be an integer >= 1, got 5.0"),
    (dict(max_new_tokens=True), r"max_new_tokens must be an integer >= 1, got True"),
    (dict(num_return_sequences=0), r"num_return_sequences must be an integer >= 1|use num_return_sequences=1"),
    (dict(eos_token_id="2"), r"eos_token_id must be a token id \(int\), a list of them.*got '2'"),
    (dict(eos_token_id=2.0), r"eos_token_id must be a token id .*got 2.0"),
    (dict(eos_token_id=True), r"eos_token_id must be a token id .*got True"),
    (dict(eos_token_id=[[2]]), r"eos_token_id must be a token id .*got \[\[2\]\]"),
    (dict(eos_token_id=[2, VOCAB + 5]), r"eos_token_id 45 is outside the vocabulary \[0, 40\)"),
    (dict(pad_token_id="0"), r"pad_token_id must be a token id \(int\) or None, got '0'"),
    (dict(pad_token_id=-1), r"pad_token_id -1 is outside the vocabulary"),
    (dict(stop_strings=["ok", 3], tokenizer=object()), r"stop_strings must be a non-empty string or a list"),
    (dict(stop_strings="ok", tokenizer="not a tokenizer"), r"pass tokenizer="),
    (dict(logits_steps=TopK(3)), r"logits_steps must be a list of callables"),
    (dict(logits_steps=["top_k"]), r"logits_steps must be a list of callables"),
    (dict(output_scores="yes"), r"output_scores must be True or False, got 'yes'"),
    (dict(max_length=10), r"unknown generation option 'max_length': .*max_new_tokens"),
    (dict(top_q=0.9), r"unknown generation option 'top_q': did you mean 'top_p'\?"),
    (dict(dola_layers="middle"), r"dola_layers must be 'low', 'high'"),
    (dict(dola_layers="high", entropy_decoding="trough"), r"use one of them"),
    (dict(entropy_decoding="lowest"), r"entropy_decoding must be one of"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("options,message", BAD_ARGUMENTS)
def test_bad_argument_is_refused_by_every_entry_point_before_any_forward(no_forward, entry, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ENTRY_POINTS[entry](no_forward, PROMPT, **options)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("eos", [VOCAB, [2, VOCAB], -1])
def test_eos_outside_the_vocabulary_is_refused_everywhere(no_forward, entry, eos):
    with pytest.raises(ValueError, match=r"eos_token_id -?\d+ is outside the vocabulary \[0, 40\)"):
        ENTRY_POINTS[entry](no_forward, PROMPT, eos_token_id=eos, max_new_tokens=2)


def test_prompt_ids_outside_the_vocabulary_point_at_the_tokenizer(no_forward):
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 40\), e.g. 57: was the prompt encoded "
                                         r"with this model's tokenizer\?"):
        generate(no_forward, torch.tensor([[3, 57, 4]]))


# --------------------------------------------------------------------------- prompt length
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("prompt_length", [MAX_POSITIONS, MAX_POSITIONS + 1, 5 * MAX_POSITIONS])
def test_prompt_longer_than_max_position_embeddings_is_refused_before_any_forward(no_forward, entry,
                                                                                  prompt_length):
    ids = torch.arange(prompt_length)[None] % VOCAB
    with pytest.raises(ValueError, match=rf"prompt length \({prompt_length}\) \+ max_new_tokens \(1\) = "
                                         rf"{prompt_length + 1} exceeds max_position_embeddings \(64\)"):
        ENTRY_POINTS[entry](no_forward, ids, max_new_tokens=1)


def test_prompt_that_just_fits_generates_up_to_the_last_position(tiny_model):
    ids = torch.arange(MAX_POSITIONS - 4)[None] % VOCAB
    out = generate(tiny_model, ids, max_new_tokens=4, eos_token_id=[])
    assert out.sequences.shape == (1, MAX_POSITIONS) and out.stop_reasons == ["max_new_tokens"]


# --------------------------------------------------------------------------- empty prompt
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("shape", [(1, 0), (0, 3), (0, 0)])
def test_empty_input_ids_are_refused(no_forward, entry, shape):
    with pytest.raises(ValueError, match=rf"input_ids is empty \(shape \({shape[0]}, {shape[1]}\)\): the prompt "
                                         "needs at least one token"):
        ENTRY_POINTS[entry](no_forward, torch.zeros(shape, dtype=torch.long))


def test_empty_string_through_the_tokenizer_is_refused(default_tokenizer, monkeypatch):
    config = ModelConfig(vocab_size=len(default_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, pad_token_id=2)
    model = CausalLM(config).eval()
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("the model ran before the prompt was checked"))
    batch = default_tokenizer([""])  # SmolLM2 adds no BOS: "" is zero tokens
    assert batch.input_ids.shape == (1, 0)
    with pytest.raises(ValueError, match=r"input_ids is empty \(shape \(1, 0\)\)"):
        generate(model, batch.input_ids, batch.attention_mask)
    batch = default_tokenizer(["", "Hi"])  # one empty row in a batch: all padding
    with pytest.raises(ValueError, match=r"a row of attention_mask is all padding: every prompt needs"):
        generate(model, batch.input_ids, batch.attention_mask)


def test_prompt_from_another_models_tokenizer_is_named(no_forward, default_tokenizer):
    batch = default_tokenizer(["Hello world"])  # SmolLM2 ids are far beyond the tiny model's 40
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 40\), e.g. \d+: was the prompt encoded"):
        generate(no_forward, batch.input_ids, batch.attention_mask)


# --------------------------------------------------------------------------- stop conditions
class LetterTokenizer:
    """Token i decodes to the letter chr(ord('a') + i % 26): it can never produce '!'."""

    def decode(self, ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def greedy_by_full_forward(model, ids, new_tokens):
    """Reference: argmax of a full forward over the whole text at each step (no cache, no generate())."""
    with torch.no_grad():
        for _ in range(new_tokens):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=-1)
    return ids


def test_stop_string_that_never_occurs_runs_to_max_new_tokens(tiny_model):
    prompt = torch.tensor([[3, 17, 9, 21], [5, 6, 7, 8]])
    out = generate(tiny_model, prompt, max_new_tokens=15, eos_token_id=[], stop_strings=["!", "zz!"],
                   tokenizer=LetterTokenizer())
    assert out.stop_reasons == ["max_new_tokens", "max_new_tokens"]
    assert torch.equal(out.sequences, greedy_by_full_forward(tiny_model, prompt, 15))
    streamed = list(stream(tiny_model, prompt, max_new_tokens=15, eos_token_id=[], stop_strings="!",
                           tokenizer=LetterTokenizer()))
    assert len(streamed) == 15
    beams = generate(tiny_model, prompt, num_beams=2, max_new_tokens=6, eos_token_id=[], stop_strings="!",
                     tokenizer=LetterTokenizer())
    assert beams.stop_reasons == ["max_new_tokens", "max_new_tokens"] and beams.new_tokens.shape == (2, 6)


def test_eos_that_is_never_chosen_runs_to_max_new_tokens(tiny_model):
    prompt = torch.tensor([[3, 17, 9, 21]])
    reference = greedy_by_full_forward(tiny_model, prompt, 12)
    never = next(t for t in range(VOCAB) if t not in reference[0, 4:].tolist())
    out = generate(tiny_model, prompt, max_new_tokens=12, eos_token_id=never)
    assert out.stop_reasons == ["max_new_tokens"] and torch.equal(out.sequences, reference)


# --------------------------------------------------------------------------- every token banned
@pytest.mark.parametrize("entry, options", [("generate", dict()), ("generate", dict(do_sample=True)),
                                            ("beam search", dict()), ("beam search", dict(do_sample=True)),
                                            ("speculative", dict()), ("hybrid", dict(do_sample=True))])
def test_steps_that_ban_every_token_raise_instead_of_choosing_a_banned_one(entry, options):
    """A 4-token vocabulary with no_repeat_ngram_size=1: once all 4 tokens occurred, none may follow.
    Before the check, greedy silently picked the banned token 0 and sampling/beam search crashed inside torch."""
    config = ModelConfig(vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, pad_token_id=0)
    model = CausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"choosing new token 2 of row 0, the logits steps left no token \(every "
                                         r"score is -inf\).*no_repeat_ngram_size"):
        ENTRY_POINTS[entry](model, torch.tensor([[0, 1, 3]]), max_new_tokens=5, no_repeat_ngram_size=1,
                            eos_token_id=[], generator=generator, **options)
