"""Loading Hugging Face style checkpoints: config.json + model.safetensors (or sharded with an index).

The model is built on the meta device (no memory), every tensor's name, shape and dtype is checked against
it from the file headers alone, and only then are the tensors attached with `load_state_dict(assign=True)`.
Each file is memory-mapped once (`map_file`), so a checkpoint already in the wanted dtype is used in place: the
weights exist once in memory, as the file's pages, and matrices that lie back to back in the file (gate_proj,
up_proj in alphabetical order; q/k/v too in the folders model/zoo.py writes) are stacked without a copy.

GPT-OSS releases store the expert weights in MXFP4 (`<name>_blocks` + `<name>_scales`, model/mxfp4.py);
they are checked from the headers like any tensor and decoded one expert at a time while loading.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from .causal_lm import CausalLM
from .checks import (CheckpointError, check_config_against_header, check_index_matches_shards, check_memory,
                     check_readable, shard_path)
from .config import ModelConfig
from .linear import arrange_weights, check_weight_layout, matrix_names, prefers_column_major, relayout
from .mxfp4 import check_mxfp4_pair, dense_shape, dequantize_expert_weight

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MXFP4_SUFFIXES = ("_blocks", "_scales")


def hf_to_local_name(name: str) -> str:
    """Hugging Face LlamaForCausalLM names -> ours: our CausalLM has no inner `model.` module."""
    return name.removeprefix("model.")


def checkpoint_files(folder: Path) -> dict[str, Path]:
    """Tensor name (as stored) -> the file that holds it; reads only the index, never the weights."""
    if (folder / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
            files = {name: shard_path(folder, shard, INDEX_FILE) for name, shard in weight_map.items()}
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{folder / INDEX_FILE} is not a valid safetensors index ({err!r})") from None
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise CheckpointError(f"the index {INDEX_FILE} points at shard '{shard.name}', which is missing "
                                      f"from {folder}")
        return files
    if (folder / SINGLE_FILE).is_file():
        return {name: folder / SINGLE_FILE for name in _open(folder / SINGLE_FILE).keys()}
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}: is this a Hugging Face model folder?")


def _open(path: Path):
    check_readable(path)
    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error type for a bad header or short file
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it is probably truncated or "
                              f"corrupt: write or download it again") from None


def read_headers(files: dict[str, Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, dtype name) from the headers alone."""
    headers: dict[str, tuple[tuple[int, ...], str]] = {}
    keys_by_file: dict[Path, set[str]] = {}
    for path in sorted(set(files.values())):
        handle = _open(path)
        keys_by_file[path] = set(handle.keys())
        for name in handle.keys():
            piece = handle.get_slice(name)
            headers[name] = (tuple(piece.get_shape()), piece.get_dtype())
    missing_from_shards = set(files) - set(headers)
    if missing_from_shards:
        raise CheckpointError(f"the index lists tensors that no shard contains: {sorted(missing_from_shards)[:5]}")
    check_index_matches_shards(files, keys_by_file)
    return headers


def check_tensors(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[tuple[int, ...], str]],
                  tied: bool) -> None:
    """Raise CheckpointError for missing, unexpected, mis-shaped or non-float tensors (names as ours)."""
    needed = set(expected) - ({"lm_head.weight"} if tied else set())
    missing = sorted(needed - set(found))
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s) the config needs, e.g. "
                              f"{missing[:5]}; does config.json belong to these weights?")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} tensor(s) this model does not use, e.g. "
                              f"{unexpected[:5]}; does config.json belong to these weights?")
    for name, (shape, dtype) in found.items():
        if shape != expected[name]:
            raise CheckpointError(f"tensor '{name}' has shape {list(shape)} in the checkpoint but the config "
                                  f"needs {list(expected[name])}")
        if dtype not in ("F32", "F16", "BF16", "F64", "MXFP4"):
            raise CheckpointError(f"tensor '{name}' is stored as {dtype}; expected a floating-point dtype")


