"""Tokens/s of DoLa and entropy layer choice next to plain greedy, ours and transformers', on the default model.

    .venv/bin/python scripts/bench_layer_selection.py                  # 128 new tokens, float32, 3 repeats
    .venv/bin/python scripts/bench_layer_selection.py --new-tokens 32 --repeats 1

Every case decodes exactly --new-tokens tokens (no end token) greedily from the same prompt. The cases run
interleaved, one repeat of each in turn, so that a slow moment of a shared machine hits them alike; the
median tokens/s of each is printed with its ratio to our plain greedy. Each of our cases runs in the weight layout
generate.py's `--weight-layout auto` picks for it (accel/linear.py, choose_weight_layout): the layer-selection cases
get a packed head.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generation import generate  # noqa: E402
from model import load_pretrained  # noqa: E402
from accel import accelerate, choose_weight_layout  # noqa: E402
from model.zoo import default_model_path  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

PROMPT = "Write a long story about a robot who learns to paint, with many details."
OURS = {
    "greedy": {},
    "dola high (paper)": {"dola_layers": "high"},
    "dola high (transformers)": {"dola_layers": "high", "dola_variant": "transformers"},
    "entropy trough (lazy walk)": {"entropy_decoding": "trough"},
    "entropy trough (all 30 layers)": {"entropy_decoding": "trough", "entropy_record_tokens": True},
}
THEIRS = {"transformers greedy": {}, "transformers dola high": {"dola_layers": "high"}}


def time_ours(models, ids: torch.Tensor, new_tokens: int, options: dict) -> float:
    model = models(choose_weight_layout(one_row_blocks=True, one_row_head=not options))  # not timed
    start = time.perf_counter()
    out = generate(model, ids, max_new_tokens=new_tokens, eos_token_id=[], **options)
    assert out.new_tokens.shape[1] == new_tokens
    return new_tokens / (time.perf_counter() - start)


def time_theirs(hf, ids: torch.Tensor, new_tokens: int, options: dict) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          trust_remote_code=True, **options)
    assert out.shape[1] - ids.shape[1] == new_tokens
    return new_tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-transformers", action="store_true", help="time only our cases")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = default_model_path()
    models = functools.cache(lambda layout: accelerate(load_pretrained(path, dtype=torch.float32), layout=layout))
    ids = torch.tensor([load_tokenizer(path).encode(PROMPT, add_special_tokens=False)])
    cases = {name: (time_ours, models, options) for name, options in OURS.items()}
    if not args.no_transformers:
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        cases.update({name: (time_theirs, hf, options) for name, options in THEIRS.items()})
    for timer, runner, options in cases.values():  # warm-up: first-call allocations, lazy imports
        timer(runner, ids, 4, options)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (timer, runner, options) in cases.items():
            rates[name].append(timer(runner, ids, args.new_tokens, options))
    base = statistics.median(rates["greedy"])
    print(f"{args.new_tokens} new tokens, float32, {args.threads} threads, median of {args.repeats}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:32s} {rate:7.2f} tokens/s   {rate / base:5.2f}x our greedy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
