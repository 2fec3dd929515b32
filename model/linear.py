"""Matrix products for decoding: what `nn.Linear` computes, arranged so that the CPU kernels run fast.

A decode step multiplies a few vectors by every weight matrix, so its speed is set by how fast each kernel
streams a matrix and by how many kernel calls it makes. Three measures, each measured on a 2-core AVX2 CPU
with SmolLM2-135M (scripts/bench.py), none changing what is computed beyond float rounding:

1. Stacked projections. q/k/v read the same input, and so do the MLP's gate/up: one matmul over the
   stacked matrices replaces three (two), which saves 90 of the 211 matmul calls of a step. The modules
   keep their own `nn.Linear`s, whose weights become views into the stacked weight: no memory is added,
   parameter names and the state_dict are unchanged, and an in-place change to either is seen by both.
   Matrices that already lie back to back in memory (gate_proj and up_proj in a mapped checkpoint) are
   stacked as a view, without a copy (`stack_rows`); the others are copied once, at loading.
   `StackedLinear.is_current` notices a weight that was replaced (e.g. `load_state_dict(..., assign=True)`)
   or a linear someone hooked (the lessons capture q with a forward hook), and the layer then runs the
   linears one by one. `CausalLM._apply` re-stacks after every `.to()`.

2. The kernel form for a few rows, on AMD CPUs. `F.linear(x, W)` = x @ W^T; for float32 with 2-32 rows (beam
   search, a small batch, DoLa's early-exit head), MKL's general product measured 1.2-2.6x slower on an AMD EPYC
   than computing the same numbers as (W @ x^T)^T, a tall-skinny product that streams W once at full speed.
   On an Intel Xeon (AVX-512) MKL runs its own fast kernels and F.linear measured faster for every row count
   (2-64 rows through all of SmolLM2's blocks: 17-78 ms against 40-84), so only AMD CPUs take this form
   (`tall_skinny_is_faster`). One row (plain decoding) and long prompts keep F.linear, as do bfloat16/float16
   beyond the 1-4 rows of point 7.

3. An optional column-major layout for float32 on the CPU (`weight_layout="column_major"` in
   `load_pretrained`, or `model.set_weight_layout`). Stored transposed (W^T contiguous, W a view of it),
   the one-row product x @ W^T runs about 1.3x faster (all of a step's matrices: 34-37 ms instead of 44-47),
   but the product for 2-32 rows becomes 2-4x slower, and no kernel form recovers it. So it is the layout for
   batch-1 decoding (greedy, sampling), and the default row-major one is right for beam search and batches.
   "column_major_blocks" keeps only the head row-major (and packs it, point 5): DoLa and entropy decoding run
   the blocks on one row but the head on one row per early-exit layer.
   bfloat16/float16 always stay row-major (transposed, their product is ~15x slower).

4. Half precision with many rows in float32. On a CPU without bf16/fp16 matrix instructions (AVX2 here),
   a bfloat16/float16 product costs the same per row whatever the number of rows: the 3072 x 576 gate/up
   takes 1.7 ms for 8 rows and 8.5 ms for 40, so a 45-token prompt's prefill took 0.55 s against 0.14 s in
   float32. Converting the weight to float32 and multiplying there is 3-6x faster from about 32 rows on
   (including the conversion), so `linear` does that, and rounds the result back to the input's dtype.

5. A oneDNN-packed head for early exits. DoLa and entropy decoding multiply several rows by the 49152 x 576
   head every step (one per early-exit layer). oneDNN's linear over a weight reordered into its own blocked
   format (`torch.ops.mkldnn._reorder_linear_weight`, what inductor uses for frozen CPU linears) measured
   7.5 ms for 9 rows and 17.5 ms for 31, against 16.4 and 35 ms for the best plain form, and 4.3 ms for one row
   (column-major: 5.5). The packed tensor is opaque, so it is a *copy* (+113 MB for SmolLM2's head in float32):
   only the "column_major_blocks" layout makes one, for the head. `PackedWeight` remembers which weight it
   copied and that weight's version counter, so a replaced or in-place-edited weight is noticed and the plain
   product runs instead of a stale copy. An edit through `weight.data` bypasses the version counter: after one,
   call `model.set_weight_layout(...)` again to re-pack. Gradients and torch.compile use the plain product.
   "packed_head" packs the head the same way but keeps every matrix row-major, for point 6.

6. A hand-written kernel for one row (model/matvec.py, model/matvec.cpp). PyTorch's one-row products stream a
   weight at 10-16 GB/s on this CPU, memory gives 25: all of SmolLM2's matrices take 23 ms in float32 (MKL: 47
   row-major, 34-37 column-major) and 13 ms in bf16 (PyTorch: 20-23). It needs a row-major contiguous weight, so
   where it runs, row-major is the layout for one row too (`choose_weight_layout`); where it cannot (no AVX2, no
   compiler, gradients wanted), the products above run instead. Those numbers are an AMD EPYC's. On an Intel Xeon
   (AVX-512) MKL is the faster one in float32 (all matrices: 17.3 ms column-major, 18.8 row-major, the kernel
   20.5-22), so there float32 keeps MKL and the column-major layout (`float32_kernel_is_faster`); bf16/fp16 take
   the kernel on both (Xeon: 10.7 ms against PyTorch's 17-23).

7. The same kernel for a few rows (beam search, a small batch, speculative verification). It reads each weight
   row once and multiplies it by every row of x while it sits in L1. Measured on the Xeon, all of SmolLM2's
   matrices: float32 4 rows 26.5 ms, 8 rows 35.4 (MKL's F.linear: 34.7 and 45.8; 1-3 rows MKL is as fast or
   faster), bf16 2-4 rows 12.5-13.8 ms (PyTorch: 18-19; from 5 rows on the two are even). So float32 4-8 rows
   take it on Intel CPUs (on AMD ones the tall-skinny form of point 2 was measured instead), bf16/fp16 1-4 rows
   everywhere (measured on the Xeon; on an AVX2 CPU PyTorch's bf16/fp16 products cost the same per row, so the
   kernel can only gain more there). int8 (model/quantize.py) sends only one row to it: for 2-63 rows
   `_weight_int8pack_mm` was measured instead.
"""

