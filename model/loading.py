"""Loading a Hugging Face checkpoint folder: config.json + model.safetensors (or shards listed by an index).

`load_pretrained` takes five steps, one function each:

1. read the header: config.json, then each tensor's name, shape and dtype from the safetensors headers alone;
2. check that the weights fit the config, before any memory is spent on them;
3. build the model on the meta device: every parameter has its shape but no storage;
4. read the tensors (each file is memory-mapped, so a tensor already in the wanted dtype is not copied);
5. give them to the model with `load_state_dict(assign=True)` (the model takes the tensors themselves) and tie
   the head to the embedding.

GPT-OSS releases store the expert weights in MXFP4 (`<name>_blocks` + `<name>_scales`, model/mxfp4.py): the
header counts each pair as one tensor, and step 4 decodes them. Step 4's reader is a parameter: by default
`map_file` (model/fast_loading.py) maps each file once, so that tensors lying back to back share one storage and
the accelerator (accel/) can stack them as one view; `read_safetensors` is safetensors' own reader, which gives
every tensor a storage of its own.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from .causal_lm import CausalLM
from .checks import (CheckpointError, check_config_against_header, check_index_matches_shards, check_memory,
                     check_readable, shard_path)
from .config import ModelConfig
from .fast_loading import map_file
from .mxfp4 import check_mxfp4_pair, dense_shape, dequantize_expert_weight

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MXFP4_SUFFIXES = ("_blocks", "_scales")
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64", "MXFP4")  # safetensors' names; MXFP4 is a merged blocks/scales pair
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "MXFP4": torch.bfloat16}

TensorInfo = tuple[tuple[int, ...], str]  # (shape, safetensors dtype name)


@dataclass
class CheckpointHeader:
    """What a checkpoint holds, read from its headers without touching the weights."""

    files: dict[str, Path]  # tensor name as stored -> the file that holds it
    tensors: dict[str, TensorInfo]  # our name -> (shape, dtype); an MXFP4 pair is one entry, dtype "MXFP4"


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                    attn_implementation: str = "sdpa", check_finite: bool = False,
                    name_map: Callable[[str], str] | None = None,
                    read_file: Callable[[Path], dict[str, torch.Tensor]] | None = None) -> CausalLM:
    """A Hugging Face style folder -> CausalLM in eval mode.

    dtype None keeps the checkpoint's own dtype (MXFP4 experts are then decoded to that of the other weights);
    check_finite scans every tensor for NaN/inf (one pass over the weights); name_map turns a stored name into
    ours (default: drop transformers' `model.` prefix); read_file(path) -> {stored name: tensor} reads one file
    (default: `map_file`, one mapping per file; `read_safetensors` is the other). The model is the plain one:
    `accel.accelerate(model, ...)` makes it faster for decoding.
    """
    name_map = name_map or hf_to_local_name
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "does not exist"
        raise CheckpointError(f"model folder {folder} {what}: give the folder that holds config.json")
    config = ModelConfig.from_json(folder)
    header = read_header(folder, name_map)  # 1
    check_header(config, header, dtype)  # 2
    check_memory(header.tensors, dtype, device)  # the copies this load makes, against the memory available
    model = build_on_meta(config, attn_implementation)  # 3
    check_tensors(expected_shapes(model), header.tensors, config.tie_word_embeddings)
    state = read_tensors(header, name_map, dtype, device, read_file or map_file)  # 4
    if check_finite:
        check_all_finite(state)
    assign_tensors(model, state, config.tie_word_embeddings)  # 5
    if device is not None:  # the tensors are there already; this moves the buffers (RoPE's frequencies)
        model.to(device)
    return model.eval()


# 1. The header ---------------------------------------------------------------------------------------------------

def hf_to_local_name(name: str) -> str:
    """Hugging Face LlamaForCausalLM names -> ours: our CausalLM has no inner `model.` module."""
    return name.removeprefix("model.")


def read_header(folder: Path, name_map: Callable[[str], str] = hf_to_local_name) -> CheckpointHeader:
    """The files of a checkpoint folder and every tensor's (shape, dtype), from the headers alone."""
    files = checkpoint_files(folder)
    tensors = {name_map(name): info for name, info in read_headers(files).items()}
    return CheckpointHeader(files, merge_mxfp4_headers(tensors))


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
        return {name: folder / SINGLE_FILE for name in open_safetensors(folder / SINGLE_FILE).keys()}
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}: is this a Hugging Face model folder?")


def open_safetensors(path: Path):
    """safetensors' reader over one file; a bad header or a short file becomes a CheckpointError."""
    check_readable(path)
    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error type for a bad header or short file
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it is probably truncated or "
                              f"corrupt: write or download it again") from None


def read_headers(files: dict[str, Path]) -> dict[str, TensorInfo]:
    """Tensor name (as stored) -> (shape, dtype name) from the headers alone."""
    headers: dict[str, TensorInfo] = {}
    keys_by_file: dict[Path, set[str]] = {}
    for path in sorted(set(files.values())):
        handle = open_safetensors(path)
        keys_by_file[path] = set(handle.keys())
        for name in handle.keys():
            piece = handle.get_slice(name)
            headers[name] = (tuple(piece.get_shape()), piece.get_dtype())
    missing_from_shards = set(files) - set(headers)
    if missing_from_shards:
        raise CheckpointError(f"the index lists tensors that no shard contains: {sorted(missing_from_shards)[:5]}")
    check_index_matches_shards(files, keys_by_file)
    return headers


def merge_mxfp4_headers(found: dict[str, TensorInfo]) -> dict[str, TensorInfo]:
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


