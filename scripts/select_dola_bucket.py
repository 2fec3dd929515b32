"""Choose DoLa's premature-layer bucket on multiple-choice questions (shared/seeds/001, section 3).

    .venv/bin/python scripts/select_dola_bucket.py                       # default model, data/factual_mc.jsonl
    .venv/bin/python scripts/select_dola_bucket.py --data my.jsonl --limit 50 --methods low high

The seed splits the layers into three buckets ([1, 10], [11, 20], [21, 29] for 30 layers), picks the
bucket on a small validation set, and then contrasts only a few even layers of it at inference. This
script scores every question's choices by teacher forcing (generation/scoring.py) under plain decoding and
under DoLa with each bucket, prints the accuracy of each, and reports the best bucket.

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

from generation.dola import dola_buckets  # noqa: E402
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
                        help="extra dola_layers values to score besides the buckets, e.g. low high")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    return args


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
    buckets = dict(zip([f"bucket{i}" for i in range(3)], dola_buckets(model.config.num_hidden_layers)))
    start = time.perf_counter()
    accuracy = multiple_choice_accuracy(model, lambda text: tok.encode(text, add_special_tokens=False),
                                        questions, methods)
    print(f"{len(questions)} questions, {time.perf_counter() - start:.0f} s")
    for name, value in accuracy.items():
        detail = f"layers {buckets[name][0]}-{buckets[name][1]}" if name in buckets else ""
        print(f"{name:10s} {detail:14s} accuracy {value:.3f}")
    best = max((name for name in accuracy if name in buckets), key=lambda name: accuracy[name])
    print(f"best bucket: {best} (layers {buckets[best][0]}-{buckets[best][1]}), accuracy {accuracy[best]:.3f} "
          f"vs plain {accuracy['plain']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
