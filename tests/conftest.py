"""Shared fixtures: tiny random transformers checkpoints (the oracle) and the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores in CI: one intra-op thread per test process keeps timings predictable.
torch.set_num_threads(int(os.environ.get("SCRATCH_LM_TEST_THREADS", "2")))


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


@pytest.fixture
def tiny_llama(tmp_path):
    """(folder, hf_model) for a default tiny config."""
    hf = save_tiny_llama(tmp_path)
    return tmp_path, hf


def default_model_dir() -> Path | None:
    from model.zoo import default_model_path

    path = default_model_path()
    return path if (path / "config.json").is_file() else None


@pytest.fixture(scope="session")
def default_model_path():
    """The dequantized SmolLM2-135M-Instruct folder; scripts/setup.sh prepares it (skip if absent)."""
    try:
        path = default_model_dir()
    except ImportError:
        path = None
    if path is None:
        pytest.skip("default model not prepared: run `python -m model.zoo fetch smollm2-135m-instruct`")
    return path