from __future__ import annotations

import functools
import weakref
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .matvec import matvec, matvec_available
from .quantize import Int8Linear, int8_linear

FEW_ROWS = (2, 32)  # the rows for which (W @ x^T)^T beat F.linear in float32 on the CPU, inclusive
HALF_UPCAST_ROWS = 32  # from this many rows on, a bf16/fp16 CPU product runs in float32 (point 4)
WEIGHT_LAYOUTS = ("row_major", "column_major", "column_major_blocks", "packed_head")


def check_weight_layout(layout: str) -> None:
    if layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"weight_layout must be one of {WEIGHT_LAYOUTS}, got {layout!r}")


def choose_weight_layout(one_row_blocks: bool, one_row_head: bool) -> str:
    """The fastest layout for a run whose blocks / head multiply one row per step (batch-1 greedy or sampling:
    both; DoLa and entropy decoding: the blocks only, the head takes one row per early-exit layer; beams,
    batches, speculative verification: neither). Measured on the benchmark's CPUs; see points 3, 5 and 6. Only
    float32 CPU weights follow it (`prefers_column_major`): bf16/fp16 stay row-major for the kernel."""
    if not one_row_blocks:
        return "row_major"
    kernel = float32_kernel_is_faster()  # it needs row-major weights; where it loses, column-major MKL is fastest
    if one_row_head:
        return "row_major" if kernel else "column_major"
    return "packed_head" if kernel else "column_major_blocks"


def prefers_column_major(layout: str, dtype: torch.dtype, device: torch.device | str | None,
                         is_head: bool = False) -> bool:
    """Column-major only where it measured faster: float32 on the CPU, and only when asked for;
    "column_major_blocks" leaves the head (lm_head, and a tied embedding) row-major."""
    wanted = layout == "column_major" or (layout == "column_major_blocks" and not is_head)
    return wanted and dtype == torch.float32 and torch.device(device or "cpu").type == "cpu"


def relayout(weight: torch.Tensor, column_major: bool) -> torch.Tensor:
    """The same (out, in) values stored row-major (W contiguous) or column-major (a view of W^T contiguous).

    A weight already in the layout is returned as is; a row or column stride of 1 is enough (a stacked
    part is a slice whose other stride is the stacked size, which BLAS takes as its leading dimension).
    """
    if column_major:
        return weight if weight.stride(0) == 1 else weight.t().contiguous().t()
    return weight if weight.stride(-1) == 1 else weight.contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T + bias, like F.linear; x (..., in), weight (out, in) -> (..., out)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if uses_matvec_kernel(x, weight):  # points 6 and 7: one row or a few, the hand-written kernel
        out = matvec(weight, x.reshape(rows, -1))  # (rows, out)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], weight.shape[0])
    row_major = weight.stride(-1) == 1
    if (FEW_ROWS[0] <= rows <= FEW_ROWS[1] and row_major and x.dtype == torch.float32 and x.device.type == "cpu"
            and tall_skinny_is_faster()):
        out = (weight @ x.reshape(rows, -1).t()).t().contiguous()  # (rows, out): the tall-skinny kernel (point 2)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], weight.shape[0])
    if rows >= HALF_UPCAST_ROWS and x.device.type == "cpu" and half_products_are_slow(x.dtype):
        out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())  # point 4
        return out.to(x.dtype)
    return F.linear(x, weight, bias)


