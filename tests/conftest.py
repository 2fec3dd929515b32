"""Shared fixtures (the builders live in helpers.py): tiny random checkpoints and the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import default_model_dir, save_tiny_llama  # noqa: F401  (builders; also for old imports)

# Two cores in CI: one intra-op thread per test process keeps timings predictable.
torch.set_num_threads(int(os.environ.get("SCRATCH_LM_TEST_THREADS", "2")))


# Fixtures that load the real default model's weights: a test using one runs for seconds to minutes, so it is
# marked `slow` and `pytest -m "not slow"` (the inner loop) leaves it out. CI runs everything.
REAL_MODEL_FIXTURES = {"default_model_path", "default_tokenizer"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def tiny_llama(tmp_path):
    """(folder, hf_model) for a default tiny config."""
    hf = save_tiny_llama(tmp_path)
    return tmp_path, hf


@pytest.fixture(scope="session")
def default_model_path():
    """The dequantized SmolLM2-135M-Instruct folder; scripts/setup.sh prepares it (skip if absent)."""
    path = default_model_dir()
    if path is None:
        pytest.skip("default model not prepared: run `python -m model.zoo fetch smollm2-135m-instruct`")
    return path


@pytest.fixture(scope="session")
def default_tokenizer(default_model_path):
    """Our tokenizer for the default model (skips like default_model_path when it is not prepared)."""
    from tokenizer import load_tokenizer

    return load_tokenizer(default_model_path)
