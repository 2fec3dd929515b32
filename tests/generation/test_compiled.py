"""generation/compiled.py: the fixed-slot decode step, eager and through torch.compile, against transformers.

One tiny model is compiled once for the module (~17 s on 2 cores with an empty inductor cache); the other checks run the same step
eagerly (compile=False), which is what the compiled graph computes.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
import transformers

from helpers import save_tiny_gpt_oss, save_tiny_llama
from generation import generate
from generation.compiled import SLOT_BUCKET, CompiledDecoder
from model import load_pretrained

PAD = 5
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile on the CPU needs a C++ compiler")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    hf = save_tiny_llama(folder, vocab_size=96, hidden_size=64, intermediate_size=128, max_position_embeddings=512,
                         initializer_range=0.2, pad_token_id=PAD)
    hf.generation_config.eos_token_id = None  # every row makes all its new tokens, as greedy_with_decoder does
    return hf, load_pretrained(folder), folder


def padded_batch(length: int, real: tuple[int, ...], seed: int = 1):
    """Prompts of `length` slots, left-padded so that row i has real[i] real tokens."""
    ids = torch.randint(6, 96, (len(real), length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for row, n in enumerate(real):
        mask[row, :length - n] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def hf_greedy(hf, ids, mask, new_tokens: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD)


def greedy_with_decoder(model, ids, mask, new_tokens: int, compile: bool) -> torch.Tensor:
    """Greedy decoding written out over CompiledDecoder (no stopping: every row makes new_tokens)."""
    decoder = CompiledDecoder(model, ids.shape[0], ids.shape[1] + new_tokens, compile=compile)
    with torch.inference_mode():
        logits = decoder.prefill(ids, mask)
        tokens = []
        for _ in range(new_tokens):
            tokens.append(logits[:, -1].argmax(-1))
            logits = decoder.decode(tokens[-1][:, None])
    return torch.cat([ids, torch.stack(tokens, dim=1)], dim=1)


def test_fixed_slot_step_gives_transformers_logits_on_a_padded_batch(models):
    hf, ours, _ = models
    ids, mask = padded_batch(9, (4, 9, 7))
    decoder = CompiledDecoder(ours, 3, 12, compile=False)
    assert decoder.cache.keys[0].shape[2] == SLOT_BUCKET  # rounded up, so other lengths reuse the graph
    with torch.inference_mode():
        got = [decoder.prefill(ids, mask)]
        following = torch.tensor([[7], [8], [9]])
        got.append(decoder.decode(following))
    with torch.no_grad():
        full_ids, full_mask = torch.cat([ids, following], 1), torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)
        position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
        expected = hf(full_ids, attention_mask=full_mask, position_ids=position_ids).logits
    for step, logits in enumerate(got):  # left padding: each row's last position is a real token
        torch.testing.assert_close(logits[:, -1], expected[:, ids.shape[1] - 1 + step], atol=1e-5, rtol=0)


def test_fixed_slot_step_greedy_equals_transformers(models):
    hf, ours, _ = models
    ids, mask = padded_batch(7, (4, 6, 7))
    assert torch.equal(greedy_with_decoder(ours, ids, mask, 12, compile=False), hf_greedy(hf, ids, mask, 12))


def test_half_precision_keeps_a_float32_cache_and_stays_near_float32(models):
    hf, _, folder = models
    ids, mask = padded_batch(7, (5, 7))
    half = load_pretrained(folder, dtype=torch.bfloat16)
    decoder = CompiledDecoder(half, 2, 8, compile=False)
    assert decoder.cache.keys[0].dtype == torch.float32
    with torch.inference_mode():
        got = decoder.prefill(ids, mask).float()
    with torch.no_grad():
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        expected = hf(ids, attention_mask=mask, position_ids=position_ids).logits[:, -1:]
    # bf16 weights and activations (8 bits of mantissa) against float32: same bound as the bf16 model test
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)


@needs_compiler
def test_compiled_generate_equals_transformers_and_reuses_its_graph(models):
    """One compile: the first call traces the graph; the second, with another prompt length in the same slot
    bucket, must reuse it (no new graph) and still match transformers."""
    from torch._dynamo.utils import counters

    hf, ours, _ = models
    ids, mask = padded_batch(7, (4, 6, 7))
    got = generate(ours, ids, mask, max_new_tokens=10, eos_token_id=[], pad_token_id=PAD, compile=True)
    assert torch.equal(got.sequences, hf_greedy(hf, ids, mask, 10))
    graphs = counters["stats"]["unique_graphs"]
    ids, mask = padded_batch(11, (11, 3, 8), seed=2)
    got = generate(ours, ids, mask, max_new_tokens=10, eos_token_id=[], pad_token_id=PAD, compile=True)
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(got.sequences, hf_greedy(hf, ids, mask, 10))


def hf_beams(hf, ids, mask, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, output_scores=True,
                           return_dict_in_generate=True, **options)


@needs_compiler
@pytest.mark.parametrize("early_stopping", [True, False])
def test_compiled_beam_search_equals_transformers(models, early_stopping):
    """Beam search with the compiled step: all B*K rows in the fixed slots, the prompts prefilled once and
    copied to their beams, the slots reordered each step; a padded batch of two prompts, sequences and scores.
    A second call with a longer prompt and output in the same slot bucket reuses the graph."""
    from torch._dynamo.utils import counters

    hf, ours, _ = models
    for length, real, new in ((7, (4, 7), 9), (12, (12, 9), 14)):
        graphs = counters["stats"]["unique_graphs"]
        ids, mask = padded_batch(length, real, seed=4)
        options = {"max_new_tokens": new, "num_beams": 3, "num_return_sequences": 2, "early_stopping": early_stopping}
        got = generate(ours, ids, mask, eos_token_id=[9], pad_token_id=PAD, compile=True, **options)
        expected = hf_beams(hf, ids, mask, eos_token_id=9, **options)
        assert torch.equal(got.sequences, expected.sequences)
        torch.testing.assert_close(got.sequences_scores, expected.sequences_scores, atol=1e-4, rtol=0)
    assert counters["stats"]["unique_graphs"] == graphs  # the second call: no new graph


@needs_compiler
def test_compiled_beam_search_of_one_unpadded_prompt_equals_transformers(models):
    """No attention mask: positions come as one (1, T) row, expanded to every beam."""
    hf, ours, _ = models
    ids = torch.randint(6, 96, (1, 6), generator=torch.Generator().manual_seed(7))
    got = generate(ours, ids, max_new_tokens=8, num_beams=4, eos_token_id=[], pad_token_id=PAD, compile=True)
    expected = hf_beams(hf, ids, None, max_new_tokens=8, num_beams=4)
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(got.sequences_scores, expected.sequences_scores, atol=1e-4, rtol=0)


@needs_compiler
def test_a_replaced_weight_is_used_by_the_compiled_step(models):
    """The compiled graph cannot check where the stacked weights live; CompiledDecoder checks before each call.
    Runs after the test above, so the graph for this model and batch shape exists and would be reused."""
    hf, ours, _ = models
    ids, mask = padded_batch(7, (4, 6, 7))
    v_proj = ours.layers[1].self_attn.v_proj
    new = torch.randn(v_proj.weight.shape, generator=torch.Generator().manual_seed(3))
    hf_copy = transformers.LlamaForCausalLM(hf.config).eval()
    hf_copy.generation_config.eos_token_id = None
    with torch.no_grad():
        hf_copy.load_state_dict(hf.state_dict())
        hf_copy.model.layers[1].self_attn.v_proj.weight.copy_(new)
    old = v_proj.weight.data
    v_proj.weight.data = new.clone()  # the same Parameter over other memory: the stacked copy is stale now
    try:
        assert torch.equal(greedy_with_decoder(ours, ids, mask, 6, compile=True), hf_greedy(hf_copy, ids, mask, 6))
    finally:
        v_proj.weight.data = old


@pytest.mark.parametrize("options, message", [
    ({"dola_layers": "high"}, "hidden state"),
    ({"entropy_decoding": "trough"}, "hidden state"),
    ({"compile": "yes"}, "compile must be True or False"),
])
def test_compile_refuses_what_it_cannot_run(models, options, message):
    _, ours, _ = models
    with pytest.raises(ValueError, match=message):
        generate(ours, torch.tensor([[7, 8, 9]]), max_new_tokens=3, **{"compile": True, **options})


def test_compile_refuses_gpt_oss_and_a_missing_compiler(tmp_path, models, monkeypatch):
    save_tiny_gpt_oss(tmp_path)
    with pytest.raises(ValueError, match="LLaMA-style models only"):
        generate(load_pretrained(tmp_path), torch.tensor([[7, 8, 9]]), max_new_tokens=3, compile=True)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="C\\+\\+ compiler"):
        generate(models[1], torch.tensor([[7, 8, 9]]), max_new_tokens=3, compile=True)


def test_a_hooked_projection_still_fires_in_the_fixed_slot_step(models):
    _, ours, _ = models
    captured = []
    handle = ours.layers[0].self_attn.q_proj.register_forward_hook(lambda m, args, out: captured.append(out))
    try:
        greedy_with_decoder(ours, torch.tensor([[7, 8, 9]]), None, 2, compile=False)
    finally:
        handle.remove()
    assert [c.shape[1] for c in captured] == [3, 1, 1]  # the prompt, then one token per step


@needs_compiler
def test_int8_model_compiled_step_equals_its_eager_step(models):
    """Weight-only int8 with bf16 activations (accel/quantize.py) through the compiled step: the int8 kernel
    inside the graph gives the eager step's logits (the eager int8 model is checked against transformers in
    tests/model/test_quantize.py), within bf16 rounding."""
    from accel import accelerate

    _, _, folder = models
    int8 = accelerate(load_pretrained(folder, dtype=torch.bfloat16), int8=True)
    ids, mask = padded_batch(7, (5, 7))
    following = torch.tensor([[7], [8]])
    results = []
    for compile in (False, True):
        decoder = CompiledDecoder(int8, 2, 9, compile=compile)
        with torch.inference_mode():
            decoder.prefill(ids, mask)
            results.append(decoder.decode(following).float())
    eager, compiled = results
    torch.testing.assert_close(compiled, eager, atol=0.02 * eager.abs().max().item(), rtol=0)
