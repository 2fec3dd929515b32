"""Load time and peak resident memory of loading the default model: scratch-lm or transformers.

    .venv/bin/python scripts/load_memory.py ours                 # the plain model
    .venv/bin/python scripts/load_memory.py ours column_major    # loaded, then accelerated in that layout
    .venv/bin/python scripts/load_memory.py transformers

Run each in its own process (the kernel's peak-RSS counter only grows). "over start" is the peak minus the
memory the process held before loading (Python, torch and this package imported).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import load_pretrained  # noqa: E402
from accel import WEIGHT_LAYOUTS, accelerate  # noqa: E402
from model.fast_loading import release_file_pages  # noqa: E402
from model.zoo import default_model_path  # noqa: E402


def status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "ours"
    layout = sys.argv[2] if len(sys.argv) > 2 else None
    if which not in ("ours", "transformers") or layout not in (None, *WEIGHT_LAYOUTS):
        sys.exit(f"usage: load_memory.py [ours [{'|'.join(WEIGHT_LAYOUTS)}] | transformers]")
    path = default_model_path()
    if which == "transformers":
        from transformers import LlamaForCausalLM
    start_rss = status_mib("VmRSS")
    start = time.perf_counter()
    if which == "ours":
        model = load_pretrained(path)
        if layout is not None:
            accelerate(model, layout=layout, on_copied=release_file_pages)
    else:
        model = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))  # touch every weight once
    elapsed = time.perf_counter() - start
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    over = status_mib("VmHWM") - start_rss
    name = f"ours {layout or 'plain'}" if which == "ours" else which
    print(f"{name}: load + first forward {elapsed:.3f} s, weights {weights:.0f} MiB, "
          f"peak RSS over start {over:.0f} MiB = {over / weights:.2f}x the weights")


if __name__ == "__main__":
    main()
