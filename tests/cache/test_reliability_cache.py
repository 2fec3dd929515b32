"""The KV cache grows with the answer (cache/static.py), and rows that cannot fit are refused up front
(cache/budget.py).

A batch of 16 with max_new_tokens=8000 whose answers end at once must cost what the answers use, not what the
limit allows: that run goes in its own process under an address-space cap and a timeout, so a cache that
preallocates again fails here (MemoryError) instead of slowing the machine down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cache import DynamicCache, DynamicLayer, StaticCache, StaticLayer
from cache.static import CHUNK
from cli.test_cli import cli, run_main, tiny  # noqa: F401  (fixtures: the tiny chat model and the script's main)

ROOT = Path(__file__).resolve().parents[2]


def kv(B: int, T: int, seed: int, n_kv: int = 2, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, n_kv, T, d, generator=g), torch.randn(B, n_kv, T, d, generator=g)


def test_buffers_grow_with_the_answer_and_hold_what_concatenation_holds():
    layer, reference = StaticLayer(max_length=8010), DynamicLayer()
    B, n_kv, d = 3, 2, 8
    per_position = 2 * B * n_kv * d * 4  # keys and values, float32
    for step, T in enumerate([10] + [1] * 8):  # a 10-token prompt, then 8 tokens of answer
        got, want = layer.update(*kv(B, T, step)), reference.update(*kv(B, T, step))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert layer.allocated_bytes() == per_position * (10 + CHUNK)  # not 8010 positions
    for step in range(CHUNK):  # past the first buffer: it doubles, and the contents stay the same
        got, want = layer.update(*kv(B, 1, 100 + step)), reference.update(*kv(B, 1, 100 + step))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert layer.allocated_bytes() == per_position * 2 * (10 + CHUNK)
    small = StaticLayer(max_length=300)
    small.update(*kv(1, 200, 0))
    small.update(*kv(1, 90, 1))  # needs 290: doubling would give 912, the limit is 300
    assert small.keys.shape[-2] == 300
    with pytest.raises(ValueError, match="StaticCache is full: 301 positions needed, 300 allocated"):
        small.update(*kv(1, 11, 2))


@pytest.mark.parametrize("make", [lambda: StaticCache(1, max_length=64), DynamicCache], ids=["static", "dynamic"])
def test_reusing_a_cache_for_another_batch_size_is_named(make):
    cache = make()
    cache.update(*kv(4, 5, 0), 0)
    with pytest.raises(ValueError, match=r"this cache holds keys of shape \(batch, kv heads, -, head_dim\) = "
                                         r"\(4, 2, 8\), the new ones are \(2, 2, 8\): use a new cache"):
        cache.update(*kv(2, 1, 1), 0)


LONG_LIMIT = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    sys.path.insert(0, "tests")
    from helpers import save_tiny_llama
    from model import load_pretrained
    from generation import generate
    page = resource.getpagesize()
    def statm():
        return [int(x) * page for x in open("/proc/self/statm").read().split()[:2]]
    def peak_rss():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's across exec)
        return 1024 * int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
    save_tiny_llama(sys.argv[1], vocab_size=32, hidden_size=256, intermediate_size=64, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8200)
    model = load_pretrained(sys.argv[1])
    ids = torch.randint(0, 32, (16, 8), generator=torch.Generator().manual_seed(0))
    virtual, before = statm()
    resource.setrlimit(resource.RLIMIT_AS, (virtual + 2**30, virtual + 2**30))  # preallocating needs 4.2 GB
    start = time.perf_counter()
    out = generate(model, ids, max_new_tokens=8000, eos_token_id=list(range(32)), pad_token_id=0)  # ends at once
    seconds = time.perf_counter() - start
    peak = peak_rss()
    print(json.dumps({"new": out.sequences.shape[1] - 8, "seconds": seconds, "extra_mb": (peak - before) / 2**20}))
""")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measures memory through /proc (Linux)")
def test_a_long_limit_costs_nothing_until_used(tmp_path):
    # 16 rows x 8008 positions x 4 layers x (K and V) x 4 heads x 64 x 4 bytes = 4.2 GB if preallocated.
    run = subprocess.run([sys.executable, "-c", LONG_LIMIT, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["new"] == 1, result
    assert result["extra_mb"] < 100 and result["seconds"] < 5, result


def test_too_many_rows_are_refused_before_decoding_with_the_figures(tmp_path, monkeypatch):
    import model.checks
    from helpers import save_tiny_llama
    from generation import generate
    from model import load_pretrained

    save_tiny_llama(tmp_path)  # vocab 97, 2 layers, 2 kv heads of 8: 2*2*2*8*4 = 256 bytes per position
    tiny = load_pretrained(tmp_path)
    monkeypatch.setattr(model.checks, "available_memory", lambda device: 2**30)  # 1 GB free
    ids = torch.tensor([[5, 6, 7]])
    rows = 100000
    cache, logits = rows * (3 + CHUNK) * 256, rows * 97 * 4 * 4
    message = (f"batch 1 x num_beams 100000 = 100000 rows need about {(cache + logits) / 2**30:.1f} GB to start "
               f"decoding (KV cache {cache / 2**30:.1f} GB, logits {logits / 2**30:.1f} GB) but 1.0 GB is available")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate(tiny, ids, num_beams=rows, max_new_tokens=2)
    out = generate(tiny, ids, num_beams=4, max_new_tokens=2)  # 4 rows fit
    assert out.sequences.shape == (1, 5)


def test_num_beams_100000_on_the_command_line_is_one_line_with_exit_code_2(tiny, cli, capsys, monkeypatch):
    import model.checks

    monkeypatch.setattr(model.checks, "available_memory", lambda device: 8 * 2**30)
    code, out, err = run_main(cli, capsys, "--model", str(tiny[0]), "--prompt", "hi", "--num-beams", "100000",
                              "--max-new-tokens", "2")
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert "batch 1 x --num-beams 100000 = 100000 rows need about" in err and "8.0 GB is available" in err, err
