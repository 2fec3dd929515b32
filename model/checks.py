"""Checks a checkpoint folder must pass before anything is allocated for it.

A model folder may come from anyone, so ``config.json`` is not trusted to describe the weights: a
``num_hidden_layers`` of 10^8 would build modules until the machine runs out of memory, a ``head_dim`` of
2*10^9 would ask for an 8 GB RoPE table, all before the weights are even looked at. Here the config is
held against the safetensors headers (which the loader has read, a few KB) first: the layer count and the
sizes that set every shape must be those of the stored tensors, and the copies loading will make must fit
in the memory the machine has. The index may only name shard files inside the folder.

``model/loading.py`` calls these; each raises ``CheckpointError`` (a ``ValueError``) naming the file or key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

TensorInfo = tuple[tuple[int, ...], str]  # (shape, safetensors dtype name)
STORED_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "MXFP4": 0.5}  # per element as stored
LAYER_NAME = re.compile(r"layers\.(\d+)\.(.+)")


class CheckpointError(ValueError):
    """The checkpoint folder is missing files, or its tensors do not fit the config."""


def shard_path(folder: Path, shard: object, index_file: str) -> Path:
    """The file an index entry names: a plain file name in ``folder``, never ``../x`` or an absolute path."""
    if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
        raise CheckpointError(f"{folder / index_file} names the shard {shard!r}; a shard must be a plain file "
                              f"name inside {folder}: fix or re-download the index")
    return folder / shard


def check_readable(path: Path) -> None:
    """A file we may not read is a permission problem, not a corrupt file: say which."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise CheckpointError(f"{path} cannot be read (permission denied): fix its permissions, e.g. "
                              "chmod a+r") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a safetensors file") from None


def check_index_matches_shards(files: dict[str, Path], keys_by_file: dict[Path, set[str]]) -> None:
    """Every tensor the index places in a shard must be in that shard (else reading it fails with a KeyError)."""
    for name, path in sorted(files.items()):
        if name not in keys_by_file.get(path, set()):
            elsewhere = [p.name for p, keys in sorted(keys_by_file.items()) if name in keys]
            where = f"it is in {elsewhere[0]}" if elsewhere else "no shard contains it"
            raise CheckpointError(f"the index says tensor '{name}' is in {path.name}, but {where}: the index does "
                                  f"not belong to these shards; re-download model.safetensors.index.json")


def check_config_against_header(config, tensors: dict[str, TensorInfo]) -> None:
    """The config's layer count and the sizes that shape every tensor (vocabulary, width, heads) against the
    stored tensors (our names). After this the model built on the meta device has as many layers as the file,
    and its RoPE table (head_dim / 2 frequencies) is as small; the loader then compares every shape."""
    layers = {int(match[1]) for name in tensors if (match := LAYER_NAME.fullmatch(name))}
    wanted = config.num_hidden_layers
    first_missing = next(i for i in range(len(layers) + 1) if i not in layers)  # (never a range of `wanted`)
    if first_missing != wanted or len(layers) != wanted:
        gap = f"missing layers.{first_missing}.*" if first_missing < wanted else \
            f"layers.{wanted}.* and on are not used"
        raise CheckpointError(f"config.json has num_hidden_layers={wanted} but the checkpoint holds {len(layers)} "
                              f"layers ({gap}): does config.json belong to these weights?")
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    sizes = [  # (tensor, dimension, the config's value, how config.json gets it)
        ("embed_tokens.weight", 0, config.vocab_size, "vocab_size"),
        ("embed_tokens.weight", 1, config.hidden_size, "hidden_size"),
        ("layers.0.self_attn.q_proj.weight", 0, heads * head_dim, f"num_attention_heads*head_dim ({heads}*{head_dim})"),
        ("layers.0.self_attn.k_proj.weight", 0, kv_heads * head_dim,
         f"num_key_value_heads*head_dim ({kv_heads}*{head_dim})"),
    ]
    for name, dim, want, key in sizes:
        if name not in tensors:
            raise CheckpointError(f"the checkpoint has no tensor '{name}', which the config needs: does "
                                  "config.json belong to these weights?")
        shape = tensors[name][0]
        if len(shape) != 2 or shape[dim] != want:
            needed = [want if d == dim else size for d, size in enumerate(shape)] if len(shape) == 2 else "2 dims"
            raise CheckpointError(f"tensor '{name}' has shape {list(shape)} in the checkpoint but config.json's "
                                  f"{key} needs {needed}: does config.json belong to these weights?")


def check_memory(tensors: dict[str, TensorInfo], dtype: torch.dtype | None, device: str | torch.device | None) -> None:
    """Refuse, with the figures, a load whose copies of the weights cannot fit in the memory available.

    A tensor kept in its stored dtype on the CPU is used in place (memory-mapped); a conversion, an MXFP4
    decode or a move to an accelerator makes a copy of it."""
    device = torch.device(device if device is not None else "cpu")
    needed = 0
    for shape, stored in tensors.values():
        numel = 1
        for size in shape:
            numel *= size
        target = dtype.itemsize if dtype is not None else (2 if stored == "MXFP4" else STORED_BYTES[stored])
        copied = device.type != "cpu" or stored == "MXFP4" or (dtype is not None and target != STORED_BYTES[stored])
        needed += numel * target if copied else 0
    available = available_memory(device)
    if available is not None and needed > available:
        what = f"in {dtype}".replace("torch.", "") if dtype is not None else "decoded"
        raise CheckpointError(f"loading needs {needed / 2**30:.1f} GB for the weights {what} on {device}, but only "
                              f"{available / 2**30:.1f} GB is available: keep the checkpoint's dtype (dtype=None), "
                              "choose a smaller one (e.g. --dtype bfloat16) or free memory")


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can get on ``device`` (None when this cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:  # Linux: MemAvailable counts free memory and reclaimable cache
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
