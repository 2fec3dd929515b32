"""Run by tests/model/test_tensor_parallel.py under `torchrun --nproc-per-node 2`: one process-group start runs every
check, and each process writes what it computed to `<out>/rank<r>.pt`; the test compares with one process.

    torchrun --nproc-per-node 2 tests/model/tensor_parallel_worker.py OUT --model NAME=FOLDER ... [--bad NAME=FOLDER ...]

--model: logits, greedy / sampled / beam / DoLa / entropy tokens and loaded bytes of a good checkpoint.
--bad: a set-up that must fail; the error message each process got is recorded (FOLDER may hold `{rank}`, so
that one process reads a different copy, e.g. one that lacks a shard).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cache import DynamicCache  # noqa: E402
from generation import generate  # noqa: E402
from model.shard_loading import load_tensor_parallel  # noqa: E402
from model import load_pretrained  # noqa: E402
from model.tensor_parallel import close_tensor_parallel, init_tensor_parallel, parallelize  # noqa: E402

# Two left-padded rows; longer than the tiny GPT-OSS sliding window (4), so windowed layers drop keys.
PROMPTS = torch.tensor([[0, 0, 5, 17, 33, 8, 61, 12], [9, 41, 3, 77, 25, 14, 6, 50]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
DECODING = {  # name -> generate() options; shared with the test, which runs them on one process
    "greedy": dict(max_new_tokens=6),
    "sampling": dict(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=20),
    "beam": dict(max_new_tokens=5, num_beams=3),
    "dola": dict(max_new_tokens=5, dola_layers=[0, 1]),
    "entropy": dict(max_new_tokens=5, entropy_decoding="trough"),
}


def decode_all(model) -> dict[str, torch.Tensor]:
    """Every strategy of DECODING on PROMPTS; sampling with the same seed on every process."""
    tokens = {}
    for name, options in DECODING.items():
        generator = torch.Generator().manual_seed(0) if options.get("do_sample") else None
        out = generate(model, PROMPTS, MASK, generator=generator, eos_token_id=[], pad_token_id=0, **options)
        tokens[name] = out.sequences
    return tokens


def check_model(folder: str, mesh) -> dict:
    model = load_tensor_parallel(folder, mesh, dtype=torch.float32)
    cache = DynamicCache()
    with torch.inference_mode():
        logits = model(PROMPTS, attention_mask=MASK, cache=cache).logits  # (B, T, V), replicated on every process
        tokens = decode_all(model)
    bytes_read = model.loaded_bytes
    whole = parallelize(load_pretrained(folder, dtype=torch.float32), mesh)  # the plan on a loaded model
    with torch.inference_mode():
        split_after_loading = whole(PROMPTS, attention_mask=MASK).logits
    return {"logits": logits.clone(), "tokens": tokens, "logits_split_after_loading": split_after_loading.clone(),
            "sharded_read": bytes_read.sharded_read, "sharded_total": bytes_read.sharded_total,
            "replicated_read": bytes_read.replicated_read,
            "local_heads": (model.layers[0].self_attn.n_heads, model.layers[0].self_attn.n_kv),
            "cached_keys_shape": tuple(cache.layers[0].keys.shape)}  # (B, local n_kv, T, d)


def check_failure(folder: str, mesh) -> str:
    try:
        load_tensor_parallel(folder, mesh, dtype=torch.float32)
    except Exception as err:  # the message is what the test inspects
        return f"{type(err).__name__}: {err}"
    return "no error"


def say(line: str) -> None:
    """One progress line on stderr, written whole (the two processes share the pipe)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def named(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--bad", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    mesh = init_tensor_parallel("cpu", timeout_s=60)
    rank = mesh.get_local_rank()
    results = {"world_size": mesh.size()}
    for name, folder in named(args.model).items():
        results[name] = check_model(folder, mesh)
        say(f"process {rank}: checked {name}")
    for name, folder in named(args.bad).items():
        results[name] = check_failure(folder.format(rank=rank), mesh)
        say(f"process {rank}: checked the failing set-up {name}")
    torch.save(results, args.out / f"rank{rank}.pt")
    close_tensor_parallel()
    say(f"process {rank}: results saved, process group destroyed")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    faulthandler.enable()  # a crash in native code (an abort in gloo) prints the Python stack it happened under
    main()
