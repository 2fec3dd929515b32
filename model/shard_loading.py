"""Loading a checkpoint for tensor parallelism: each process reads only its own slices of the files.

The model is built on the meta device and split by the plan (model/tensor_parallel.py); then, for every
parameter, the process reads the range of rows or columns it keeps (`parameter_parts`, the plan's own ranges:
whole GQA groups, uneven where the counts do not divide) through safetensors' slice API
(`safe_open(...).get_slice(name)[rows, cols]`), which copies only those bytes out of the file: per-process
memory is its share of the split matrices plus the replicated parts (embedding, head, norms, router), and the
whole tensor is never materialised. MXFP4 experts are decoded per slice: a split by output rows reads whole
blocks; a split by input features (down_proj) reads the 32-value blocks that cover the range, then cuts it.

The header checks are load_pretrained's (model/loading.py); a failure on any process is shared with all of
them (`agree`), so every process stops with the same message instead of waiting in a collective.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import parallelize_module

from .causal_lm import CausalLM
from .config import ModelConfig
from .loading import (DTYPES, CheckpointError, build_on_meta, check_header, check_tensors, expected_shapes,
                      hf_to_local_name, read_header)
from .mxfp4 import dequantize_expert_weight
from .tensor_parallel import FIRST_RANK_ONLY, Part, agree, check_splittable, parameter_parts, tensor_parallel_plan


@dataclass
class LoadedBytes:
    """What this process read from the files: the split tensors' bytes against their full size, and the rest."""

    sharded_read: int = 0  # bytes of the slices read for split tensors (MXFP4: packed bytes)
    sharded_total: int = 0  # those tensors' full size in the files
    replicated_read: int = 0  # tensors every process reads whole


def load_tensor_parallel(path: str | Path, mesh: DeviceMesh, dtype: torch.dtype | None = None,
                         device: str | torch.device | None = None, attn_implementation: str = "sdpa",
                         name_map: Callable[[str], str] = hf_to_local_name) -> CausalLM:
    """A Hugging Face style folder -> this process's part of a CausalLM split across `mesh`, in eval mode.

    Every process of the mesh calls it (with the same folder, or its own copy). `model.loaded_bytes` says what
    this process read. Raises TensorParallelError on every process if any of them failed.
    """
    model, error = None, None
    try:
        model = _load_local_part(Path(path), mesh, dtype, device, attn_implementation, name_map)
    except Exception as err:  # noqa: BLE001 - whatever it is, the other processes must hear of it, not hang
        error = err
    agree(error)
    return model.eval()


def _load_local_part(folder: Path, mesh: DeviceMesh, dtype, device, attn_implementation, name_map) -> CausalLM:
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist")
    config = ModelConfig.from_json(folder)
    check_splittable(config, mesh.size())  # before anything is read
    header = read_header(folder, name_map)
    check_header(config, header, dtype)
    files, stored_names = header.files, {name_map(name): name for name in header.files}  # ours -> as stored
    model = build_on_meta(config, attn_implementation)
    check_tensors(expected_shapes(model), header.tensors, config.tie_word_embeddings)
    plan = tensor_parallel_plan(config)
    parallelize_module(model, mesh, plan)  # meta parameters cut to this process's parts, head counts local
    params = dict(model.named_parameters(remove_duplicate=False))
    parts = parameter_parts(plan, list(params), mesh.get_local_rank(), mesh.size())
    wanted = dtype or next(DTYPES[info[1]] for info in header.tensors.values() if info[1] != "MXFP4")
    model.loaded_bytes = LoadedBytes()
    for name, param in params.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the same Parameter as embed_tokens.weight, set with it
        if name in stored_names:
            local = read_slice(files[stored_names[name]], stored_names[name], parts[name], mesh, model.loaded_bytes)
        else:  # an MXFP4 expert: `<name>_blocks` + `<name>_scales`
            local = read_mxfp4_slice(files, stored_names, name, parts[name], wanted, model.loaded_bytes)
        set_parameter(model, name, param, local.to(dtype=wanted, device=device))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    for module in model.modules() if device is not None else ():  # buffers (RoPE's frequencies) are on the CPU
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, buffer.to(device))
    return model


