"""Speculative decoding (generation/speculative.py, drafting.py) against independent references:

- greedy: the output must be token for token generate()'s plain greedy output of the target (a noisy copy
  of the target as the draft, and the target's own first k layers);
- sampling: the tokens must follow the target's processed distribution, computed here from the transformers
  model with plain torch (chi-square test, critical values from the chi-square table at p = 0.001);
- the caches left behind must equal a plain forward over the final sequence (rejections leave no trace).

Models run in float64 so that a batched verification pass and one-token steps cannot differ by rounding
(an fp32 near-tie could flip an argmax; that is numerics, not the algorithm).
"""

from __future__ import annotations

import pytest
import torch

from cache import DynamicCache
from helpers import save_tiny_llama
from generation import generate, speculative_generate
from generation.speculative import next_num_draft_tokens, sampling_accept
from model import load_pretrained

PROMPT = torch.tensor([[1, 5, 9, 13, 20]])
CHI2_CRIT_P001 = {2: 13.816, 3: 16.266, 15: 37.697}  # chi-square critical values, p = 0.001, by degrees of freedom


def noisy_copy(hf, folder, relative_noise: float, seed: int = 1):
    """Save the transformers model with N(0, (relative_noise * init)^2) added to every non-norm weight."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    draft = LlamaForCausalLM(hf.config).eval()
    draft.load_state_dict(hf.state_dict())
    with torch.no_grad():
        for name, param in draft.named_parameters():
            if "norm" not in name:
                param.add_(relative_noise * hf.config.initializer_range * torch.randn_like(param))
    draft.save_pretrained(folder)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(target, draft, hf_target): a 3-layer tiny LLaMA and a noisy copy of it, both float64."""
    folder = tmp_path_factory.mktemp("spec")
    hf = save_tiny_llama(folder / "target", num_hidden_layers=3, initializer_range=0.1)
    noisy_copy(hf, folder / "draft", relative_noise=0.1)
    target = load_pretrained(folder / "target", dtype=torch.float64)
    draft = load_pretrained(folder / "draft", dtype=torch.float64)
    return target, draft, hf


