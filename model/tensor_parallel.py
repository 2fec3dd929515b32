"""Tensor parallelism: one CausalLM split across N processes (Megatron-LM's scheme), with torch.distributed.

Each block holds two pairs of matrices that read a replicated input: attention (q/k/v, then o) and the MLP
(gate/up, then down). The first matrices of a pair are split by output rows ("column-wise"): each process
computes its own heads, or its own range of the intermediate features, from the full input, with no
communication. The second matrix is split by input columns ("row-wise"): each process multiplies the part it
computed by the matching columns, and one all-reduce sums the N partial results. So a block costs two
all-reduces of (B, T, H) activations, and nothing in between is ever gathered:

    plan entry (per block)   style          what process r keeps
    self_attn                HeadGroups     a range of key-value heads and the query heads of their groups:
                                            those rows of q/k/v, those columns of o_proj, their sinks
    mlp (LLaMA)              FeatureRange   a range of intermediate features: rows of gate/up, columns of down
    mlp.experts (GPT-OSS)    ExpertSlices   the same range of every expert's features
    embed_tokens, lm_head, norms, router  (replicated)

Ranges, not equal pieces: process r gets `split_range(count, N, r)` items, the sizes of torch.tensor_split (the
first count % N processes one more). SmolLM2's 3 key-value heads over 2 processes are 2 + 1, so its 9 query heads
are 6 + 3: GQA groups stay whole, so every process's query heads read only its own key-value heads, and its KV
cache holds only those. The one set-up refused is fewer key-value heads (or features) than processes.

Why styles of ours with plain tensors, not PyTorch's ColwiseParallel / RowwiseParallel: DTensor's Shard cuts a
dimension into torch.chunk pieces (equal but the last), which would cut through a head whenever the counts do not
divide; with head ranges the one code path serves even and uneven splits alike. The styles still plug into
`parallelize_module` as a plan (module path -> style, like transformers' `tp_plan`), each parameter becomes an
ordinary tensor holding only this process's part (so the model's own forward and any Linear subclass run
unchanged, with no DTensor dispatch on every product), and a forward hook sums the partial output of o_proj,
down_proj or the experts with `dist.all_reduce`. A bias after a row-wise split joins that sum, so process 0 keeps
it and the others hold zeros.

Why the embedding and the head are replicated, not split by vocabulary: every decoding strategy of the loop
(sampling, beam search, DoLa, entropy) reads whole rows of logits, so a vocabulary-split head would need an
all-gather of V floats per row and step (1 + L rows for DoLa), and a split embedding one more all-reduce; the
copy costs little where tensor parallelism is needed (gpt-oss-120b: 2 x 201088 x 2880 bf16 = 2.3 GB of about
65 GB), though much for a small model (SmolLM2's tied 49152 x 576 matrix is 21 % of it; see
docs/tensor_parallel.md). The head's matmul then runs whole on every process; its logits are bitwise the same
on all of them, so the same generator seed draws the same token everywhere.

Why each expert's matrices are split, not the experts (expert parallelism): decoding routes one token to k of
E experts; with experts spread over processes, the k chosen may all live on one process while the others
idle, and tokens must travel to their experts (an all-to-all). Split inside, every process does its share of
every chosen expert, memory is its share whatever the routing, and the MoE ends with the same single all-reduce
as a dense MLP. (Expert parallelism pays off for large batches, where every expert gets tokens.)

The decode loop is unchanged. `model/shard_loading.py` loads each process's parts straight from the safetensors
files, through the same `parameter_parts` the styles cut with.
"""

from __future__ import annotations

import datetime
import gc
import os
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from .config import ModelConfig

FIRST_RANK_ONLY = "first rank only"  # a bias that joins an all-reduced sum: kept by process 0, zero elsewhere


class TensorParallelError(RuntimeError):
    """A tensor-parallel set-up that cannot work (fewer heads than processes, a process that failed)."""


@dataclass(frozen=True)
class Part:
    """Indices [start, stop) of dimension `dim`: the part of one parameter a process keeps."""

    dim: int
    start: int
    stop: int

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.narrow(self.dim, self.start, self.stop - self.start)


