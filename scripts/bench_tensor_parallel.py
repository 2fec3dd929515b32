"""Tensor parallelism measured: each process's loaded bytes and peak memory, and greedy tokens/s.

    torchrun --standalone --nproc-per-node 1 scripts/bench_tensor_parallel.py    # one process, same code path
    torchrun --standalone --nproc-per-node 2 scripts/bench_tensor_parallel.py    # SmolLM2: 3 kv heads as 2 + 1

Each process loads its part of the default model (or --model) with model/shard_loading.py, decodes the same
greedy tokens, and process 0 prints one table row per process. The bytes every process sends per token are
computed: two all-reduces of (1, H) activations per block (ring: 2 (N - 1) / N of the bytes each).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from generation import generate  # noqa: E402
from model.shard_loading import load_tensor_parallel  # noqa: E402
from model.tensor_parallel import close_tensor_parallel, init_tensor_parallel  # noqa: E402

MB = 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # Linux: KiB


def greedy_rate(model, args) -> tuple[float, object]:
    """Median greedy tokens/s over the repeats, and the last output."""
    prompt = torch.tensor([[1, 504, 3458, 282, 4649, 30, 357, 1953, 314, 253, 1345, 2886]])
    rates = []
    with torch.inference_mode():
        for _ in range(args.repeats):
            if dist.is_initialized():
                dist.barrier()
            start = time.perf_counter()
            out = generate(model, prompt, max_new_tokens=args.new_tokens, eos_token_id=[])
            rates.append(args.new_tokens / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2], out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="default: SmolLM2-135M-Instruct from the zoo")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from model.zoo import default_model_path

    torch.set_num_threads(1)
    mesh = init_tensor_parallel("cpu", timeout_s=300)
    before = peak_rss_mb()
    folder = args.model or default_model_path()
    model = load_tensor_parallel(folder, mesh, dtype=torch.float32)
    rate, out = greedy_rate(model, args)
    world, H, layers = mesh.size(), model.config.hidden_size, model.config.num_hidden_layers
    sent = 2 * layers * H * 4 * 2 * (world - 1) / world  # bytes per token and process, fp32 activations
    counts = model.loaded_bytes
    row = (f"| {world} | {mesh.get_local_rank()} | {counts.sharded_read / MB:.1f} of {counts.sharded_total / MB:.1f} "
           f"| {counts.replicated_read / MB:.1f} | {before:.0f} -> {peak_rss_mb():.0f} | {sent / 1e3:.1f} | {rate:.1f} |")
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if mesh.get_local_rank() == 0:
        print("| processes | process | split tensors read (MB) | replicated read (MB) | peak RSS before -> after (MB) "
              "| sent per token (KB) | greedy tokens/s (median) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(rows))
        print(f"tokens: {out.new_tokens[0, :12].tolist()} ...")
        if world == 1:  # the same decoding unsplit: load_pretrained's model (its CPU kernels), one thread too
            from model import load_pretrained

            rate, plain = greedy_rate(load_pretrained(folder, dtype=torch.float32), args)
            same = torch.equal(plain.sequences, out.sequences)
            print(f"load_pretrained (not split), 1 thread: {rate:.1f} tokens/s, same tokens: {same}")
    del model  # freed now, not at interpreter shutdown (see close_tensor_parallel)
    close_tensor_parallel()


if __name__ == "__main__":
    main()
