"""DynamicCache against transformers' DynamicCache, and its memory against the lesson-5 formula."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache as HFDynamicCache

from cache import DynamicCache, kv_cache_bytes
from helpers import save_tiny_gpt_oss, save_tiny_llama
from model import load_pretrained


def random_kv(generator, batch=3, heads=2, length=4, dim=8):
    shape = (batch, heads, length, dim)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def assert_same(ours: DynamicCache, theirs: HFDynamicCache):
    assert ours.get_seq_length() == theirs.get_seq_length()
    for layer_idx, layer in enumerate(ours.layers):
        assert torch.equal(layer.keys, theirs.layers[layer_idx].keys)
        assert torch.equal(layer.values, theirs.layers[layer_idx].values)


def test_update_crop_reorder_repeat_like_transformers():
    g = torch.Generator().manual_seed(0)
    ours, theirs = DynamicCache(), HFDynamicCache()
    for step_len in (4, 1, 1, 3):
        for layer_idx in range(2):
            k, v = random_kv(g, length=step_len)
            a = ours.update(k, v, layer_idx)
            b = theirs.update(k, v, layer_idx)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert_same(ours, theirs)
    ours.crop(6), theirs.crop(6)
    assert_same(ours, theirs)
    beam_idx = torch.tensor([2, 0, 0])
    ours.reorder(beam_idx), theirs.reorder_cache(beam_idx)
    assert_same(ours, theirs)
    ours.repeat_interleave(2), theirs.batch_repeat_interleave(2)
    assert_same(ours, theirs)
    assert ours.layers[0].keys.shape == (6, 2, 6, 8)


def test_nbytes_equals_the_course_formula():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        cache = DynamicCache()
        for layer_idx in range(3):
            k, v = random_kv(g, batch=2, heads=3, length=7, dim=16)
            cache.update(k.to(dtype), v.to(dtype), layer_idx)
        expected = 2 * 3 * 2 * 3 * 7 * 16 * (4 if dtype == torch.float32 else 2)  # written out by hand
        assert cache.nbytes() == expected == kv_cache_bytes(3, 2, 3, 7, 16, dtype)


def test_model_cache_grows_one_position_per_step(tmp_path):
    save_tiny_llama(tmp_path, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1)
    model = load_pretrained(tmp_path)
    cache = DynamicCache()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        model(ids, cache=cache)
        model(torch.tensor([[9]]), cache=cache)
    assert cache.get_seq_length() == 5
    # 2 x 3 layers x batch 1 x 1 kv head x 5 positions x head_dim 8 x 4 bytes
    assert cache.nbytes() == 2 * 3 * 1 * 1 * 5 * 8 * 4


def test_static_cache_gives_the_same_logits_as_the_dynamic_one(tmp_path):
    from cache import StaticCache

    save_tiny_llama(tmp_path, num_hidden_layers=2)
    model = load_pretrained(tmp_path)
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    results = []
    for cache in (DynamicCache(), StaticCache(2, max_length=16)):
        with torch.no_grad():
            steps = [model(ids[:, :4], attention_mask=mask[:, :4], cache=cache).logits]
            steps += [model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits for t in range(4, 9)]
        results.append((torch.cat(steps, 1), cache))
    (dyn, dyn_cache), (static, static_cache) = results
    assert torch.equal(dyn[mask.bool()], static[mask.bool()])
    assert static_cache.get_seq_length() == 9 and static_cache.nbytes() == dyn_cache.nbytes()
    static_cache.crop(5), dyn_cache.crop(5)
    static_cache.reorder(torch.tensor([1, 1])), dyn_cache.reorder(torch.tensor([1, 1]))
    k, v = static_cache.layers[0].update(dyn_cache.layers[0].keys[:, :, -1:], dyn_cache.layers[0].values[:, :, -1:])
    assert torch.equal(k[:, :, :5], dyn_cache.layers[0].keys) and k.shape[-2] == 6
    with pytest.raises(ValueError, match="StaticCache is full: 17 positions needed, 16 allocated"):
        static_cache.layers[1].update(torch.zeros(2, 2, 12, 8), torch.zeros(2, 2, 12, 8))


def test_an_empty_cache_adds_layers_as_their_index_appears_like_transformers():
    g = torch.Generator().manual_seed(2)
    ours, theirs = DynamicCache(), HFDynamicCache()
    assert len(ours) == 0 and ours.get_seq_length() == 0 == theirs.get_seq_length()
    k, v = random_kv(g, length=3)
    ours.update(k, v, 2), theirs.update(k, v, 2)  # layer 2 first: layers 0 and 1 exist, still empty
    assert len(ours) == len(theirs.layers) == 3
    assert ours.get_seq_length() == theirs.get_seq_length() == 0 and ours.get_seq_length(2) == 3
    assert ours.get_seq_length(5) == theirs.get_seq_length(5) == 0


def test_fixed_layers_refuse_an_index_past_them_and_a_layer_count_is_refused():
    from cache import StaticCache

    k, v = random_kv(torch.Generator().manual_seed(3))
    with pytest.raises(IndexError, match="layer_idx 2 is past this cache's 2 layers"):
        StaticCache(2, max_length=8).update(k, v, 2)
    with pytest.raises(TypeError, match="DynamicCache takes no layer count"):
        DynamicCache(3)


def test_gpt_oss_decodes_with_an_empty_dynamic_cache_like_transformers_full_forward(tmp_path):
    hf = save_tiny_gpt_oss(tmp_path)  # sliding layers kept whole by DynamicLayer: the mask still applies the window
    model = load_pretrained(tmp_path)
    ids = torch.randint(3, 97, (2, 10), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = hf(ids).logits
        cache = DynamicCache()
        steps = [model(ids[:, :3], cache=cache).logits]
        steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(3, 10)]
    assert (torch.cat(steps, 1) - expected).abs().max() <= 1e-4
    assert cache.get_seq_length() == 10 and len(cache) == hf.config.num_hidden_layers
