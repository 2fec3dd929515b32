"""Faster matrix products for decoding: what `nn.Linear` computes, routed to the fastest CPU kernel for its rows.

A decode step multiplies a few rows by every weight matrix, so its speed is set by how fast each product streams
its matrix. `FastLinear` keeps nn.Linear's parameters and computes `linear(x, W, b, products)`, which picks, by
the number of rows of x and the dtype:

- the hand-written one-row / few-row kernel (accel/matvec.cpp) for the rows in `Products.kernel_float32` /
  `Products.kernel_half`;
- the tall-skinny form (W @ x^T)^T for float32 rows in `Products.tall_skinny` (faster than MKL's general product
  for a few rows on AMD CPUs);
- for bf16/fp16 with many rows on a CPU without half-precision matrix instructions, the product in float32
  (`Products.upcast`);
- else F.linear.

Which rows take which route was measured per CPU (docs/performance.md); `Products.for_this_machine()` holds those
choices, and tests build `Products` by hand to force each route on any machine.

Weight layouts (float32 on the CPU): "row_major" (W contiguous), "column_major" (W^T contiguous: MKL's one-row
product is faster, its few-row one slower), "column_major_blocks" (column-major blocks, a row-major head packed by
oneDNN for the several rows of early exits: DoLa, entropy decoding) and "packed_head" (all row-major, the head
packed). `choose_weight_layout` picks one for a run.
"""

from __future__ import annotations

import functools
import sys
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .matvec import matvec, matvec_available

WEIGHT_LAYOUTS = ("row_major", "column_major", "column_major_blocks", "packed_head")
NO_ROWS = (0, -1)  # an empty span of row counts


@dataclass(frozen=True)
class Products:
    """Which product each number of rows of x takes (see the module docstring): spans (first, last) of row
    counts, both included."""

    kernel_float32: tuple[int, int] = NO_ROWS  # float32 rows through the hand-written kernel
    kernel_half: tuple[int, int] = NO_ROWS  # bfloat16 / float16 rows through it
    tall_skinny: tuple[int, int] = NO_ROWS  # float32 rows computed as (W @ x^T)^T
    upcast: tuple[int, int] = NO_ROWS  # rows of an `upcast_dtypes` product computed in float32
    upcast_dtypes: tuple[torch.dtype, ...] = ()

    @classmethod
    def for_this_machine(cls) -> "Products":
        """The routes measured fastest on this CPU's vendor (docs/performance.md); PyTorch's where unmeasured."""
        kernel = matvec_available()
        vendor = cpu_vendor()
        return cls(
            # Intel (AVX-512): MKL wins for one row, the kernel for 4-8; AMD: the kernel for one row.
            kernel_float32=((4, 8) if vendor == "GenuineIntel" else (1, 1)) if kernel else NO_ROWS,
            kernel_half=(1, 4) if kernel else NO_ROWS,
            tall_skinny=(2, 32) if vendor == "AuthenticAMD" else NO_ROWS,
            upcast=(32, sys.maxsize),
            upcast_dtypes=tuple(d for d in (torch.bfloat16, torch.float16) if half_products_are_slow(d)),
        )

    def one_row_kernel(self, dtype: torch.dtype) -> bool:
        """Whether one row of `dtype` takes the kernel (then row-major weights are the fastest for one row)."""
        return within(1, self.kernel_float32 if dtype == torch.float32 else self.kernel_half)


