"""GPT-OSS (sinks, sliding windows, mixture of experts, YaRN) against transformers 4.55.2 GptOssForCausalLM.

Tiny random checkpoints written by transformers' save_pretrained (conftest.save_tiny_gpt_oss, parameters
redrawn large enough that sinks, biases, routing and the expert clamp all matter), loaded with ours.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from cache import DynamicLayer, SlidingWindowLayer, cache_for_config
from helpers import save_tiny_gpt_oss
from generation import generate
from model import CausalLM, ConfigError, ModelConfig, load_pretrained
from model.rope import RotaryEmbedding

CONFIGS = {
    "4experts-top2": dict(),  # layers sliding, full, sliding; window 4; YaRN without truncation
    "8experts-top1-mha": dict(num_local_experts=8, num_experts_per_tok=1, num_key_value_heads=4, sliding_window=3),
    "3experts-top3-full-first": dict(num_local_experts=3, num_experts_per_tok=3, sliding_window=6,
                                     layer_types=["full_attention", "sliding_attention", "sliding_attention"],
                                     rope_scaling={"rope_type": "yarn", "factor": 8.0}),  # truncate defaults to true
    "16experts-top4-mqa-window2": dict(num_local_experts=16, num_experts_per_tok=4, num_key_value_heads=1,
                                       hidden_size=48, head_dim=16, sliding_window=2, num_hidden_layers=2),
}
PROMPT_LEN = 13  # longer than every window above


def left_padded_batch(vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, vocab_size, (3, PROMPT_LEN), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # row 0: 5 pads on the left
    mask[2, :1] = 0  # row 2: 1 pad
    return ids.masked_fill(mask == 0, 0), mask


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)  # what transformers' generate() passes with left padding


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_and_hidden_states_match_transformers(tmp_path, name, attn_implementation):
    hf = save_tiny_gpt_oss(tmp_path, **CONFIGS[name])
    assert hf.config._attn_implementation == "eager"  # the reference is the eager formula with sinks
    ours = load_pretrained(tmp_path, attn_implementation=attn_implementation)
    ids, mask = left_padded_batch(hf.config.vocab_size, seed=1)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=hf_positions(mask), output_hidden_states=True)
        out = ours(ids, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()
    assert (out.logits - ref.logits)[real].abs().max() <= 1e-4
    # The residual stream grows to ~50 here, so hidden states get a relative bound on top of the absolute one.
    for j in range(hf.config.num_hidden_layers):
        torch.testing.assert_close(out.hidden_states[j][real], ref.hidden_states[j][real], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.norm(out.hidden_states[-1])[real], ref.hidden_states[-1][real],
                               rtol=1e-5, atol=1e-4)


def test_sinks_window_clamp_and_routing_each_change_the_logits(tmp_path):
    """The comparison above can fail: switching off any GPT-OSS piece moves the logits far past 1e-4."""
    save_tiny_gpt_oss(tmp_path)
    ids, mask = left_padded_batch(97, seed=2)

    def logits_with(change) -> torch.Tensor:
        model = load_pretrained(tmp_path)
        change(model)
        with torch.no_grad():
            return model(ids, attention_mask=mask).logits[mask.bool()]

    reference = logits_with(lambda m: None)
    changes = {
        "no sinks": lambda m: [b.self_attn.sinks.data.fill_(-1e4) for b in m.layers],
        "no window": lambda m: setattr(m.config, "sliding_window", 10_000),
        "no clamp": lambda m: [setattr(b.mlp.experts, "limit", 1e4) for b in m.layers],
        "top-1 routing": lambda m: [setattr(b.mlp, "top_k", 1) for b in m.layers],
    }
    for what, change in changes.items():
        assert (logits_with(change) - reference).abs().max() > 1e-2, what


@pytest.mark.parametrize("prefill", [1, 3, 8])
def test_token_by_token_with_sliding_cache_equals_full_forward(tmp_path, prefill):
    save_tiny_gpt_oss(tmp_path)
    model = load_pretrained(tmp_path)
    ids, mask = left_padded_batch(model.config.vocab_size, seed=3)
    window = model.config.sliding_window
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        cache = cache_for_config(model.config)
        logits = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], cache=cache).logits]
        for t in range(prefill, PROMPT_LEN):
            logits.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits)
    assert (torch.cat(logits, dim=1) - full)[mask.bool()].abs().max() <= 1e-4
    assert cache.get_seq_length() == PROMPT_LEN
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [SlidingWindowLayer, DynamicLayer, SlidingWindowLayer]
    assert cache.layers[0].keys.shape[-2] == window - 1 and cache.layers[1].keys.shape[-2] == PROMPT_LEN
    B, n_kv, d = 3, model.config.num_key_value_heads, model.config.head_dim
    assert cache.nbytes() == 2 * B * n_kv * d * 4 * (2 * (window - 1) + PROMPT_LEN)  # K and V, fp32


def test_sliding_cache_crop_reorder_and_repeat(tmp_path):
    save_tiny_gpt_oss(tmp_path)  # window 4: a sliding layer stores 3 positions
    model = load_pretrained(tmp_path)
    ids, mask = left_padded_batch(model.config.vocab_size, seed=4)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        cache = cache_for_config(model.config)
        model(ids[:, :3], attention_mask=mask[:, :3], cache=cache)
        cache.crop(2)  # nothing dropped yet: rolling back is possible (speculative decoding does this)
        again = model(ids[:, 2:11], attention_mask=mask[:, :11], cache=cache).logits
        assert (again - full[:, 2:11]).abs().max() <= 1e-4
        with pytest.raises(ValueError, match="were dropped"):
            cache.crop(10)  # position 10 needs keys 7..9, and 7 is gone
        order = torch.tensor([2, 0, 0])  # beam search: rows continue other rows' caches
        cache.reorder(order)
        step = model(ids[order, 11:12], attention_mask=mask[order, :12], cache=cache).logits
        assert (step - full[order, 11:12]).abs().max() <= 1e-4
        cache.repeat_interleave(2)
        rows = order.repeat_interleave(2)
        step = model(ids[rows, 12:13], attention_mask=mask[rows, :13], cache=cache).logits
        assert (step - full[rows, 12:13]).abs().max() <= 1e-4


def test_greedy_generation_matches_transformers(tmp_path):
    hf = save_tiny_gpt_oss(tmp_path, num_local_experts=8, num_experts_per_tok=2)
    ours = load_pretrained(tmp_path)
    ids, mask = left_padded_batch(hf.config.vocab_size, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    got = generate(ours, ids, mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(got.sequences, expected)
    # The same greedy decode written out with the sliding-window cache (12 steps, far past the window of 4).
    cache, tokens, step_mask = cache_for_config(ours.config), ids, mask
    with torch.no_grad():
        logits = ours(ids, attention_mask=mask, cache=cache).logits[:, -1]  # (B, vocab)
        for _ in range(12):
            next_token = logits.argmax(-1, keepdim=True)  # (B, 1)
            tokens = torch.cat([tokens, next_token], dim=1)
            step_mask = torch.cat([step_mask, torch.ones_like(next_token)], dim=1)
            logits = ours(next_token, attention_mask=step_mask, cache=cache).logits[:, -1]
    assert torch.equal(tokens, expected)


def test_early_exit_logits_match_transformers_head_on_each_layer(tmp_path):
    hf = save_tiny_gpt_oss(tmp_path)
    ours = load_pretrained(tmp_path)
    ids, mask = left_padded_batch(hf.config.vocab_size, seed=6)
    layers = [0, 1, 2, 3]
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=hf_positions(mask), output_hidden_states=True)
        out = ours(ids, attention_mask=mask, output_hidden_states=True)
        early = ours.early_exit_logits(out.hidden_states, layers)  # (4, B, vocab)
        expected = [hf.lm_head(hf.model.norm(ref.hidden_states[j][:, -1])) for j in layers[:-1]]
    for j in layers[:-1]:
        assert (early[j] - expected[j]).abs().max() <= 1e-4, f"layer {j}"
    assert (early[-1] - ref.logits[:, -1]).abs().max() <= 1e-4  # the last layer gives the normal logits


@pytest.mark.parametrize("dola_layers", ["low", "high"])
def test_dola_on_gpt_oss_equals_transformers_generate(tmp_path, dola_layers):
    """DoLa contrasts early-exit logits (final norm + head on a middle layer) with the last layer's."""
    hf = save_tiny_gpt_oss(tmp_path, num_hidden_layers=4)
    ours = load_pretrained(tmp_path)
    ids = torch.randint(3, hf.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = hf.generate(ids, do_sample=False, dola_layers=dola_layers, trust_remote_code=True, pad_token_id=0,
                               max_new_tokens=10, eos_token_id=None)
    got = generate(ours, ids, max_new_tokens=10, eos_token_id=[], pad_token_id=0, dola_layers=dola_layers,
                   dola_variant="transformers")
    plain = generate(ours, ids, max_new_tokens=10, eos_token_id=[], pad_token_id=0)
    assert torch.equal(got.sequences, expected) and not torch.equal(plain.sequences, expected)


def test_yarn_frequencies_match_transformers_for_the_gpt_oss_20b_rope():
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    rope = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
            "original_max_position_embeddings": 4096}
    shapes = dict(vocab_size=8, hidden_size=2880, intermediate_size=8, num_hidden_layers=2, num_attention_heads=64,
                  num_key_value_heads=8, head_dim=64, num_local_experts=2, num_experts_per_tok=1,
                  max_position_embeddings=131072, rope_theta=150000.0, rope_scaling=rope)
    hf = GptOssRotaryEmbedding(GptOssConfig(**shapes))
    ours = RotaryEmbedding(ModelConfig.from_dict({"model_type": "gpt_oss", **shapes}))
    assert torch.equal(ours.inv_freq, hf.inv_freq) and ours.attention_scaling == hf.attention_scaling
    positions = torch.tensor([[0, 1, 127, 4095, 100_000]])
    cos, sin = ours(positions, torch.float32)
    hf_cos, hf_sin = hf(torch.zeros(1, dtype=torch.float32), positions)  # (1, 5, 32): one angle per pair
    assert torch.equal(cos, torch.cat([hf_cos, hf_cos], -1)) and torch.equal(sin, torch.cat([hf_sin, hf_sin], -1))


