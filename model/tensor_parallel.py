"""Tensor parallelism: one CausalLM split across N processes with PyTorch's DTensor (Megatron-LM's scheme).

Each block holds two pairs of matrices that read a replicated input: attention (q/k/v, then o) and the MLP
(gate/up, then down). The first matrices of a pair are split by output rows ("column-wise"): each process
computes its own heads, or its own slice of the intermediate features, from the full input, with no
communication. The second matrix is split by input columns ("row-wise"): each process multiplies the slice it
computed by the matching columns, and one all-reduce sums the N partial results. So a block costs two
all-reduces of (B, T, H) activations, and nothing in between is ever gathered:

    plan entry (per block)              style              what one process keeps
    self_attn.q_proj / k_proj / v_proj  ColwiseParallel    n_heads / N query heads, n_kv / N key-value heads
    self_attn.o_proj                    RowwiseParallel    the columns of those heads; all-reduce after it
    self_attn                           LocalHeads         local head counts; GPT-OSS sinks of its own heads
    mlp.gate_proj / up_proj             ColwiseParallel    I / N intermediate features
    mlp.down_proj                       RowwiseParallel    the columns of those features; all-reduce after it
    mlp.experts (GPT-OSS)               ExpertSlices       each expert's I / N features; all-reduce after it
    embed_tokens, lm_head, norms, router  (replicated)     everything

Query heads and key-value heads are split by the same N, so process r's query heads use exactly process r's
key-value heads (GQA groups stay whole) and its KV cache holds only those n_kv / N heads.

Why the embedding and the head are replicated, not split by vocabulary: every decoding strategy of the loop
(sampling, beam search, DoLa, entropy) reads whole rows of logits, so a vocabulary-split head would need an
all-gather of V floats per row and step (1 + L rows for DoLa), and a split embedding one more all-reduce; the
copy costs little where tensor parallelism is needed (gpt-oss-120b: 2 x 201088 x 2880 bf16 = 2.3 GB of about
65 GB), though much for a small model (SmolLM2's tied 49152 x 576 matrix is 21 % of it; see
docs/tensor_parallel.md). The head's matmul then runs whole on every process; its logits are bitwise the same
on all of them, so the same generator seed draws the same token everywhere.

Why each expert's matrices are split, not the experts (expert parallelism): decoding routes one token to k of
E experts; with experts spread over processes, the k chosen may all live on one process while the others
idle, and tokens must travel to their experts (an all-to-all). Split inside, every process does 1/N of every
chosen expert, memory is exactly 1/N whatever the routing, and the MoE ends with the same single all-reduce
as a dense MLP. (Expert parallelism pays off for large batches, where every expert gets tokens.)

Nothing here changes the model's code: the plan is applied by `parallelize_module`, the model's forward runs as
written with local head counts, and the decode loop is unchanged. `model/shard_loading.py` loads each
process's slices straight from the safetensors files.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
from fnmatch import fnmatchcase

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from .config import ModelConfig

FIRST_RANK_ONLY = "first rank only"  # a bias that joins an all-reduced sum: added by one process, zero elsewhere


class TensorParallelError(RuntimeError):
    """A tensor-parallel set-up that cannot work (counts that do not divide, a process that failed)."""


class LocalHeads(ParallelStyle):
    """The attention module itself: head counts become this process's, and GPT-OSS sinks follow their heads."""

    shard_dims = {"sinks": 0}

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        world = device_mesh.size()
        module.n_heads //= world  # the forward views its q/k/v output with these counts
        module.n_kv //= world
        if getattr(module, "sinks", None) is not None:  # (n_heads,) -> (n_heads / N,): plain, the forward uses it
            module.sinks = nn.Parameter(local_chunk(module.sinks.detach(), 0, device_mesh), requires_grad=False)
        return module


class ExpertSlices(ParallelStyle):
    """GPT-OSS experts, each split like a dense MLP: gate_up by output features, down by input features.

    gate_up_proj (E, H, 2I) interleaves gate and up columns (gate_i, up_i at 2i, 2i + 1), so a contiguous chunk
    of 2I / N columns holds whole (gate, up) pairs: the features i of this process's down_proj rows.
    Every process runs the same router on the same input, so all choose the same experts.
    """

    shard_dims = {"gate_up_proj": 2, "gate_up_proj_bias": 1, "down_proj": 1, "down_proj_bias": FIRST_RANK_ONLY}

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        for name, dim in self.shard_dims.items():
            tensor = getattr(module, name).detach()
            local = local_chunk(tensor, dim, device_mesh) if dim != FIRST_RANK_ONLY else first_rank_only(tensor,
                                                                                                        device_mesh)
            setattr(module, name, nn.Parameter(local, requires_grad=False))
        module.register_forward_hook(lambda _module, _inputs, out: all_reduce(out, device_mesh))
        return module