def split_range(count: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of `count` items for process `rank` of `world`: torch.tensor_split's sizes, the first
    count % world processes one more (3 heads over 2: [0, 2) and [2, 3))."""
    size, extra = divmod(count, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


class RangeStyle(ParallelStyle):
    """A style of ours: keep this process's part of each parameter (plain tensors), sum one output over processes.

    Subclasses say which parts (`parts`), which submodule's output is a partial sum (`reduced`) and what else
    changes with the split (`set_local_sizes`).
    """

    reduced = ""  # the submodule whose output is summed ("" : the module itself)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def parts(self, rank: int, world: int) -> dict[str, Part | str]:
        """Parameter name inside the module -> what process `rank` of `world` keeps (or FIRST_RANK_ONLY)."""
        raise NotImplementedError

    def set_local_sizes(self, module: nn.Module, rank: int, world: int) -> None:
        pass

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        rank, world = device_mesh.get_local_rank(), device_mesh.size()
        for name, part in self.parts(rank, world).items():
            owner_path, _, attribute = name.rpartition(".")
            owner = module.get_submodule(owner_path)
            full = getattr(owner, attribute, None)
            if full is None:  # no such parameter in this model (no bias; sinks only in GPT-OSS)
                continue
            setattr(owner, attribute, nn.Parameter(local_part(full.detach(), part, rank), requires_grad=False))
            if isinstance(owner, nn.Linear):
                owner.out_features, owner.in_features = owner.weight.shape  # so that its repr tells the truth
        self.set_local_sizes(module, rank, world)
        group = device_mesh.get_group()
        module.get_submodule(self.reduced).register_forward_hook(lambda _m, _i, out: all_reduce(out, group))
        return module


class HeadGroups(RangeStyle):
    """Attention: a range of key-value heads, the query heads of their groups, their sinks; sum after o_proj."""

    reduced = "o_proj"

    def head_ranges(self, rank: int, world: int) -> tuple[range, range]:
        """(query heads, key-value heads) of process `rank`."""
        group = self.config.num_attention_heads // self.config.num_key_value_heads  # query heads per kv head
        first, last = split_range(self.config.num_key_value_heads, world, rank)
        return range(first * group, last * group), range(first, last)

    def parts(self, rank: int, world: int) -> dict[str, Part | str]:
        queries, kv = self.head_ranges(rank, world)
        d = self.config.head_dim
        q_rows, kv_rows = Part(0, queries.start * d, queries.stop * d), Part(0, kv.start * d, kv.stop * d)
        return {"q_proj.weight": q_rows, "q_proj.bias": q_rows, "k_proj.weight": kv_rows, "k_proj.bias": kv_rows,
                "v_proj.weight": kv_rows, "v_proj.bias": kv_rows,
                "o_proj.weight": Part(1, q_rows.start, q_rows.stop), "o_proj.bias": FIRST_RANK_ONLY,
                "sinks": Part(0, queries.start, queries.stop)}  # GPT-OSS: one logit per query head

    def set_local_sizes(self, module: nn.Module, rank: int, world: int) -> None:
        queries, kv = self.head_ranges(rank, world)
        module.n_heads, module.n_kv = len(queries), len(kv)  # the forward views q/k/v with these counts


class FeatureRange(RangeStyle):
    """The SwiGLU MLP: a range of intermediate features, rows of gate/up and columns of down; sum after down."""

    reduced = "down_proj"

    def parts(self, rank: int, world: int) -> dict[str, Part | str]:
        first, last = split_range(self.config.intermediate_size, world, rank)
        rows = Part(0, first, last)
        return {"gate_proj.weight": rows, "gate_proj.bias": rows, "up_proj.weight": rows, "up_proj.bias": rows,
                "down_proj.weight": Part(1, first, last), "down_proj.bias": FIRST_RANK_ONLY}


class ExpertSlices(RangeStyle):
    """GPT-OSS experts, each split like a dense MLP: gate_up by output features, down by input features.

    gate_up_proj (E, H, 2I) interleaves gate and up columns (gate_i, up_i at 2i, 2i + 1), so features [a, b) are
    columns [2a, 2b): whole (gate, up) pairs, the features of this process's down_proj rows.
    Every process runs the same router on the same input, so all choose the same experts.
    """

    def parts(self, rank: int, world: int) -> dict[str, Part | str]:
        first, last = split_range(self.config.intermediate_size, world, rank)
        return {"gate_up_proj": Part(2, 2 * first, 2 * last), "gate_up_proj_bias": Part(1, 2 * first, 2 * last),
                "down_proj": Part(1, first, last), "down_proj_bias": FIRST_RANK_ONLY}


def local_part(tensor: torch.Tensor, part: Part | str, rank: int) -> torch.Tensor:
    """Process `rank`'s part of a whole `tensor`, as a copy of its own (the whole one can then be freed)."""
    if part == FIRST_RANK_ONLY:
        return tensor if rank == 0 else torch.zeros_like(tensor)
    return part.of(tensor).clone()


def all_reduce(partial: torch.Tensor, group) -> torch.Tensor:
    """The sum over processes of each one's partial result (the same on every process afterwards)."""
    summed = partial.contiguous()
    dist.all_reduce(summed, group=group)
    return summed


def tensor_parallel_plan(config: ModelConfig) -> dict[str, RangeStyle]:
    """Module path (with * for the layer index) -> how it is split, for `parallelize_module`."""
    if config.model_type == "gpt_oss":
        return {"layers.*.self_attn": HeadGroups(config), "layers.*.mlp.experts": ExpertSlices(config)}
    return {"layers.*.self_attn": HeadGroups(config), "layers.*.mlp": FeatureRange(config)}


def parameter_parts(plan: dict[str, RangeStyle], names: list[str], rank: int,
                    world: int) -> dict[str, Part | str | None]:
    """Parameter name -> what process `rank` keeps of it (None: the whole, replicated; FIRST_RANK_ONLY)."""
    parts: dict[str, Part | str | None] = {name: None for name in names}
    for pattern, style in plan.items():
        for inner, part in style.parts(rank, world).items():
            for name in names:
                if fnmatchcase(name, f"{pattern}.{inner}"):
                    parts[name] = part
    return parts


def check_splittable(config: ModelConfig, world_size: int) -> None:
    """Raise TensorParallelError unless every process gets at least one key-value head and one MLP feature."""
    counts = {"num_key_value_heads": config.num_key_value_heads, "intermediate_size": config.intermediate_size}
    bad = {key: value for key, value in counts.items() if value < world_size}
    if bad:
        listed = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise TensorParallelError(
            f"tensor parallelism over {world_size} processes gives each process at least one key-value head (with "
            f"its query heads) and one MLP feature, but {listed} {'are' if len(bad) > 1 else 'is'} fewer than "
            f"{world_size}; this model splits over at most {min(counts.values())} processes (--nproc-per-node)")


def parallelize(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Split `model` (loaded, or on the meta device) across `mesh` in place; every process calls it alike."""
    check_splittable(model.config, mesh.size())
    return parallelize_module(model, mesh, tensor_parallel_plan(model.config))


def init_tensor_parallel(device: str = "cpu", timeout_s: float = 120.0) -> DeviceMesh:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, ... in the environment): NCCL for CUDA, gloo
    for the CPU. Every collective then fails after `timeout_s` instead of waiting for ever on a dead process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise TensorParallelError("tensor parallelism needs the process group environment that torchrun sets: "
                                  "start with `torchrun --nproc-per-node N scripts/generate.py --tensor-parallel ...`")
    device_type = torch.device(device).type
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return init_device_mesh(device_type, (dist.get_world_size(),))


def close_tensor_parallel() -> None:
    """Leave the process group at the end of a run (every process calls it, after dropping its split model).

    A split model freed only while the interpreter shuts down (at exit, or by the garbage collector then) can make
    gloo abort the process ("terminate called without an active exception"); collecting the garbage first frees
    it while everything it uses is still alive."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def agree(error: BaseException | None) -> None:
    """Every process calls this after a step that may fail on some of them only (loading its shard): if any
    failed, every process raises TensorParallelError naming which and why, instead of the others hanging in the
    next collective."""
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, None if error is None else f"{type(error).__name__}: {error}")
    ranks_by_message: dict[str, list[int]] = {}
    for rank, message in enumerate(errors):
        if message is not None:
            ranks_by_message.setdefault(message, []).append(rank)
    if ranks_by_message:
        listed = "; ".join(f"process {', '.join(map(str, ranks))}: {message}"
                           for message, ranks in ranks_by_message.items())
        raise TensorParallelError(f"{sum(map(len, ranks_by_message.values()))} of {len(errors)} processes "
                                  f"failed ({listed})") from error


def same_on_every_process(value: int) -> int:
    """Process 0's `value` on every process (a random seed: every process must draw the same tokens)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def first_process_prints(mesh: DeviceMesh) -> None:
    """Silence stdout and stderr on every process but the first: the text and errors appear once (an error on
    any process reaches process 0 through `agree`, or as a collective's timeout)."""
    if mesh.get_local_rank() != 0:
        sys.stdout = sys.stderr = open(os.devnull, "w")