def within(rows: int, span: tuple[int, int]) -> bool:
    return span[0] <= rows <= span[1]


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, products: Products) -> torch.Tensor:
    """x @ weight^T + bias, like F.linear, through the product `products` gives this many rows; x (..., in)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if uses_kernel(x, weight, rows, products):
        out = matvec(weight, x.reshape(rows, -1))  # (rows, out)
    elif (within(rows, products.tall_skinny) and weight.stride(-1) == 1 and x.dtype == torch.float32
          and x.device.type == "cpu"):
        out = (weight @ x.reshape(rows, -1).t()).t().contiguous()  # (rows, out)
    elif within(rows, products.upcast) and x.dtype in products.upcast_dtypes and x.device.type == "cpu":
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    else:
        return F.linear(x, weight, bias)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def uses_kernel(x: torch.Tensor, weight: torch.Tensor, rows: int, products: Products) -> bool:
    """The kernel applies: its rows, a contiguous row-major CPU weight in x's dtype, no gradient wanted (the
    kernel has no backward), and it could be built."""
    wanted = products.kernel_float32 if x.dtype == torch.float32 else products.kernel_half
    return (within(rows, wanted) and x.device.type == "cpu" and x.dtype == weight.dtype and weight.dtype in KERNEL_DTYPES
            and weight.is_contiguous() and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
            and matvec_available())


class FastLinear(nn.Linear):
    """An nn.Linear (the same Parameters, shared, not copied) computed with `linear`."""

    def __init__(self, source: nn.Linear, products: Products):
        nn.Module.__init__(self)  # not nn.Linear.__init__: the parameters are source's, nothing to initialise
        self.in_features, self.out_features = source.in_features, source.out_features
        self.weight = source.weight
        self.register_parameter("bias", source.bias)
        self.products = products

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.products)


class PackedLinear(FastLinear):
    """The head for early exits: a oneDNN-blocked copy of the float32 weight (+ its bytes), faster for the several
    rows DoLa and entropy decoding multiply each step; `linear` while the copy is stale, for gradients and under
    torch.compile."""

    def __init__(self, source: nn.Linear, products: Products):
        super().__init__(source, products)
        self.packed = PackedWeight(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype == torch.float32 and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and self.packed.is_current(self.weight)):
            return self.packed(x, self.bias)
        return linear(x, self.weight, self.bias, self.products)


PACKED_ROWS_HINT = 32  # the row count oneDNN packs for; measured as fast as exact hints for 1-31 rows


class PackedWeight:
    """A oneDNN-blocked copy of a float32 CPU weight, valid while the weight is unchanged.

    It remembers the weight and its version counter, so a replaced or in-place-edited weight is noticed. An edit
    through `weight.data` bypasses the version counter: call `accelerate` again after one.
    """

    def __init__(self, weight: torch.Tensor):
        self.source = weakref.ref(weight)  # not a strong reference: a replaced weight may be freed
        self.pointer, self.version = weight.data_ptr(), weight._version
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_ROWS_HINT)

    def is_current(self, weight: torch.Tensor) -> bool:
        """Same Parameter, same memory, no in-place change since packing (the version counter counts those)."""
        return weight is self.source() and weight.data_ptr() == self.pointer and weight._version == self.version

    def __deepcopy__(self, memo) -> "PackedWeight | None":
        # The packed tensor is opaque (no storage to copy): pack the copied weight again.
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


def check_weight_layout(layout: str) -> None:
    if layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"weight_layout must be one of {WEIGHT_LAYOUTS}, got {layout!r}")


def choose_weight_layout(one_row_blocks: bool, one_row_head: bool, products: Products | None = None) -> str:
    """The fastest layout for a run whose blocks / head multiply one row per step (batch-1 greedy or sampling:
    both; DoLa and entropy decoding: the blocks only; beams, batches, speculative verification: neither).
    Where the float32 kernel takes one row it needs row-major weights; elsewhere column-major MKL is faster."""
    if not one_row_blocks:
        return "row_major"
    kernel = (products or Products.for_this_machine()).one_row_kernel(torch.float32)
    if one_row_head:
        return "row_major" if kernel else "column_major"
    return "packed_head" if kernel else "column_major_blocks"


def prefers_column_major(layout: str, weight: torch.Tensor, is_head: bool = False) -> bool:
    """Column-major only for float32 CPU weights, and only when asked for; "column_major_blocks" leaves the head
    (lm_head, and a tied embedding) row-major. bf16/fp16 stay row-major (transposed, their product is slow)."""
    wanted = layout == "column_major" or (layout == "column_major_blocks" and not is_head)
    return wanted and weight.dtype == torch.float32 and weight.device.type == "cpu"


def relayout(weight: torch.Tensor, column_major: bool) -> torch.Tensor:
    """The same (out, in) values stored row-major (W contiguous) or column-major (a view of W^T contiguous).
    A weight already in the layout is returned as is; a row or column stride of 1 is enough (a stacked part is
    a slice whose other stride is the stacked size, which BLAS takes as its leading dimension)."""
    if column_major:
        return weight if weight.stride(0) == 1 else weight.t().contiguous().t()
    return weight if weight.stride(-1) == 1 else weight.contiguous()


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
    """True for bf16/fp16 on a CPU without matrix instructions for them (AVX512-BF16, AMX)."""
    if dtype == torch.bfloat16:
        return not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if dtype == torch.float16:
        return not torch.cpu._is_amx_fp16_supported()
    return False
