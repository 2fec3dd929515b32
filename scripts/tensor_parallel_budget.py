"""Tensor parallelism on paper: memory per GPU, bytes sent per token and a tokens/s bound for GPT-OSS.

    python scripts/tensor_parallel_budget.py            # gpt-oss-20b and gpt-oss-120b on 2, 4 and 8 GPUs

The split is the plan's own (model/tensor_parallel.py, applied to shapes counted on the meta device): each
parameter the plan splits costs 1/N per GPU, the rest (embedding, head, norms, router) is whole on every GPU.
Experts in MXFP4 (4.25 bits a value), everything else bf16, as the release ships them.

Per generated token (batch 1) every GPU reads its weights once: attention 1/N, k of E experts at 1/N, the whole
head; and takes part in 2 all-reduces per block of H bf16 values (ring: it sends 2 (N - 1) / N of them). The
bound is 1 / (read time + all-reduce time), with no overlap and no compute, so real decoding is slower.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from model import CausalLM, ModelConfig  # noqa: E402
from model.tensor_parallel import Part, parameter_parts, tensor_parallel_plan  # noqa: E402

COMMON = dict(model_type="gpt_oss", vocab_size=201088, hidden_size=2880, intermediate_size=2880,
              num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_experts_per_tok=4, sliding_window=128,
              max_position_embeddings=131072)
CONFIGS = {"gpt-oss-20b": dict(COMMON, num_hidden_layers=24, num_local_experts=32),  # their config.json keys
           "gpt-oss-120b": dict(COMMON, num_hidden_layers=36, num_local_experts=128)}
# Assumed hardware (datasheet figures): H100 SXM HBM3 3.35 TB/s; NVLink 4 450 GB/s each way per GPU; a small
# NCCL all-reduce inside one node takes about 10 us whatever its size (latency-bound at a few KB).
HBM_BYTES_PER_S = 3.35e12
LINK_BYTES_PER_S = 450e9
ALL_REDUCE_LATENCY_S = 10e-6
GB = 1e9


def bytes_of(name: str, numel: int) -> float:
    mxfp4 = name.endswith(("experts.gate_up_proj", "experts.down_proj"))
    return numel * (4.25 / 8 if mxfp4 else 2)


def budget(config: ModelConfig, world: int) -> dict[str, float]:
    with torch.device("meta"):
        model = CausalLM(config)
    params = dict(model.named_parameters())
    parts = parameter_parts(tensor_parallel_plan(config), list(params), rank=0, world=1)
    split = sum(bytes_of(n, p.numel()) for n, p in params.items() if isinstance(parts[n], Part))
    whole = sum(bytes_of(n, p.numel()) for n, p in params.items() if not isinstance(parts[n], Part))
    experts = sum(bytes_of(n, p.numel()) for n, p in params.items() if ".experts." in n)
    embedding = bytes_of("embed_tokens.weight", params["embed_tokens.weight"].numel())  # a row lookup: not read
    active = (split + whole - experts - embedding + experts * config.num_experts_per_tok / config.num_local_experts)
    read_split = active - (whole - embedding)  # what the plan splits, of the active bytes
    read = read_split / world + (whole - embedding)  # bytes one GPU reads per token
    sent = 2 * config.num_hidden_layers * config.hidden_size * 2 * 2 * (world - 1) / world
    all_reduces = 2 * config.num_hidden_layers if world > 1 else 0
    seconds = read / HBM_BYTES_PER_S + all_reduces * ALL_REDUCE_LATENCY_S + sent / LINK_BYTES_PER_S
    return {"memory": (split / world + whole) / GB, "read": read / GB, "head": (whole - embedding) / GB,
            "sent": sent / 1e3, "bound": 1 / seconds, "memory_bound_only": HBM_BYTES_PER_S / read}


def main() -> None:
    print("| model | GPUs | weights per GPU (GB) | read per token per GPU (GB) | of which replicated (GB) "
          "| sent per token per GPU (KB) | tokens/s bound (HBM + all-reduce) | HBM alone |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, keys in CONFIGS.items():
        config = ModelConfig.from_dict(keys)
        for world in (1, 2, 4, 8):
            b = budget(config, world)
            print(f"| {name} | {world} | {b['memory']:.1f} | {b['read']:.2f} | {b['head']:.2f} | {b['sent']:.0f} | {b['bound']:.0f} "
                  f"| {b['memory_bound_only']:.0f} |")


if __name__ == "__main__":
    main()
