"""Reliability over time: a 4,096-token generation whose KV cache grows exactly as the lesson-5 formula says,
a hundred generate() calls in a row without memory growth, and two threads sharing one model.

References: the formula 2 x layers x batch x kv_heads x seq_len x head_dim x sizeof(dtype) written out here,
a forward pass over the whole text (no cache), and the same calls run one after the other.
"""

from __future__ import annotations

import gc
import threading

import pytest
import torch

import generation.loop
from cache import DynamicCache
from generation import generate, stream
from model import CausalLM, ModelConfig

VOCAB = 64


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Thousands of tiny ops: a second intra-op thread only adds hand-over cost (10x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(max_position_embeddings: int = 128, seed: int = 0) -> CausalLM:
    config = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                         initializer_range=0.2, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return CausalLM(config).eval()


# --------------------------------------------------------------------------- 4,096 tokens
def held_bytes(cache: DynamicCache) -> int:
    """Bytes of the storage behind every key and value tensor: the memory really held, views included."""
    return sum(t.untyped_storage().nbytes() for layer in cache.layers for t in (layer.keys, layer.values))


def test_4096_new_tokens_grow_the_cache_exactly_as_the_formula_says(monkeypatch):
    model = tiny_model(max_position_embeddings=4200)
    seen: list[tuple[int, int, int]] = []  # (positions cached, nbytes(), storage bytes) after each step

    class MeasuredCache(DynamicCache):  # the cache generate() builds, measured once per step
        def update(self, keys, values, layer_idx):
            result = super().update(keys, values, layer_idx)
            if layer_idx == model.config.num_hidden_layers - 1:
                seen.append((self.get_seq_length(), self.nbytes(), held_bytes(self)))
            return result

    # generate() preallocates a StaticCache for the run; this test measures the growing DynamicCache instead.
    monkeypatch.setattr(generation.loop, "cache_for_config",
                        lambda config, max_length=None: MeasuredCache())
    prompt = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(1))
    out = generate(model, prompt, max_new_tokens=4096, eos_token_id=[])
    assert out.new_tokens.shape == (1, 4096) and out.stop_reasons == ["max_new_tokens"]

    # 2 (K and V) x 2 layers x batch 1 x 2 kv heads x head_dim 8 x 4 bytes = 256 bytes per position
    per_position = 2 * 2 * 1 * 2 * 8 * 4
    assert [length for length, _, _ in seen] == list(range(8, 8 + 4096))  # the last token is never fed back
    assert all(nbytes == held == per_position * length for length, nbytes, held in seen)
    assert seen[-1][1] == 1_050_368  # 4,103 positions x 256 bytes, about 1 MiB

    # The tokens are the greedy ones at every position: a forward pass over the whole text, without a cache,
    # puts each chosen token at the top (within float noise; a near-tie may resolve either way).
    with torch.no_grad():
        full = model(out.sequences).logits[0, 7:-1]  # (4096, V) the prediction for each generated position
    chosen = full.gather(1, out.new_tokens[0][:, None])[:, 0]
    assert (chosen >= full.max(dim=-1).values - 1e-4).all()


# --------------------------------------------------------------------------- a hundred calls
def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def live_tensors() -> int:
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))  # type(): no proxy lookups


class Letters:
    def decode(self, ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def one_call(model: CausalLM, i: int) -> torch.Tensor:
    """Call i of the series; the variants go through greedy, sampling, beam search and stream."""
    prompt = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(i))
    generator = torch.Generator().manual_seed(i)
    kind = i % 4
    if kind == 0:
        return generate(model, prompt, max_new_tokens=16, output_scores=True).sequences
    if kind == 1:
        return generate(model, prompt, max_new_tokens=16, do_sample=True, top_p=0.9, top_k=20,
                        repetition_penalty=1.2, generator=generator).sequences
    if kind == 2:
        return generate(model, prompt, max_new_tokens=12, num_beams=3, no_repeat_ngram_size=2).sequences
    return torch.stack(list(stream(model, prompt, max_new_tokens=16, stop_strings="xyz", tokenizer=Letters())), 1)


def test_a_hundred_generate_calls_in_a_row_hold_no_memory():
    model = tiny_model()
    for i in range(12):  # warm-up: allocator pools, lazily built kernels
        one_call(model, i)
    gc.collect()
    rss_before, tensors_before = rss_bytes(), live_tensors()
    for i in range(100):
        one_call(model, i)
    gc.collect()
    growth = rss_bytes() - rss_before
    assert live_tensors() == tensors_before  # nothing a call made is still referenced
    assert growth < 4 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 100 calls"


# --------------------------------------------------------------------------- two threads, one model
def test_two_threads_on_one_model_give_the_sequential_results():
    """Each thread runs all four kinds of call (greedy, sampling, beams, stream), started together, 3 times."""
    model = tiny_model()
    calls = list(range(8))
    sequential = {i: one_call(model, i) for i in calls}
    for _ in range(3):
        results: dict[int, torch.Tensor] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def worker(mine: list[int]) -> None:
            try:
                start.wait()
                for i in mine:
                    results[i] = one_call(model, i)
            except BaseException as error:  # reported by the main thread below
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(calls[:4],)),
                   threading.Thread(target=worker, args=(calls[4:],))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for i in calls:
            assert torch.equal(results[i], sequential[i]), f"call {i} differs when run beside another thread"