# 2. The checks ---------------------------------------------------------------------------------------------------

def check_header(config: ModelConfig, header: CheckpointHeader, dtype: torch.dtype | None) -> None:
    """Everything that can be checked from config.json and the headers, before the model is built or any
    weight is read (model/checks.py holds the config-vs-header check)."""
    check_quantization(config)
    check_config_against_header(config, header.tensors)  # before anything sized by the config is built
    check_dtypes(header.tensors, dtype)


def check_quantization(config: ModelConfig) -> None:
    """Only the released GPT-OSS format is understood: quantization_config absent, or quant_method mxfp4."""
    quantization = config.extra.get("quantization_config")
    if quantization is not None and (not isinstance(quantization, dict) or quantization.get("quant_method") != "mxfp4"):
        raise CheckpointError(f"config.json has quantization_config {quantization!r}; only 'mxfp4' (the GPT-OSS "
                              f"release) is supported: use a dequantized or MXFP4 checkpoint")


def check_dtypes(found: dict[str, TensorInfo], dtype: torch.dtype | None) -> None:
    """`dtype` must be a floating-point torch.dtype; with None each tensor keeps its stored dtype, so they
    must all share one (a bf16 matrix next to an fp32 one would fail deep inside the first matmul)."""
    for name, (_, stored) in sorted(found.items()):
        if stored not in FLOAT_DTYPES:
            raise CheckpointError(f"tensor '{name}' is stored as {stored}; expected a floating-point dtype")
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


def check_tensors(expected: dict[str, tuple[int, ...]], found: dict[str, TensorInfo], tied: bool) -> None:
    """Raise CheckpointError for missing, unexpected or mis-shaped tensors (names as ours)."""
    needed = set(expected) - ({"lm_head.weight"} if tied else set())
    missing = sorted(needed - set(found))
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s) the config needs, e.g. "
                              f"{missing[:5]}; does config.json belong to these weights?")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} tensor(s) this model does not use, e.g. "
                              f"{unexpected[:5]}; does config.json belong to these weights?")
    for name, (shape, _) in found.items():
        if shape != expected[name]:
            raise CheckpointError(f"tensor '{name}' has shape {list(shape)} in the checkpoint but the config "
                                  f"needs {list(expected[name])}")


# 3. The model on the meta device ---------------------------------------------------------------------------------

def build_on_meta(config: ModelConfig, attn_implementation: str = "sdpa") -> CausalLM:
    """The model with every parameter's shape but no storage: nothing is allocated or initialised."""
    with torch.device("meta"), skip_parameter_init():
        return CausalLM(config, attn_implementation)


def expected_shapes(model: CausalLM) -> dict[str, tuple[int, ...]]:
    """state_dict name -> shape, the names and shapes a checkpoint for this model must hold."""
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@contextmanager
def skip_parameter_init():
    """Make torch.nn.init's in-place initialisers no-ops while a model is built for loading.

    Each nn.Linear / nn.Embedding initialises itself in its constructor. On the meta device that does no
    arithmetic, but it routes through torch's reference decompositions, whose first use imports a compiler
    stack; the checkpoint overwrites every value anyway. transformers does the same.
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


# 4. The tensors --------------------------------------------------------------------------------------------------

def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file; safetensors maps the file, so nothing is copied yet."""
    handle = open_safetensors(path)
    return {name: handle.get_tensor(name) for name in handle.keys()}


def read_tensors(header: CheckpointHeader, name_map: Callable[[str], str], dtype: torch.dtype | None,
                 device: str | torch.device | None,
                 read_file: Callable[[Path], dict[str, torch.Tensor]] = read_safetensors) -> dict[str, torch.Tensor]:
    """Our name -> tensor in `dtype` (None: as stored) on `device`, MXFP4 experts decoded."""
    state: dict[str, torch.Tensor] = {}
    for path in sorted(set(header.files.values())):
        for name, tensor in read_file(path).items():
            if header.files.get(name) != path:  # a shard may hold tensors its index does not list
                continue
            if name.endswith(MXFP4_SUFFIXES):  # packed uint8: decoded below, with its partner
                state[name_map(name)] = tensor.to(device=device)
            else:
                state[name_map(name)] = tensor.to(dtype=dtype or tensor.dtype, device=device)
    # MXFP4 experts are decoded to the dtype asked for, else to that of the checkpoint's other weights.
    decoded_dtype = dtype or next((t.dtype for t in state.values() if t.is_floating_point()), torch.bfloat16)
    for name in [n.removesuffix("_blocks") for n in state if n.endswith("_blocks")]:
        blocks, scales = state.pop(name + "_blocks"), state.pop(name + "_scales")
        state[name] = dequantize_expert_weight(blocks, scales, decoded_dtype)  # (E, in, out)
    return state


def check_all_finite(state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"tensor '{name}' contains NaN or inf values: the checkpoint is broken")


# 5. The tensors given to the model -------------------------------------------------------------------------------

def assign_tensors(model: CausalLM, state: dict[str, torch.Tensor], tied: bool) -> None:
    """The model's meta parameters replaced by the tensors themselves (no copy); a tied head is the embedding."""
    if tied and "lm_head.weight" in state:  # some tied checkpoints store the head anyway
        if not torch.equal(state.pop("lm_head.weight"), state["embed_tokens.weight"]):
            raise CheckpointError("config says tie_word_embeddings=true but lm_head.weight differs from "
                                  "embed_tokens.weight; set tie_word_embeddings to false in config.json")
    model.load_state_dict(state, strict=not tied, assign=True)
    if tied:
        model.lm_head.weight = model.embed_tokens.weight  # assign=True replaced the shared Parameter