def merge_mxfp4_headers(found: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Replace each `<name>_blocks` / `<name>_scales` header pair by one `<name>` entry: (decoded shape, "MXFP4")."""
    merged = {name: info for name, info in found.items() if not name.endswith(MXFP4_SUFFIXES)}
    for name in sorted(n.removesuffix("_blocks") for n in found if n.endswith("_blocks")):
        if name + "_scales" not in found:
            raise CheckpointError(f"checkpoint has '{name}_blocks' but no '{name}_scales': the MXFP4 tensor is "
                                  f"incomplete; download the checkpoint again")
        problem = check_mxfp4_pair(name, found[name + "_blocks"], found[name + "_scales"])
        if problem:
            raise CheckpointError(problem)
        merged[name] = (dense_shape(found[name + "_blocks"][0]), "MXFP4")
    orphans = sorted(n for n in found if n.endswith("_scales") and n.removesuffix("_scales") not in merged)
    if orphans:
        raise CheckpointError(f"checkpoint has MXFP4 scales without blocks: {orphans[:5]}")
    return merged


def check_dtypes(found: dict[str, tuple[tuple[int, ...], str]], dtype: torch.dtype | None) -> None:
    """`dtype` must be a floating-point torch.dtype; with None each tensor keeps its stored dtype, so they
    must all share one (a bf16 matrix next to an fp32 one would fail deep inside the first matmul)."""
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise CheckpointError(f"dtype must be a floating-point torch.dtype such as torch.bfloat16 (or None to "
                                  f"keep the checkpoint's), got {dtype!r}")
        return
    example: dict[str, str] = {}  # stored dtype -> one tensor stored in it
    for name, (_, stored) in sorted(found.items()):
        if stored != "MXFP4":  # decoded later to the dtype of the other weights
            example.setdefault(stored, name)
    if len(example) > 1:
        listed = ", ".join(f"'{name}' is {stored}" for stored, name in example.items())
        raise CheckpointError(f"the checkpoint mixes floating-point dtypes ({listed}); load it with "
                              "dtype=torch.float32 (or torch.bfloat16, ...; --dtype on the command line) to convert "
                              "every tensor to one")


def check_quantization(config: ModelConfig) -> None:
    """Only the released GPT-OSS format is understood: quantization_config absent, or quant_method mxfp4."""
    quantization = config.extra.get("quantization_config")
    if quantization is not None and (not isinstance(quantization, dict) or quantization.get("quant_method") != "mxfp4"):
        raise CheckpointError(f"config.json has quantization_config {quantization!r}; only 'mxfp4' (the GPT-OSS "
                              f"release) is supported: use a dequantized or MXFP4 checkpoint")


@contextmanager
def skip_parameter_init():
    """Make torch.nn.init's in-place initialisers no-ops while a model is built for loading.

    Each nn.Linear / nn.Embedding initialises itself in its constructor. On the meta device that does no
    arithmetic, but it routes through torch's reference decompositions, whose first use imports a compiler
    stack (about 1.5 s); the checkpoint overwrites every value anyway. transformers does the same.
    """
    names = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "zeros_", "ones_")
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                    attn_implementation: str = "sdpa", check_finite: bool = False,
                    name_map: Callable[[str], str] = hf_to_local_name, weight_layout: str = "row_major") -> CausalLM:
    """A Hugging Face style folder -> CausalLM in eval mode.

    dtype None keeps the checkpoint's own dtype (the weights are then used in place, memory-mapped);
    MXFP4 experts are then decoded to the dtype of the other weights (bfloat16 in the GPT-OSS release).
    check_finite scans every tensor for NaN/inf (one pass over the weights).
    weight_layout "column_major" stores float32 CPU matrices transposed: faster batch-1 decoding, slower beam
    search and batches; "column_major_blocks" all but the head, which gets a oneDNN-packed copy (+ the head's bytes),
    for DoLa / entropy decoding; "packed_head" packs the head and keeps every matrix row-major (model/linear.py).
    Both copy the matrices while loading (about 0.5 s more here).
    """
    check_weight_layout(weight_layout)
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "does not exist"
        raise CheckpointError(f"model folder {folder} {what}: give the folder that holds config.json")
    config = ModelConfig.from_json(folder)
    check_quantization(config)
    files = checkpoint_files(folder)
    headers = merge_mxfp4_headers({name_map(name): info for name, info in read_headers(files).items()})
    check_config_against_header(config, headers)  # before anything sized by the config is built
    with torch.device("meta"):
        with skip_parameter_init():
            model = CausalLM(config, attn_implementation)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    check_tensors(expected, headers, config.tie_word_embeddings)
    check_dtypes(headers, dtype)
    check_memory(headers, dtype, device)  # before the weights are read or converted

    column_major = {name for name, is_head in matrix_names(model).items() if name in headers and
                    prefers_column_major(weight_layout, dtype or DTYPES[headers[name][1]], device, is_head)}
    state = _read_state(files, name_map, dtype, device, column_major)
    if config.tie_word_embeddings and "lm_head.weight" in state:
        if not torch.equal(state.pop("lm_head.weight"), state["embed_tokens.weight"]):
            raise CheckpointError("config says tie_word_embeddings=true but lm_head.weight differs from "
                                  "embed_tokens.weight; set tie_word_embeddings to false in config.json")
    if check_finite:
        _check_finite(state)
    model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # assign=True replaced the shared Parameter
    del state  # the model holds the tensors now
    # Stack q/k/v and gate/up (model/linear.py) here, releasing each copied tensor's file pages as we go;
    # a .to(device) below then finds everything in place.
    model.weight_layout = weight_layout
    arrange_weights(model, weight_layout, on_copied=release_file_pages)
    if device is not None:  # (.to() re-arranges every weight: skipped when there is nothing to move)
        model = model.to(device=device)
    return model.eval()


def _read_state(files: dict[str, Path], name_map: Callable[[str], str], dtype: torch.dtype | None,
                device: str | torch.device | None, column_major: set[str] = frozenset()) -> dict[str, torch.Tensor]:
    """name -> tensor in the dtype asked for; the names in `column_major` get that layout here, one tensor at
    a time, so that the checkpoint is never resident twice (mapped and copied)."""
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    # Re-laying out is a strided copy at about 1 GB/s; two at a time (different tensors) nearly halve the time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = {}
        for path, names in by_file.items():
            mapped = map_file(path)  # memory-mapped: no copy yet
            for name in names:
                tensor = mapped[name]
                local = name_map(name)
                if name.endswith(MXFP4_SUFFIXES):  # packed uint8: decoded below, together with its partner
                    state[local] = tensor.to(device=device)
                elif local in column_major:
                    pending[local] = pool.submit(_column_major_copy, tensor, dtype, device)
                else:
                    state[local] = tensor.to(dtype=dtype or tensor.dtype, device=device)
        state.update((local, future.result()) for local, future in pending.items())
    # MXFP4 experts are decoded to the dtype asked for, else to that of the checkpoint's other weights.
    decoded_dtype = dtype or next((t.dtype for t in state.values() if t.is_floating_point()), torch.bfloat16)
    for name in [n.removesuffix("_blocks") for n in state if n.endswith("_blocks")]:
        blocks, scales = state.pop(name + "_blocks"), state.pop(name + "_scales")
        state[name] = dequantize_expert_weight(blocks, scales, decoded_dtype)  # (E, in, out)
    return state


def map_file(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, as views into one private memory mapping of the whole file.

    A safetensors file is 8 bytes (the header's length, little-endian), a JSON header {name: {dtype, shape,
    data_offsets}}, then the tensors' bytes. safetensors' own `get_tensor` gives each tensor a storage of its
    own; one mapping instead lets tensors that lie back to back in the file become one view without a copy:
    files are written in name order, so an MLP's gate_proj and up_proj are neighbours, and `StackedLinear`
    stacks them in place (model/linear.py). The mapping is private (copy-on-write): an in-place change to a
    weight never reaches the file. Called after `read_headers`, whose safe_open has validated the header.
    """
    with open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(header_size))
    header.pop("__metadata__", None)
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=path.stat().st_size)
    file_bytes = torch.empty(0, dtype=torch.uint8).set_(storage)  # (file size,)
    data_start = 8 + header_size
    tensors = {}
    for name, info in header.items():
        dtype = STORED_DTYPES[info["dtype"]]  # check_tensors has refused any other dtype
        begin, end = (data_start + offset for offset in info["data_offsets"])
        raw = file_bytes[begin:end]
        if begin % dtype.itemsize:  # a typed view must start at a multiple of its element size
            raw = raw.clone()
        tensors[name] = raw.view(dtype).view(info["shape"])
    return tensors


STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "U8": torch.uint8}  # U8: MXFP4 blocks and scales
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "MXFP4": torch.bfloat16}
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
MADV_DONTNEED = 4


def _column_major_copy(tensor: torch.Tensor, dtype: torch.dtype | None, device) -> torch.Tensor:
    """A checkpoint matrix converted to `dtype` and stored column-major; its file pages released."""
    copy = relayout(tensor.to(dtype=dtype or tensor.dtype, device=device), column_major=True)
    if copy.data_ptr() != tensor.data_ptr():
        release_file_pages(tensor)
    return copy


def release_file_pages(tensor: torch.Tensor) -> None:
    """Drop a memory-mapped checkpoint tensor's pages from this process's resident memory after copying it.

    Only for a tensor read from a checkpoint file that nothing uses any more. The pages stay in the kernel's
    page cache, and a later read would map them again from the file: nothing is lost. Without this, a load
    that copies every weight into a new layout holds each weight twice (mapped and copied), a 2x peak.
    Linux only; elsewhere a no-op.
    """
    if _LIBC is None or tensor.device.type != "cpu":
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first_page = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: neighbours may still be in use
    last_page = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last_page > first_page:
        _LIBC.madvise(ctypes.c_void_p(first_page), ctypes.c_size_t(last_page - first_page), MADV_DONTNEED)


def _check_finite(state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"tensor '{name}' contains NaN or inf values: the checkpoint is broken")