def assert_cache_matches_forward(model, cache: DynamicCache, sequence: torch.Tensor) -> None:
    """Every layer of `cache` holds exactly the keys/values a fresh forward over sequence[:, :length] gives."""
    length = cache.layers[0].get_seq_length()
    fresh = DynamicCache()
    with torch.no_grad():
        model(sequence[:, :length], cache=fresh)
    for layer, expected in zip(cache.layers, fresh.layers):
        assert layer.get_seq_length() == length
        torch.testing.assert_close(layer.keys, expected.keys, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(layer.values, expected.values, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- greedy = the target's greedy
@pytest.mark.parametrize("num_draft_tokens, schedule", [(1, "constant"), (3, "constant"), (6, "constant"),
                                                        (2, "heuristic")])
def test_greedy_with_draft_model_equals_plain_greedy(pair, num_draft_tokens, schedule):
    target, draft, _ = pair
    expected = generate(target, PROMPT, max_new_tokens=40, eos_token_id=[])
    out = speculative_generate(target, draft, PROMPT, max_new_tokens=40, eos_token_id=[],
                               num_draft_tokens=num_draft_tokens, num_draft_tokens_schedule=schedule)
    assert torch.equal(out.sequences, expected.sequences)
    assert 0 < out.stats.accepted < out.stats.drafted  # drafts were both accepted and rejected
    assert out.stats.new_tokens == 40 and out.stop_reasons == ["max_new_tokens"]
    assert out.stats.target_forward_passes == out.stats.rounds + 1  # + the prompt prefill
    assert out.stats.rounds < 40  # fewer target passes than tokens


@pytest.mark.parametrize("num_layers", [1, 2])
def test_self_speculative_greedy_equals_plain_greedy(pair, num_layers):
    target, _, _ = pair
    expected = generate(target, PROMPT, max_new_tokens=30, eos_token_id=[], repetition_penalty=1.3)
    out = speculative_generate(target, num_layers, PROMPT, max_new_tokens=30, eos_token_id=[],
                               repetition_penalty=1.3, num_draft_tokens=3)
    assert torch.equal(out.sequences, expected.sequences)
    assert out.stats.drafted > 0 and set(out.caches) == {"target"}


def test_penalties_see_the_right_context_at_every_drafted_position(pair):
    """Repetition penalty and no-repeat-ngram look at the tokens before each position, drafts included."""
    target, draft, _ = pair
    options = dict(max_new_tokens=40, eos_token_id=[], repetition_penalty=1.5, no_repeat_ngram_size=2)
    expected = generate(target, PROMPT, **options)
    out = speculative_generate(target, draft, PROMPT, num_draft_tokens=4, **options)
    assert torch.equal(out.sequences, expected.sequences)


def test_stops_on_eos_inside_an_accepted_run(pair):
    target, draft, _ = pair
    plain = generate(target, PROMPT, max_new_tokens=30, eos_token_id=[])
    eos = int(plain.new_tokens[0, 12])  # a token the target emits; generation must stop at its first occurrence
    expected = generate(target, PROMPT, max_new_tokens=30, eos_token_id=eos)
    out = speculative_generate(target, draft, PROMPT, max_new_tokens=30, eos_token_id=eos, num_draft_tokens=5)
    assert torch.equal(out.sequences, expected.sequences)
    assert out.stop_reasons == expected.stop_reasons == ["eos"]


# --------------------------------------------------------------------------- caches after rejections
def test_caches_equal_a_plain_forward_after_rejections(pair):
    target, draft, _ = pair
    out = speculative_generate(target, draft, PROMPT, max_new_tokens=25, eos_token_id=[], num_draft_tokens=4)
    assert out.stats.accepted < out.stats.drafted  # there were rejections to roll back
    n = out.sequences.shape[1]
    assert out.caches["target"].get_seq_length() == n - 1  # all but the last token, which nobody has fed yet
    assert out.caches["draft"].get_seq_length() in (n - 2, n - 1)  # n - 2 after a fully accepted last round
    assert_cache_matches_forward(target, out.caches["target"], out.sequences)
    assert_cache_matches_forward(draft, out.caches["draft"], out.sequences)


def test_self_speculative_shared_cache_equals_a_plain_forward(pair):
    target, _, _ = pair
    out = speculative_generate(target, 2, PROMPT, max_new_tokens=25, eos_token_id=[], num_draft_tokens=4)
    assert out.stats.accepted < out.stats.drafted
    assert out.caches["target"].get_seq_length() == out.sequences.shape[1] - 1
    assert_cache_matches_forward(target, out.caches["target"], out.sequences)  # every layer, same length


# --------------------------------------------------------------------------- sampling = the target's distribution
def test_acceptance_rule_reproduces_the_target_distribution():
    """Hand-made p, q over 4 tokens, gamma = 2: the first emitted token must follow p_1 (Leviathan et al. Thm 1),
    including q putting mass where p has none and p where q has none."""
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.4, 0.4], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], dtype=torch.float64)
    generator, n = torch.Generator().manual_seed(0), 3000
    counts = torch.zeros(4)
    for _ in range(n):
        drafts = torch.stack([torch.multinomial(q[i], 1, generator=generator)[0] for i in range(2)])
        accepted, token = sampling_accept(p, q, drafts, generator)
        counts[int(drafts[0]) if accepted >= 1 else token] += 1
    assert counts[3] == 0  # p_1 gives token 3 probability 0: it must never come out
    expected = n * p[0, :3].float()
    chi2 = float(((counts[:3] - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_CRIT_P001[2], (counts, chi2)


@pytest.mark.slow  # 400 seeded runs (about a minute on 2 cores)
def test_sampled_tokens_follow_the_targets_processed_distribution(pair):
    """Joint law of the first two tokens over 400 seeded runs vs the exact law from the transformers model:
    temperature 0.7 then top-k 4, computed with plain torch (16 outcomes, 15 degrees of freedom)."""
    target, draft, hf = pair
    temperature, top_k, runs = 0.7, 4, 400

    def processed(ids):  # the target's exact next-token law after temperature and top-k
        logits = hf(ids).logits[0, -1].double() / temperature
        kth = logits.topk(top_k).values[-1]
        return logits.masked_fill(logits < kth, float("-inf")).softmax(-1)

    exact = {}  # (first token, second token) -> probability
    with torch.no_grad():
        first = processed(PROMPT)
        for a in first.nonzero().flatten().tolist():
            second = processed(torch.cat([PROMPT, torch.tensor([[a]])], dim=1))
            for b in second.nonzero().flatten().tolist():
                exact[(a, b)] = float(first[a] * second[b])
    counts = dict.fromkeys(exact, 0)
    generator, drafted, accepted = torch.Generator(), 0, 0
    for seed in range(runs):
        out = speculative_generate(target, draft, PROMPT, max_new_tokens=3, eos_token_id=[], do_sample=True,
                                   temperature=temperature, top_k=top_k, num_draft_tokens=2,
                                   generator=generator.manual_seed(seed))
        pair_drawn = tuple(out.new_tokens[0, :2].tolist())
        assert pair_drawn in counts, f"{pair_drawn} has probability 0 under the target"
        counts[pair_drawn] += 1
        drafted, accepted = drafted + out.stats.drafted, accepted + out.stats.accepted
    assert 0.2 < accepted / drafted < 0.95  # both the acceptance and the residual branch were exercised
    chi2 = sum((counts[k] - runs * exact[k]) ** 2 / (runs * exact[k]) for k in exact)
    assert len(exact) == 16 and chi2 < CHI2_CRIT_P001[15], (counts, chi2)


# --------------------------------------------------------------------------- schedule and bad input
def test_heuristic_schedule_follows_transformers_rule():
    assert next_num_draft_tokens(5, accepted=5, drafted=5, schedule="heuristic") == 7
    assert next_num_draft_tokens(5, accepted=2, drafted=5, schedule="heuristic") == 4
    assert next_num_draft_tokens(1, accepted=0, drafted=1, schedule="heuristic") == 1
    assert next_num_draft_tokens(5, accepted=0, drafted=5, schedule="constant") == 5


def test_bad_arguments_are_refused_before_any_work(pair, tmp_path):
    target, draft, _ = pair
    with pytest.raises(ValueError, match="one unpadded prompt"):
        speculative_generate(target, draft, PROMPT.repeat(2, 1))
    with pytest.raises(ValueError, match="num_draft_tokens must be an integer >= 1"):
        speculative_generate(target, draft, PROMPT, num_draft_tokens=0)
    with pytest.raises(ValueError, match="num_draft_tokens_schedule"):
        speculative_generate(target, draft, PROMPT, num_draft_tokens_schedule="fast")
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 2\]"):
        speculative_generate(target, 3, PROMPT)
    with pytest.raises(ValueError, match="needs a draft"):
        speculative_generate(target, None, PROMPT)
    with pytest.raises(ValueError, match="do not support it"):
        speculative_generate(target, draft, PROMPT, dola_layers="high")
    save_tiny_llama(tmp_path, vocab_size=50)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, load_pretrained(tmp_path), PROMPT)


def test_default_model_accelerates_itself_with_identical_greedy_output(default_model_path):
    """SmolLM2-135M-Instruct (fp32) drafting with its first 15 of 30 layers: the same greedy text."""
    from tokenizer import load_tokenizer

    model = load_pretrained(default_model_path, dtype=torch.float32)
    tok = load_tokenizer(default_model_path)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                tokenize=True)])
    expected = generate(model, ids, max_new_tokens=24)
    out = speculative_generate(model, 15, ids, max_new_tokens=24, num_draft_tokens=4)
    assert torch.equal(out.sequences, expected.sequences), tok.decode(out.new_tokens[0].tolist())
    assert out.stats.accepted > 0
