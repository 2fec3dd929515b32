"""Speculative decoding with the target's own int8 copy as the draft, against plain float32 greedy decoding.

    .venv/bin/python scripts/bench_int8_draft.py                          # default model, 3 alternations
    .venv/bin/python scripts/bench_int8_draft.py --new-tokens 128 --num-draft-tokens 2 4 6 --repeats 5

Each repeat runs plain float32 greedy and then each draft length, one after the other, so that a noisy,
shared machine slows all of them alike; the table gives the median tokens/s of each, the acceptance rate,
the target's forward passes (prefill + verifications) and whether the text equals float32 greedy. The int8
draft exists so that the output is float32's, token for token; whether it is faster depends on how much
cheaper an int8 token is than a float32 one here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generation import generate, speculative_generate  # noqa: E402
from generation.int8_draft import int8_draft  # noqa: E402
from model import load_pretrained  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

PROMPT = "Explain how a refrigerator keeps food cold, step by step."


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the zoo's default model)")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--num-draft-tokens", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from model.zoo import default_model_path
        args.model = default_model_path()
    target = load_pretrained(args.model, dtype=torch.float32)
    draft = int8_draft(target)
    tok = load_tokenizer(args.model)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                               tokenize=True)])
    options = dict(max_new_tokens=args.new_tokens, eos_token_id=[])
    runs = {"float32 greedy": lambda: generate(target, ids, **options)}
    runs.update({f"int8 draft, {g} per round": (lambda g=g: speculative_generate(target, draft, ids,
                                                                                    num_draft_tokens=g, **options))
                 for g in args.num_draft_tokens})
    with torch.no_grad():
        generate(target, ids, max_new_tokens=4)  # warm-up
    rates, outputs = {name: [] for name in runs}, {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            out = run()
            rates[name].append((out.sequences.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
            outputs[name] = out
    reference = outputs["float32 greedy"].sequences
    print(f"{args.model}, prompt {ids.shape[1]} tokens, {args.new_tokens} new, {torch.get_num_threads()} threads, "
          f"{args.repeats} alternating repeats")
    print(f"{'run':26s} {'tok/s (median)':>15s} {'min-max':>13s} {'accepted':>9s} {'target passes':>14s} same")
    for name, values in rates.items():
        stats = getattr(outputs[name], "stats", None)
        accepted = f"{100 * stats.acceptance_rate:.1f}%" if stats else "-"
        passes = stats.target_forward_passes if stats else args.new_tokens
        same = torch.equal(outputs[name].sequences, reference)
        print(f"{name:26s} {statistics.median(values):15.2f} {min(values):6.2f}-{max(values):<6.2f} {accepted:>9s} "
              f"{passes:14d} {same}")


if __name__ == "__main__":
    main()
