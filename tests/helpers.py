"""Shared builders for the tests: tiny random transformers checkpoints (the oracle) and the default model's folder.

Imported as `from helpers import save_tiny_llama` from any test folder (pyproject puts tests/ on the path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]  # the repository root

# The start of a script run in a capped subprocess to measure one call: its own memory (statm) and peak (VmHWM).
MEASURE_PRELUDE = """\
import json, os, resource, sys, time
page = resource.getpagesize()
def statm():  # (virtual, resident) bytes of this process
    return [int(x) * page for x in open("/proc/self/statm").read().split()[:2]]
def peak_rss():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's across exec)
    return 1024 * int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""


def read_until_printed(process: subprocess.Popen, at_least: int = 20, seconds: float = 120) -> tuple[bytearray,
                                                                                                     threading.Thread]:
    """Collect `process`'s stdout in a thread; return (what it printed so far, the thread) once it printed
    `at_least` bytes, ended, or `seconds` passed. The bytearray keeps growing until the thread is joined."""
    printed = bytearray()
    reader = threading.Thread(target=lambda: [printed.extend(chunk) for chunk in iter(lambda: os.read(
        process.stdout.fileno(), 1 << 16), b"")], daemon=True)
    reader.start()
    deadline = time.monotonic() + seconds
    while len(printed) < at_least and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    return printed, reader


def save_tiny_llama(folder: Path, seed: int = 0, **overrides):
    """Save a random transformers LlamaForCausalLM with a tiny config; return the HF model (fp32, eval)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    settings.update(overrides)
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    hf.save_pretrained(folder)
    return hf


def save_tiny_gpt_oss(folder: Path, seed: int = 0, **overrides):
    """Save a random transformers GptOssForCausalLM (eager attention); return it (fp32, eval).

    Every parameter is redrawn from N(0, 0.3^2) (norms around 1; the experts' gate_up_proj N(0, 1), so that
    the clamp at swiglu_limit bites), not HF's 0.02 init: the sinks, the biases, the router and the clamp all
    change the output, and a bug in any of them shows in the logits.
    """
    from transformers import GptOssConfig, GptOssForCausalLM

    settings = dict(vocab_size=97, hidden_size=32, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                    max_position_embeddings=256, eos_token_id=2, pad_token_id=0,
                    rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                  "truncate": False, "original_max_position_embeddings": 64})
    settings.update(overrides)
    torch.manual_seed(seed)
    hf = GptOssForCausalLM(GptOssConfig(**settings, attn_implementation="eager")).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            scale = {"gate_up_proj": 1.0, "down_proj": 0.1}.get(name.rsplit(".", 1)[-1], 0.3)
            param.copy_(1 + 0.1 * noise if "norm" in name else scale * noise)
    hf.save_pretrained(folder)
    return hf


def default_model_dir() -> Path | None:
    from model.zoo import default_model_path

    path = default_model_path()
    return path if (path / "config.json").is_file() else None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_default_tokenizer(folder: Path) -> Path:
    """Put the default model's tokenizer files (SmolLM2's vocabulary and chat template) into `folder`, beside a tiny
    model's weights; skip the test when the default model is not prepared."""
    source = default_model_dir()
    if source is None:
        pytest.skip("needs the default model's tokenizer files: python -m model.zoo fetch smollm2-135m-instruct")
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder)
    return folder
