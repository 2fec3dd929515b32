"""Writing a model's Hugging Face style folder from its GGUF file, and `fetch`, which does so once.

The folder: config.json, model.safetensors (float32, in stacking order), tokenizer.json, tokenizer_config.json,
special_tokens_map.json, generation_config.json, and last a manifest whose presence marks it complete.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

from model.zoo.catalog import DEFAULT_MODEL, ZooModel, get_model, model_path, zoo_home
from model.zoo.package import locate_gguf

if TYPE_CHECKING:
    import numpy as np

MANIFEST = "zoo_manifest.json"  # written last: its presence marks a complete folder
FORMAT_VERSION = 2  # bump when the conversion changes, so old folders are rebuilt (2: tensors in stacking order)

# Inside a layer, the file order: the accelerator stacks q/k/v and gate/up into one matrix each, and parts that
# lie back to back in the file become that matrix without a copy.
_LAYER_FILE_ORDER = ("input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm",
                     "gate_proj", "up_proj", "down_proj")


def is_ready(name: str) -> bool:
    """True if the folder of `name` is complete and was built by this zoo version from the right file."""
    model = get_model(name)
    folder = model_path(name)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("sha256") != model.sha256:
        return False
    files = manifest.get("files", {})
    return all((folder / f).is_file() and (folder / f).stat().st_size == size for f, size in files.items())


def file_order(name: str) -> tuple[int, int, bool, int, str]:
    """Sort key of a tensor name: the embedding and other top-level tensors, then layer by layer in
    _LAYER_FILE_ORDER (not alphabetical, which puts o_proj between k_proj and q_proj), weights before biases
    (so that q, k, v weights stay back to back when the projections have biases too)."""
    parts = name.split(".")
    is_bias = parts[-1] == "bias"
    if len(parts) > 3 and parts[1] == "layers" and parts[2].isdigit():
        module = next((p for p in parts[3:] if p in _LAYER_FILE_ORDER), None)
        rank = _LAYER_FILE_ORDER.index(module) if module else len(_LAYER_FILE_ORDER)
        return (1, int(parts[2]), is_bias, rank, name)
    return (0 if "embed" in name else 2, 0, is_bias, 0, name)


def save_safetensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """Write float32 arrays as a .safetensors file, in the order of `tensors` (safetensors' own writer sorts
    them by name). Format: an 8-byte little-endian header size, a JSON header of dtype, shape and byte range per
    tensor, then the bytes, back to back."""
    import numpy as np  # here, like gguf: `list` and `path` stay instant

    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, array in tensors.items():
        if array.dtype != np.float32:
            raise ValueError(f"save_safetensors writes float32 arrays only; {name} is {array.dtype}")
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # padded with spaces, so the data starts 8-byte aligned
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for array in tensors.values():
            file.write(np.ascontiguousarray(array, dtype="<f4").data)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _progress_printer(stream: TextIO) -> Callable[[int, int, str], None]:
    """A progress(i, n, text) callback: one overwritten line on a terminal, every 30th line in a log."""

    def progress(i: int, n: int, text: str) -> None:
        if stream.isatty():
            end = "\n" if i == n else ""
            print(f"\r\033[K[zoo] dequantizing {i}/{n} {text}", end=end, file=stream, flush=True)
        elif i % 30 == 0 or i == n:
            print(f"[zoo] dequantizing {i}/{n} {text}", file=stream, flush=True)

    return progress


def build_folder(gguf_path: Path, out_dir: Path, model: ZooModel, stream: TextIO = sys.stderr) -> None:
    """Convert the GGUF into a Hugging Face style folder `out_dir` (created; must not exist)."""
    from gguf import GGUFReader  # imported here so `list` and `path` stay instant

    from model.zoo.dequantize import dequantize_all
    from model.zoo.gguf_metadata import generation_config, hf_config
    from model.zoo.gguf_tokenizer import special_tokens_map, tokenizer_config, tokenizer_json

    out_dir.mkdir(parents=True)
    reader = GGUFReader(gguf_path)
    config = hf_config(reader)
    tokenizer = tokenizer_json(reader)
    tok_config = tokenizer_config(reader, tokenizer, config)
    tensors = dequantize_all(reader, config, _progress_printer(stream))
    # float32 on disk: the dequantized values exactly, so tests compare bit for bit.
    ordered = {name: tensors[name] for name in sorted(tensors, key=file_order)}
    save_safetensors(ordered, out_dir / "model.safetensors", metadata={"format": "pt"})
    del tensors
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", generation_config(config))
    _write_json(out_dir / "tokenizer.json", tokenizer)
    _write_json(out_dir / "tokenizer_config.json", tok_config)
    _write_json(out_dir / "special_tokens_map.json", special_tokens_map(tok_config))
    files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}
    source = {"package": model.package, "version": model.version, "file": model.gguf_file}
    manifest = {"name": model.name, "format_version": FORMAT_VERSION, "sha256": model.sha256, "source": source}
    _write_json(out_dir / MANIFEST, {**manifest, "files": files})


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive file lock, so two processes fetching at once build the folder only once."""
    try:
        import fcntl  # POSIX only; elsewhere we go without the lock
    except ImportError:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch(name: str, force: bool = False, stream: TextIO = sys.stderr) -> Path:
    """Build the folder of model `name` unless it is already complete; return its path."""
    model = get_model(name)
    target = model_path(name)
    if not force and is_ready(name):
        return target
    with _exclusive(zoo_home() / f".{model.name}.lock"):
        if not force and is_ready(name):  # another process finished it while we waited
            return target
        gguf_path = locate_gguf(model)  # checked before any heavy work
        start = time.perf_counter()
        print(f"[zoo] converting {gguf_path} -> {target}", file=stream)
        with tempfile.TemporaryDirectory(dir=zoo_home(), prefix=f".{model.name}.") as tmp:
            build_folder(gguf_path, Path(tmp) / model.name, model, stream)
            if target.exists():  # incomplete, stale or forced: replace it
                shutil.rmtree(target)
            os.replace(Path(tmp) / model.name, target)
        print(f"[zoo] {model.name} ready in {time.perf_counter() - start:.0f} s: {target}", file=stream)
    return target


def ensure_default_model() -> Path:
    """The default model's folder, built first if missing."""
    return fetch(DEFAULT_MODEL)
