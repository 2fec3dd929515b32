"""Choose DoLa's premature-layer bucket on multiple-choice questions (shared/seeds/001, section 3).

    .venv/bin/python scripts/select_dola_bucket.py                       # default model, data/factual_mc.jsonl
    .venv/bin/python scripts/select_dola_bucket.py --data my.jsonl --limit 50 --methods low high
    .venv/bin/python scripts/generate.py --dola-layers dola_choice.json --prompt "..."   # use the choice

The seed splits the layers into three buckets ([1, 10], [11, 20], [21, 29] for 30 layers), picks the
bucket on a small validation set, and then contrasts only a few even layers of it at inference. This
script scores every question's choices by teacher forcing (generation/scoring.py) under plain decoding and
under DoLa with each bucket, prints the accuracy of each and a verdict, and writes the choice to --output
(generation/dola_choice.py), which generate(dola_layers=PATH) and --dola-layers PATH read back.

The rule (`choose_bucket`): a bucket is recommended only when it answers strictly more questions right than
plain decoding (a tie with plain decoding is no reason to pay for DoLa's extra work); among buckets with the
same best accuracy the one with the shallower layers (the lower number) wins. When no bucket beats plain
decoding the verdict says so and the file holds "dola_layers": null: DoLa off.

data/factual_mc.jsonl holds about 100 plain-English factual questions written for this project
(capitals, science, animals, history, numbers), one JSON object per line:
    {"question": "What is the capital of France?", "choices": ["Marseille", "Paris", "Lyon", "Nice"], "answer": 1}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generation.dola import bucket_layers, dola_buckets  # noqa: E402
from generation.dola_choice import save_dola_choice  # noqa: E402
from generation.scoring import load_multiple_choice, multiple_choice_accuracy  # noqa: E402
from model import load_pretrained  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "factual_mc.jsonl"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Hugging Face style model folder (default: the zoo's default model)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="JSONL of question / choices / answer")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    parser.add_argument("--alpha", type=float, default=0.1, help="DoLa's plausibility alpha (eq. 4)")
    parser.add_argument("--variant", default="paper", choices=["paper", "transformers"])
    parser.add_argument("--methods", nargs="*", default=None,
                        help="extra dola_layers values to score besides the buckets, e.g. low high (shown, not chosen)")
    parser.add_argument("--output", type=Path, default=Path("dola_choice.json"),
                        help="where to write the choice (JSON; default dola_choice.json)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if not args.output.parent.is_dir():
        parser.error(f"--output: the folder {args.output.parent} does not exist")
    return args


TIE_RULE = ("a bucket must answer strictly more questions right than plain decoding; among buckets with the same "
            "best accuracy the shallower (lower-numbered) one wins")


def choose_bucket(accuracy: dict[str, float], bucket_names: list[str]) -> tuple[str | None, str]:
    """(the recommended bucket or None for DoLa off, a one-line verdict) from {method: accuracy} (TIE_RULE)."""
    best = max(bucket_names, key=lambda name: (accuracy[name], -bucket_names.index(name)))  # first of the best
    tied = [name for name in bucket_names if accuracy[name] == accuracy[best]]
    tie_note = f" (tied with {', '.join(tied[1:])}: the shallower wins)" if len(tied) > 1 else ""
    if accuracy[best] > accuracy["plain"]:
        return best, f"use DoLa with {best}{tie_note}: {accuracy[best]:.3f} against plain decoding's " \
                     f"{accuracy['plain']:.3f}"
    return None, (f"no bucket beats plain decoding ({accuracy['plain']:.3f}; best bucket {best} "
                  f"{accuracy[best]:.3f}{tie_note}): leave DoLa off on this model")


def bucket_methods(num_hidden_layers: int, extra: list[str] | None, alpha: float, variant: str) -> dict:
    """{"plain": {}, "bucket0": {...}, ...}: generate()'s layer-selection options for each method."""
    methods: dict[str, dict] = {"plain": {}}
    names = [f"bucket{i}" for i in range(len(dola_buckets(num_hidden_layers)))] + list(extra or [])
    for name in names:
        methods[name] = {"dola_layers": name, "dola_alpha": alpha, "dola_variant": variant}
    return methods


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    questions = load_multiple_choice(args.data)[:args.limit]  # checked before the model is loaded
    if args.model is None:
        from model.zoo import default_model_path
        args.model = default_model_path()
    model = load_pretrained(args.model, dtype=torch.float32)
    tok = load_tokenizer(args.model)
    methods = bucket_methods(model.config.num_hidden_layers, args.methods, args.alpha, args.variant)
    buckets = {f"bucket{i}": bucket for i, bucket in enumerate(dola_buckets(model.config.num_hidden_layers))}
    start = time.perf_counter()
    accuracy = multiple_choice_accuracy(model, lambda text: tok.encode(text, add_special_tokens=False),
                                        questions, methods)
    print(f"{len(questions)} questions from {args.data}, {time.perf_counter() - start:.0f} s")
    for name, value in accuracy.items():
        detail = f"layers {buckets[name][0]}-{buckets[name][1]}" if name in buckets else ""
        print(f"{name:10s} {detail:14s} accuracy {value:.3f}  ({round(value * len(questions))} right)")
    choice, verdict = choose_bucket(accuracy, list(buckets))
    print(f"verdict: {verdict}")
    layers = bucket_layers(*buckets[choice]) if choice is not None else None
    save_dola_choice(args.output, layers, bucket=choice, verdict=verdict, rule=TIE_RULE, accuracy=accuracy,
                     questions=len(questions), data=str(args.data), model=str(args.model),
                     num_hidden_layers=model.config.num_hidden_layers, dola_alpha=args.alpha,
                     dola_variant=args.variant)
    print(f"wrote {args.output}: dola_layers = {layers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
