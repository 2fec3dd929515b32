"""A hand-written matrix-vector product for decoding on x86 CPUs (the kernel is accel/matvec.cpp).

A decode step multiplies one row (or a few) by every weight matrix, so it is as fast as the weights stream from
memory. matvec.cpp walks each thread's weight rows front to back with a prefetch ahead, and multiplies each weight
row by every row of x while it sits in L1 (x (rows, in)); measurements against PyTorch's products are in
docs/performance.md.

The kernel is C++, so it is compiled on first use, once per machine, with the C++ compiler that torch.compile
also needs (`g++`, about 15 s; scripts/setup.sh does it), and cached under ~/.cache/scratch-lm/kernels/, where
accel/kernel_cache.py loads a library only if this user built it from this source and these flags.
`matvec_available()` is False, and accel/linear.py keeps PyTorch's products (the same numbers up to float
rounding), where it cannot run: not an x86 CPU with AVX2/FMA/F16C, no compiler, or SCRATCH_LM_MATVEC=0 in the
environment (to compare the two).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch

from .kernel_cache import cached_build

SOURCE = Path(__file__).with_name("matvec.cpp")
CACHE_DIR = Path(os.environ.get("SCRATCH_LM_KERNEL_CACHE", Path.home() / ".cache" / "scratch-lm" / "kernels"))


def cpu_can_run_it() -> bool:
    """The kernel uses AVX2, FMA and F16C: every x86 CPU that torch reports as AVX2 or AVX512 has them."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def compile_command(source: Path, output: Path) -> list[str]:
    """g++ flags for a shared library that registers a torch operator (what torch.utils.cpp_extension would pass,
    without its ninja requirement)."""
    from torch.utils.cpp_extension import include_paths, library_paths

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{path}" for path in include_paths()]
    libraries = [flag for path in library_paths() for flag in (f"-L{path}", f"-Wl,-rpath,{path}")]
    return ["g++", str(source), "-o", str(output), "-shared", "-fPIC", "-std=c++17", "-O3",
            "-mavx2", "-mfma", "-mf16c", "-fopenmp",  # OpenMP: at::parallel_for runs on torch's threads
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *includes, *libraries, "-lc10", "-ltorch_cpu", "-ltorch"]


def build(source: Path = SOURCE) -> Path | None:
    """Compile `source` into the kernel cache (once per source, flags and torch version) and return the library's
    path; None when the cache folder is not private to this user. accel/kernel_cache.py checks the folder and
    the library (owner, permissions, the hashes recorded at build time) before anything is loaded."""
    return cached_build(source, compile_command, CACHE_DIR)


def load_kernel(source: Path, switch: str) -> bool:
    """Build `source` (once per machine) and load it into torch; False where it cannot run: the environment
    variable `switch` is "0", the CPU lacks AVX2/FMA/F16C, there is no g++, or the build failed (with a warning
    that quotes the compiler). accel/entropy.cpp is loaded the same way."""
    if os.environ.get(switch, "1") == "0" or not cpu_can_run_it() or shutil.which("g++") is None:
        return False
    try:
        library = build(source)
        if library is None:  # an untrusted cache folder (with a notice): PyTorch's operations
            return False
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        warnings.warn(f"scratch-lm could not compile {source.name}, so PyTorch's slower operations run instead: "
                      f"{detail.strip()[-500:]}", stacklevel=4)
        return False
    torch.ops.load_library(str(library))
    return True


@functools.cache
def _load() -> bool:
    """Build (once per machine) and load the kernel; False where it cannot run (see the module docstring)."""
    if not load_kernel(SOURCE, "SCRATCH_LM_MATVEC"):
        return False

    @torch.library.register_fake("scratch_lm::matvec")
    def _(weight: torch.Tensor, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:  # for tracing
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    return True


@torch.compiler.assume_constant_result  # torch.compile asks once while tracing, then treats it as a constant
def matvec_available() -> bool:
    """Whether `matvec` can run here; the first call builds and loads the kernel."""
    return _load()


def matvec(weight: torch.Tensor, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """weight (out, in) contiguous float32/bf16/fp16 on the CPU, x (in,) -> weight @ x (out,) in x's dtype, or
    x (rows, in) -> x @ weight^T (rows, out), each weight row read once for all rows (a few: see accel/linear.py);
    an int8 weight with its scale (out,) gives scale * (weight @ x). Only after matvec_available()."""
    return torch.ops.scratch_lm.matvec(weight, x, scale)