def uses_matvec_kernel(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The hand-written product (model/matvec.py) applies: a contiguous row-major float32/bf16/fp16 CPU weight,
    the input in the same dtype, no gradient wanted (the kernel has no backward), it could be built, and it is
    the fastest for this many rows of x (points 6 and 7)."""
    if not (x.device.type == "cpu" and x.dtype == weight.dtype and weight.dtype in MATVEC_DTYPES
            and weight.is_contiguous() and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))):
        return False
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if weight.dtype != torch.float32:
        return 1 <= rows <= HALF_KERNEL_ROWS and matvec_available()
    if rows == 1:
        return float32_kernel_is_faster()
    return FLOAT32_KERNEL_ROWS[0] <= rows <= FLOAT32_KERNEL_ROWS[1] and float32_few_rows_kernel_is_faster()


MATVEC_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HALF_KERNEL_ROWS = 4  # point 7: bf16/fp16 products of 1-4 rows take the kernel
FLOAT32_KERNEL_ROWS = (4, 8)  # point 7: float32 products of 4-8 rows take it on Intel CPUs


@torch.compiler.assume_constant_result  # torch.compile cannot trace reading a file: asked once, then a constant
def float32_few_rows_kernel_is_faster() -> bool:
    """Point 7: on Intel CPUs MKL's float32 product of 4-8 rows takes 1.3-1.8x the time of one row, the kernel's
    1.2-1.6x; AMD CPUs take the tall-skinny form instead (point 2, measured there)."""
    return matvec_available() and cpu_vendor() == "GenuineIntel"


@torch.compiler.assume_constant_result  # torch.compile cannot trace reading a file: asked once, then a constant
def float32_kernel_is_faster() -> bool:
    """Point 6: the one-row kernel runs here and beats MKL in float32; not on Intel CPUs, where MKL takes its own
    AVX-512 paths. bfloat16/float16/int8 take the kernel wherever it runs."""
    return matvec_available() and cpu_vendor() != "GenuineIntel"


@torch.compiler.assume_constant_result  # torch.compile cannot trace reading a file: asked once, then a constant
def tall_skinny_is_faster() -> bool:
    """Point 2: (W @ x^T)^T beats MKL's F.linear for a few float32 rows on AMD CPUs, where it was measured; on
    Intel ones F.linear is faster, and elsewhere (other vendors, other BLAS) the default is kept."""
    return cpu_vendor() == "AuthenticAMD"


@functools.cache
def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The x86 vendor string of /proc/cpuinfo ("GenuineIntel", "AuthenticAMD"), or "" where there is none."""
    try:
        with open(cpuinfo) as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.cache
def half_products_are_slow(dtype: torch.dtype) -> bool:
    """True for bf16/fp16 on a CPU without matrix instructions for them (AVX512-BF16, AMX), where the product of
    many rows measured 3-6x slower than in float32."""
    if dtype == torch.bfloat16:
        return not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if dtype == torch.float16:
        return not torch.cpu._is_amx_fp16_supported()
    return False


PACKED_ROWS_HINT = 32  # the row count oneDNN packs for; measured as fast as exact hints for 1-31 rows


class PackedWeight:
    """A oneDNN-blocked copy of a float32 CPU weight (point 5), valid while the weight is unchanged."""

    def __init__(self, weight: torch.Tensor):
        self.source = weakref.ref(weight)  # not a strong reference: a replaced weight may be freed
        self.pointer, self.version = weight.data_ptr(), weight._version
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_ROWS_HINT)

    def is_current(self, weight: torch.Tensor) -> bool:
        """Same Parameter, same memory, no in-place change since packing (the version counter counts those)."""
        return weight is self.source() and weight.data_ptr() == self.pointer and weight._version == self.version

    def __deepcopy__(self, memo) -> "PackedWeight | None":
        # The packed tensor is opaque (no storage to copy): pack the copied weight again, or leave none (the
        # copy then runs the plain product until its next arrange_weights, e.g. set_weight_layout or .to()).
        source = self.source()
        copied = memo.get(id(source)) if source is not None else None
        return PackedWeight(copied) if copied is not None else None

    def __reduce__(self):
        return type(None), ()  # pickled (torch.save of a whole model) as None, for the same reason

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # (rows, in)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, bias, "none", [None], "")  # (rows, out)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def can_pack(weight: torch.Tensor) -> bool:
    """float32 on a CPU with oneDNN; not a tensor made under inference_mode (it has no version counter)."""
    return (weight.dtype == torch.float32 and weight.device.type == "cpu" and not weight.is_inference()
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class Linear(nn.Linear):
    """nn.Linear computed with `linear` (same parameters, same results up to float rounding), or through a
    oneDNN-packed copy of the weight when `arrange_weights` made one (point 5) and it is still current."""

    packed: PackedWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not when gradients are wanted (oneDNN's packed linear has no backward) or while torch.compile traces
        # (it cannot compare addresses).
        if (self.packed is not None and x.dtype == torch.float32 and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling() and self.packed.is_current(self.weight)):
            return self.packed(x, self.bias)
        return linear(x, self.weight, self.bias)


class StackedLinear:
    """Several nn.Linear layers that read the same input, computed with one matmul.

    Not an nn.Module on purpose: it owns no parameters (the linears keep theirs, as views into `weight`),
    so `.to()` and `state_dict()` see the model exactly as without it.
    """

    def __init__(self, linears: Sequence[nn.Linear], column_major: bool = False):
        self.sizes = [module.out_features for module in linears]
        # Concatenated along the output dimension, (sum of out, in); column-major is built as
        # W^T = [W_1^T W_2^T ...] directly, which copies contiguous rows instead of transposing.
        if column_major:
            self.weight = torch.cat([module.weight.detach().t() for module in linears], dim=1).t()
        else:
            self.weight = stack_rows([module.weight.detach() for module in linears])
        has_bias = [module.bias is not None for module in linears]
        if any(has_bias) and not all(has_bias):
            raise ValueError("StackedLinear needs all or none of the linears to have a bias")
        self.bias = torch.cat([module.bias.detach() for module in linears]) if all(has_bias) else None
        for module, part in zip(linears, self.weight.split(self.sizes)):
            module.weight = nn.Parameter(part, requires_grad=module.weight.requires_grad)
        if self.bias is not None:
            for module, part in zip(linears, self.bias.split(self.sizes)):
                module.bias = nn.Parameter(part, requires_grad=module.bias.requires_grad)
        self.scale = None  # int8 linears (model/quantize.py): their per-row scales, stacked the same way
        self._scales: list[torch.Tensor] = []
        if all(isinstance(module, Int8Linear) for module in linears):
            self.scale = torch.cat([module.scale for module in linears])
            for module, part in zip(linears, self.scale.split(self.sizes)):
                module.scale = part
            self._scales = [module.scale for module in linears]
        self.column_major = column_major
        self._pointers = self._current_pointers(linears)
        # What is_current compares on every call: each linear's parameters and weight address as made here.
        self._made = [(module.weight, module.bias, module.weight.data_ptr()) for module in linears]

    @staticmethod
    def _current_pointers(linears: Sequence[nn.Linear]) -> tuple[int, ...]:
        return tuple(t.data_ptr() for module in linears for t in (module.weight, module.bias) if t is not None)

    def points_at(self, linears: Sequence[nn.Linear]) -> bool:
        """True while every linear's weight (and bias) is still the view made here."""
        return self._current_pointers(linears) == self._pointers

    def is_current(self, linears: Sequence[nn.Linear]) -> bool:
        """True while every linear still has the parameters made here, over the same memory, and no hooks
        (a hook must see its module called).

        Checked before every stacked matmul, so it is written for speed: one pass reading the modules'
        dicts directly (nn.Module.__getattr__ is slow): 2 µs instead of 12 for points_at plus a hook scan,
        measured here, and a 30-layer model makes 60 such calls per token.
        """
        # torch.compile cannot trace data_ptr(); the compiled decode step checks the addresses before each call.
        check_addresses = not torch.compiler.is_compiling()
        for module, (weight, bias, pointer) in zip(linears, self._made):
            parameters = module._parameters
            if (parameters["weight"] is not weight or parameters["bias"] is not bias
                    or (check_addresses and weight.data_ptr() != pointer)
                    or module._forward_hooks or module._forward_pre_hooks):
                return False
        return all(module._buffers["scale"] is scale for module, scale in zip(linears, self._scales))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            return int8_linear(x, self.weight, self.scale, self.bias)
        return linear(x, self.weight, self.bias)


def stack_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """torch.cat(parts) of row-major matrices, or a view without a copy when they already lie back to back in one
    storage: a checkpoint mapped from disk stores an MLP's gate_proj and up_proj next to each other
    (model/loading.py, `map_file`), so loading stacks them in place instead of copying 7 MB per layer."""
    first = parts[0]
    storage, offset = first.untyped_storage(), first.storage_offset()
    for part in parts:
        if not (part.is_contiguous() and part.dtype == first.dtype and part.shape[1:] == first.shape[1:]
                and part.untyped_storage().data_ptr() == storage.data_ptr() and part.storage_offset() == offset):
            return torch.cat(parts)
        offset += part.numel()
    if offset * first.element_size() > storage.nbytes():  # an equal address, but a different, shorter storage
        return torch.cat(parts)
    rows = sum(part.shape[0] for part in parts)
    return first.new_empty(0).set_(storage, first.storage_offset(), (rows, *first.shape[1:]))


def stacked_or_separate(stacked: StackedLinear | None, linears: Sequence[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """The linears' outputs on x, concatenated on the last dimension: one stacked matmul while it is valid,
    else one matmul each."""
    if stacked is not None and stacked.is_current(linears):
        return stacked(x)
    return torch.cat([module(x) for module in linears], dim=-1)


def arrange_weights(model: nn.Module, layout: str = "row_major",
                    on_copied: Callable[[torch.Tensor], None] | None = None) -> None:
    """Stack q/k/v of every attention and gate/up of every SwiGLU MLP of `model`, and give every matrix the
    layout asked for (where it applies: see `prefers_column_major`). Skipped on the meta device; a stack
    already current in the right layout is kept. `on_copied(old)` is called with each tensor replaced by a copy
    (the loader releases memory-mapped file pages with it)."""
    # Imported here: layers.py imports this module.
    from .layers import Attention, SwiGLU

    for module in model.modules():
        if isinstance(module, Attention):
            module.qkv_proj = _stack(module.qkv_proj, [module.q_proj, module.k_proj, module.v_proj], layout, on_copied)
        elif isinstance(module, SwiGLU):
            module.gate_up_proj = _stack(module.gate_up_proj, [module.gate_proj, module.up_proj], layout, on_copied)
    head = getattr(model, "lm_head", None)
    for module in model.modules():  # every other matrix; stacked parts are already in their layout
        if isinstance(module, nn.Linear) and module.weight.device.type != "meta":
            old = module.weight.data
            module.weight.data = relayout(old, prefers_column_major(layout, old.dtype, old.device, module is head))
            if on_copied is not None and module.weight.data_ptr() != old.data_ptr():
                on_copied(old)
    if isinstance(head, Linear):  # point 5: the early-exit layouts multiply several rows by the head
        wanted = (layout in ("column_major_blocks", "packed_head") and head.weight.device.type != "meta"
                  and can_pack(head.weight))
        if not wanted:
            head.packed = None
        elif head.packed is None or not head.packed.is_current(head.weight):
            head.packed = PackedWeight(head.weight)


def matrix_names(model: nn.Module) -> dict[str, bool]:
    """state_dict name -> is it the head, for every nn.Linear weight (with a tied head, the embedding too)."""
    head, embedding = getattr(model, "lm_head", None), getattr(model, "embed_tokens", None)
    names = {f"{name}.weight": module is head
             for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if head is not None and embedding is not None and head.weight is embedding.weight:
        names["embed_tokens.weight"] = True
    return names


def _stack(existing: StackedLinear | None, linears: Sequence[nn.Linear], layout: str,
           on_copied: Callable[[torch.Tensor], None] | None) -> StackedLinear | None:
    weight = linears[0].weight
    if weight.device.type == "meta":
        return None
    column_major = prefers_column_major(layout, weight.dtype, weight.device)
    if existing is not None and existing.column_major == column_major and existing.points_at(linears):
        return existing
    old = [t.data for module in linears for t in (module.weight, module.bias) if t is not None]
    stacked = StackedLinear(linears, column_major)
    if on_copied is not None:
        in_place = stacked.weight.untyped_storage().data_ptr()
        for tensor in old:
            if tensor.untyped_storage().data_ptr() != in_place:  # stacked in place: the memory is still in use
                on_copied(tensor)
    return stacked
