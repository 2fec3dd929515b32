"""What loading a GPT-OSS checkpoint needs: parameters, memory by dtype, KV cache, and a time estimate.

    python scripts/gpt_oss_budget.py                     # gpt-oss-20b's shapes (its config.json, below)
    python scripts/gpt_oss_budget.py path/to/config.json # any gpt_oss config

Parameters are counted on a model built on the meta device (no memory), so the numbers are the code's own
shapes, not a hand formula. The decoding speed of MXFP4 -> bf16 is measured here on one expert matrix.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from model import CausalLM, ModelConfig  # noqa: E402
from model.mxfp4 import dequantize_expert_weight  # noqa: E402

GPT_OSS_20B = dict(  # the keys of openai/gpt-oss-20b's config.json that fix the shapes
    model_type="gpt_oss", vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
    num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4,
    sliding_window=128, max_position_embeddings=131072)
GB = 1e9
MXFP4_BITS = 4 + 8 / 32  # a 4-bit code per value plus one 8-bit scale per block of 32


def count_parameters(config: ModelConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = CausalLM(config)
    counts = {"experts": 0, "embed + head": 0, "attention + router + norms": 0}
    for name, p in model.named_parameters():
        kind = "experts" if ".experts." in name else "embed + head" if name in (
            "embed_tokens.weight", "lm_head.weight") else "attention + router + norms"
        counts[kind] += p.numel()
    return counts


def decode_seconds_per_value() -> float:
    """Time MXFP4 -> bf16 for one expert's gate_up_proj of gpt-oss-20b (2 x 2880 x 2880 values)."""
    blocks = torch.randint(0, 256, (1, 5760, 90, 16), dtype=torch.uint8)
    scales = torch.randint(118, 128, (1, 5760, 90), dtype=torch.uint8)
    start = time.perf_counter()
    dequantize_expert_weight(blocks, scales, torch.bfloat16)
    return (time.perf_counter() - start) / (5760 * 2880)


def main() -> None:
    config = ModelConfig.from_json(sys.argv[1]) if len(sys.argv) > 1 else ModelConfig.from_dict(GPT_OSS_20B)
    counts = count_parameters(config)
    total, experts = sum(counts.values()), counts["experts"]
    # Weights one token multiplies by: all but the experts and the embedding (a row lookup), plus k of E experts.
    embedding = config.vocab_size * config.hidden_size
    active = total - experts - embedding + experts * config.num_experts_per_tok // config.num_local_experts
    for kind, n in counts.items():
        print(f"{kind:28s} {n / 1e9:7.3f} B parameters")
    print(f"{'total':28s} {total / 1e9:7.3f} B   (active per token: {active / 1e9:.2f} B, "
          f"{active * 2 / GB:.1f} GB of bf16 weights read per generated token)")
    mxfp4_file = experts * MXFP4_BITS / 8 + (total - experts) * 2
    print("\n| weights | memory |\n| --- | --- |")
    print(f"| checkpoint: MXFP4 experts + bf16 rest | {mxfp4_file / GB:.1f} GB |")
    for dtype, size in (("bf16 / fp16", 2), ("fp32", 4)):
        print(f"| loaded, all {dtype} | {total * size / GB:.1f} GB |")
    kv = 2 * config.num_key_value_heads * config.head_dim * 2  # K and V, bf16, per layer and token
    full = config.layer_types.count("full_attention")
    sliding = config.num_hidden_layers - full
    print(f"\nKV cache (bf16, batch 1): {full * kv / 1024:.0f} KiB per token for the {full} full layers, plus "
          f"{sliding * kv * (config.sliding_window - 1) / 1e6:.1f} MB fixed for the {sliding} sliding ones "
          f"(a plain DynamicCache: {config.num_hidden_layers * kv / 1024:.0f} KiB per token)")
    seconds = decode_seconds_per_value() * experts
    print(f"MXFP4 -> bf16 decoding of all experts on this CPU ({torch.get_num_threads()} threads): {seconds:.0f} s")


if __name__ == "__main__":
    main()