GOOD = dict(model_type="gpt_oss", vocab_size=10, hidden_size=16, intermediate_size=8, num_hidden_layers=2,
            num_attention_heads=16, num_local_experts=4, num_experts_per_tok=2)


def test_config_fills_transformers_gpt_oss_defaults():
    from transformers import GptOssConfig

    ours, hf = ModelConfig.from_dict(dict(GOOD)), GptOssConfig(**{k: v for k, v in GOOD.items() if k != "model_type"})
    for key in ("layer_types", "sliding_window", "rope_theta", "rms_norm_eps", "attention_bias", "rope_scaling",
                "max_position_embeddings", "head_dim", "num_key_value_heads", "tie_word_embeddings"):
        assert getattr(ours, key) == getattr(hf, key), key
    model = CausalLM(ours)
    assert model.layers[0].attention_type == "sliding_attention" and model.lm_head.weight is not model.embed_tokens.weight


@pytest.mark.parametrize("change, message", [
    (dict(num_experts_per_tok=5), "cannot exceed 'num_local_experts'"),
    (dict(num_local_experts=0), "'num_local_experts' must be a positive integer"),
    (dict(num_experts_per_tok=1.5), "'num_experts_per_tok' must be a positive integer"),
    (dict(layer_types=["sliding_attention"]), "one entry per layer"),
    (dict(layer_types=["sliding_attention", "local"]), "unknown entries"),
    (dict(sliding_window=None), "'sliding_window' is null"),
    (dict(sliding_window=0), "'sliding_window' must be a positive integer"),
    (dict(attention_bias=False), "always has q/k/v/o biases"),
    (dict(swiglu_limit=-1), "'swiglu_limit' must be a positive number"),
])
def test_bad_gpt_oss_config_is_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**GOOD, **change})