def read_slice(path: Path, stored_name: str, part: Part | str | None, mesh: DeviceMesh,
               counts: LoadedBytes) -> torch.Tensor:
    """This process's part of one stored tensor, read through the slice API (only those bytes are read).

    The file is opened for this one read: safetensors maps it and returns views into the mapping; a row slice
    keeps only its own pages (touched when first used), a column slice is copied (see below).
    """
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return _read_slice(handle.get_slice(stored_name), part, mesh, counts)


def _read_slice(piece, part: Part | str | None, mesh: DeviceMesh, counts: LoadedBytes) -> torch.Tensor:
    if part is None or part == FIRST_RANK_ONLY:
        tensor = piece[:]
        counts.replicated_read += tensor.nbytes
        if part == FIRST_RANK_ONLY and mesh.get_local_rank() != 0:
            tensor = torch.zeros_like(tensor)  # added once to a sum of N partial results
        return tensor
    shape = piece.get_shape()
    index = tuple(slice(part.start, part.stop) if d == part.dim else slice(None) for d in range(len(shape)))
    # A view into the mapped file; a column slice is strided over the whole tensor's pages, so it becomes a copy
    # of its own bytes (only they stay resident once the file is closed).
    tensor = piece[index].contiguous()
    counts.sharded_read += tensor.nbytes
    counts.sharded_total += torch.Size(shape).numel() * tensor.element_size()
    return tensor


def read_mxfp4_slice(files, stored_names, name: str, part: Part | str | None, dtype: torch.dtype,
                     counts: LoadedBytes) -> torch.Tensor:
    """Decode this process's part of an MXFP4 expert tensor, parameter layout (E, in, out), to `dtype`.

    Stored: blocks (E, out, G, 16) and scales (E, out, G), G = in / 32. A split along `out` (dim 2 of the
    parameter) slices the stored dim 1; a split along `in` (dim 1) reads the blocks covering the range.
    """
    blocks_name, scales_name = stored_names[name + "_blocks"], stored_names[name + "_scales"]
    with safe_open(str(files[blocks_name]), framework="pt") as blocks_file, \
            safe_open(str(files[scales_name]), framework="pt") as scales_file:
        packed, cut, full = _read_mxfp4_slice(blocks_file.get_slice(blocks_name), scales_file.get_slice(scales_name),
                                              name, part)
    counts.sharded_read += sum(t.nbytes for t in packed)
    counts.sharded_total += full
    return dequantize_expert_weight(*packed, dtype)[:, cut].contiguous()  # (E, in_local, out_local)


def _read_mxfp4_slice(blocks, scales, name: str, part: Part | str | None):
    if not isinstance(part, Part) or part.dim not in (1, 2):
        raise CheckpointError(f"'{name}' is stored in MXFP4 but the plan does not split it; only experts are MXFP4")
    if part.dim == 2:  # output features: whole rows of blocks
        rows = slice(part.start, part.stop)
        packed = (blocks[:, rows], scales[:, rows])
        cut = slice(None)
    else:  # input features [start, stop): the 32-value blocks that cover them, then cut
        groups = slice(part.start // 32, -(-part.stop // 32))
        packed = (blocks[:, :, groups], scales[:, :, groups])
        cut = slice(part.start - groups.start * 32, part.stop - groups.start * 32)
    full = sum(torch.Size(piece.get_shape()).numel() for piece in (blocks, scales))  # uint8: a byte each
    return packed, cut, full


def set_parameter(model: nn.Module, name: str, meta: torch.Tensor, local: torch.Tensor) -> None:
    """Replace a meta parameter (already cut to this process's part) by the loaded one."""
    module_path, _, attribute = name.rpartition(".")
    if tuple(local.shape) != tuple(meta.shape):
        raise CheckpointError(f"tensor '{name}': this process read a slice of shape {list(local.shape)} but its "
                              f"part needs {list(meta.shape)}")
    setattr(model.get_submodule(module_path), attribute, nn.Parameter(local, requires_grad=False))
