"""The fast path for loading: each checkpoint file mapped once, its tensors views into that one mapping.

model/loading.py reads a file with safetensors, which gives every tensor a storage of its own. Here the file
is mapped once and every tensor is a view into it, so tensors that lie back to back in the file share one
storage: an MLP's gate_proj and up_proj (files are written in name order), and q/k/v in the folders that
model/zoo/ writes, can then be stacked for one matmul as a view, without a copy (accel/stacked.py).
Plug it in with `load_pretrained(path, read_file=map_file)`. `release_file_pages` gives back the pages of a
mapped tensor that was copied into a new layout, so the checkpoint is not resident twice.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import sys
from pathlib import Path

import torch

STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "U8": torch.uint8}  # U8: MXFP4 blocks and scales
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
MADV_DONTNEED = 4


def map_file(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, as views into one private memory mapping of the whole file.

    A safetensors file is 8 bytes (the header's length, little-endian), a JSON header {name: {dtype, shape,
    data_offsets}}, then the tensors' bytes. The mapping is private (copy-on-write): an in-place change to a
    weight never reaches the file. Call it after model/loading.py's `read_header`, whose safetensors reader
    has validated the header; a dtype other than those in STORED_DTYPES was refused there.
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
        dtype = STORED_DTYPES[info["dtype"]]
        begin, end = (data_start + offset for offset in info["data_offsets"])
        raw = file_bytes[begin:end]
        if begin % dtype.itemsize:  # a typed view must start at a multiple of its element size
            raw = raw.clone()
        tensors[name] = raw.view(dtype).view(info["shape"])
    return tensors


def release_file_pages(tensor: torch.Tensor) -> None:
    """Drop a memory-mapped checkpoint tensor's pages from this process's resident memory after copying it.

    Only for a tensor read from a checkpoint file that nothing uses any more. The pages stay in the kernel's
    page cache, and a later read would map them again from the file: nothing is lost. Without this, a load
    that copies every weight into a new layout holds each weight twice (mapped and copied).
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