def local_chunk(tensor: torch.Tensor, dim: int, mesh: DeviceMesh) -> torch.Tensor:
    """This process's 1/N of `tensor` along `dim` (the counts were checked to divide)."""
    return tensor.chunk(mesh.size(), dim=dim)[mesh.get_local_rank()].contiguous()


def first_rank_only(tensor: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    return tensor if mesh.get_local_rank() == 0 else torch.zeros_like(tensor)


def all_reduce(partial: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """The sum over processes of each one's partial result, through DTensor (Partial -> Replicate)."""
    return DTensor.from_local(partial, mesh, [Partial()], run_check=False).redistribute(mesh, [Replicate()]).to_local()


def tensor_parallel_plan(config: ModelConfig) -> dict[str, ParallelStyle]:
    """Module path (with * for the layer index) -> how it is split, for `parallelize_module`."""
    plan: dict[str, ParallelStyle] = {
        "layers.*.self_attn": LocalHeads(),
        "layers.*.self_attn.q_proj": ColwiseParallel(),
        "layers.*.self_attn.k_proj": ColwiseParallel(),
        "layers.*.self_attn.v_proj": ColwiseParallel(),
        "layers.*.self_attn.o_proj": RowwiseParallel(),
    }
    if config.model_type == "gpt_oss":
        plan["layers.*.mlp.experts"] = ExpertSlices()
    else:
        plan.update({"layers.*.mlp.gate_proj": ColwiseParallel(), "layers.*.mlp.up_proj": ColwiseParallel(),
                     "layers.*.mlp.down_proj": RowwiseParallel()})
    for style in plan.values():
        style.src_data_rank = None  # every process holds the same full tensors (or meta ones): keep a chunk, send nothing
    return plan


def shard_dims(plan: dict[str, ParallelStyle], names: list[str]) -> dict[str, int | str | None]:
    """Parameter name -> the dimension split across processes (None: replicated; FIRST_RANK_ONLY)."""
    dims: dict[str, int | str | None] = {name: None for name in names}
    for pattern, style in plan.items():
        if isinstance(style, ColwiseParallel):
            per_param = {"weight": 0, "bias": 0}  # (out, in): rows are outputs
        elif isinstance(style, RowwiseParallel):
            per_param = {"weight": 1}  # the bias is added once, after the all-reduce
        else:
            per_param = style.shard_dims
        for name in names:
            module_path, _, param = name.rpartition(".")
            if param in per_param and fnmatchcase(module_path, pattern):
                dims[name] = per_param[param]
    return dims


def check_divisible(config: ModelConfig, world_size: int) -> None:
    """Raise TensorParallelError unless every split count divides by the number of processes."""
    counts = {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
              "intermediate_size": config.intermediate_size}
    bad = {key: value for key, value in counts.items() if value % world_size}
    if bad:
        listed = ", ".join(f"{key}={value}" for key, value in bad.items())
        fits = [n for n in range(1, math.gcd(*counts.values()) + 1) if math.gcd(*counts.values()) % n == 0]
        raise TensorParallelError(
            f"tensor parallelism over {world_size} processes splits the heads and MLP features evenly, but {listed} "
            f"{'do' if len(bad) > 1 else 'does'} not divide by {world_size}; this model splits over "
            f"{', '.join(map(str, fits))} processes (--nproc-per-node)")


def parallelize(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Split `model` (loaded, or on the meta device) across `mesh` in place; every process calls it alike."""
    check_divisible(model.config, mesh.size())
    plan = tensor_parallel_plan(model.config)
    plain_linears(model, plan)
    return parallelize_module(model, mesh, plan)


def plain_linears(model: nn.Module, plan: dict[str, ParallelStyle]) -> None:
    """Give the split linears nn.Linear's own forward: DTensor runs PyTorch's operators only, and a subclass
    whose forward calls a kernel of its own (an accelerated product) has no rule for split weights."""
    for path, module in model.named_modules():
        split = any(fnmatchcase(path, pattern) for pattern, style in plan.items()
                    if isinstance(style, (ColwiseParallel, RowwiseParallel)))
        if split and isinstance(module, nn.Linear) and type(module) is not nn.Linear:
            module.__class__ = nn.Linear


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
