"""The hand-written kernel for one row or a few (accel/matvec.cpp) and where accel/linear.py uses it.

The reference is the product computed in float64; the model with the kernel is held against transformers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import accel.linear as linear_module
import accel.matvec as matvec_module
from accel import Products, accelerate
from accel.linear import linear, uses_kernel
from accel.matvec import build, cpu_can_run_it, matvec, matvec_available
from helpers import save_tiny_llama
from model import load_pretrained

AMD = Products(kernel_float32=(1, 1), kernel_half=(1, 4), tall_skinny=(2, 32))  # what AMD CPUs measured fastest
INTEL = Products(kernel_float32=(4, 8), kernel_half=(1, 4))  # and Intel ones


def uses_matvec_kernel(x: torch.Tensor, weight: torch.Tensor, products: Products) -> bool:
    return uses_kernel(x, weight, x.numel() // x.shape[-1], products)

CAN_BUILD = cpu_can_run_it() and shutil.which("g++") is not None
needs_kernel = pytest.mark.skipif(not CAN_BUILD, reason="needs an AVX2 x86 CPU and g++")
REPO = Path(__file__).resolve().parents[2]


@needs_kernel
def test_the_kernel_builds_on_a_machine_that_can_run_it():
    """The CI machine has AVX2 and g++: the rest of the suite then runs the model through the kernel."""
    assert matvec_available()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(576, 576), (1, 32), (17, 33), (5, 7), (300, 100), (1536, 576), (3, 1)])
def test_matvec_equals_the_float64_product(dtype, shape):
    """Widths that are not multiples of 32 exercise the one-by-one tail; row counts below 16 a single thread."""
    out_features, in_features = shape
    generator = torch.Generator().manual_seed(out_features * 1000 + in_features)
    weight = torch.randn(shape, generator=generator).to(dtype)
    x = torch.randn(in_features, generator=generator).to(dtype)
    result = matvec(weight, x)
    exact = weight.double() @ x.double()  # of the rounded inputs
    assert result.dtype == dtype and result.shape == (out_features,)
    # Accumulated in float32, then rounded once to the output dtype.
    bound = 1e-5 * (weight.double().abs() @ x.double().abs()) + exact.abs() * torch.finfo(dtype).eps
    assert ((result.double() - exact).abs() <= bound + 1e-30).all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("shape", [(576, 576), (17, 33), (40, 8), (3, 1)])
def test_matvec_of_several_rows_equals_the_float64_product(dtype, rows, shape):
    """x (rows, in): groups of four rows and a smaller last group; widths that are not multiples of 16."""
    out_features, in_features = shape
    generator = torch.Generator().manual_seed(rows * 100 + out_features)
    weight = torch.randn(shape, generator=generator).to(dtype)
    x = torch.randn(rows, in_features, generator=generator).to(dtype)
    result = matvec(weight, x)
    exact = x.double() @ weight.double().t()
    assert result.dtype == dtype and result.shape == (rows, out_features)
    bound = 1e-5 * (x.double().abs() @ weight.double().abs().t()) + exact.abs() * torch.finfo(dtype).eps
    assert ((result.double() - exact).abs() <= bound + 1e-30).all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(576, 576), (17, 33), (5, 7)])
@pytest.mark.parametrize("rows", [None, 3, 6])
def test_int8_matvec_applies_each_rows_scale(dtype, shape, rows):
    from accel.quantize import dequantize_int8, quantize_int8_rows

    generator = torch.Generator().manual_seed(shape[0])
    q, scale = quantize_int8_rows(torch.randn(shape, generator=generator) * torch.rand(shape[0], 1) * 3)
    x = torch.randn(*([rows] if rows else []), shape[1], generator=generator).to(dtype)
    result = matvec(q, x, scale)
    matrix = dequantize_int8(q, scale, torch.float64)
    exact, magnitude = x.double() @ matrix.t(), x.double().abs() @ matrix.abs().t()
    assert result.dtype == dtype and result.shape == exact.shape
    assert ((result.double() - exact).abs() <= 1e-5 * magnitude + exact.abs() * torch.finfo(dtype).eps).all()


@needs_kernel
def test_matvec_of_no_rows_is_empty():
    assert matvec(torch.randn(64, 32), torch.empty(0, 32)).shape == (0, 64)


@needs_kernel
def test_matvec_refuses_what_it_cannot_compute():
    weight = torch.randn(8, 16)
    with pytest.raises(RuntimeError, match="row-major and contiguous"):
        matvec(weight.t().contiguous().t(), torch.randn(16))
    with pytest.raises(RuntimeError, match=r"weight \(out, in\) and x \(in,\)"):
        matvec(weight, torch.randn(15))
    with pytest.raises(RuntimeError, match="float32, bfloat16, float16 or int8 weights only"):
        matvec(weight.double(), torch.randn(16))
    with pytest.raises(RuntimeError, match="int8 weights need a scale per row, others none"):
        matvec(weight.to(torch.int8), torch.randn(16))
    with pytest.raises(RuntimeError, match="int8 weights need a scale per row, others none"):
        matvec(weight, torch.randn(16), torch.ones(8))
    with pytest.raises(RuntimeError, match=r"scale must be \(out,\)"):
        matvec(weight.to(torch.int8), torch.randn(16), torch.ones(7))


@needs_kernel
@pytest.mark.parametrize("vendor, float32_kernel", [("AuthenticAMD", True), ("GenuineIntel", False)])
def test_linear_takes_the_kernel_only_where_it_applies(monkeypatch, vendor, float32_kernel):
    """Each vendor's routes, forced on any CPU: float32 one row only where the kernel beats MKL (not on Intel CPUs),
    4-8 rows on Intel; bfloat16/float16 1-4 rows everywhere."""
    products = AMD if vendor == "AuthenticAMD" else INTEL
    weight = torch.randn(64, 32)
    one_row = torch.randn(1, 1, 32)
    assert uses_matvec_kernel(one_row, weight, products) is float32_kernel
    assert uses_matvec_kernel(one_row.bfloat16(), weight.bfloat16(), products)
    assert uses_matvec_kernel(one_row.half(), weight.half(), products)
    calls = []
    monkeypatch.setattr(linear_module, "matvec", lambda w, x: calls.append(x.shape) or matvec(w, x))
    for rows in range(2, 10):  # point 7: float32 4-8 rows on Intel only, bf16/fp16 up to 4 rows anywhere
        several = torch.randn(rows, 1, 32)
        takes_it = vendor == "GenuineIntel" and 4 <= rows <= 8
        assert uses_matvec_kernel(several, weight, products) is takes_it, rows
        assert uses_matvec_kernel(several.bfloat16(), weight.bfloat16(), products) is (rows <= 4), rows
        calls.clear()
        with torch.no_grad():
            expected = several.double() @ weight.double().t()
            torch.testing.assert_close(linear(several, weight, None, products).double(), expected, atol=1e-5, rtol=0)
        assert calls == ([(rows, 32)] if takes_it else []), rows  # linear went through the kernel, or did not
    assert not uses_matvec_kernel(one_row, weight.t().contiguous().t(), AMD)  # column-major: MKL
    assert not uses_matvec_kernel(one_row.bfloat16(), weight, AMD)  # mixed dtypes
    assert not uses_matvec_kernel(one_row.double(), weight.double(), AMD)
    with torch.enable_grad():  # the kernel has no backward
        assert not uses_matvec_kernel(one_row, weight.requires_grad_(), AMD)
    bias = torch.randn(64)
    expected = one_row.double() @ weight.detach().double().t() + bias.double()
    with torch.no_grad():
        torch.testing.assert_close(linear(one_row, weight.detach(), bias, products).double(), expected, atol=1e-5,
                                   rtol=0)


def test_gradients_still_flow_through_a_one_row_product():
    weight = torch.randn(8, 32, requires_grad=True)
    linear(torch.ones(1, 32), weight, None, AMD).sum().backward()
    torch.testing.assert_close(weight.grad, torch.ones(8, 32))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_decoding_through_the_kernel_matches_transformers(tmp_path, monkeypatch, dtype):
    from generation import generate

    hf = save_tiny_llama(tmp_path, hidden_size=64, intermediate_size=96).to(dtype)
    model = accelerate(load_pretrained(tmp_path, dtype=dtype), products=AMD)  # float32 too, on any x86 CPU
    calls = []
    monkeypatch.setattr(linear_module, "matvec", lambda w, x: calls.append(x.shape) or matvec(w, x))
    ids = torch.tensor([[5, 9, 13, 40, 2, 77, 31]])
    with torch.no_grad():
        expected = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(generate(model, ids, max_new_tokens=12, eos_token_id=[]).sequences, expected)
    assert calls  # the decode steps went through the kernel


def test_a_source_that_does_not_compile_raises_with_the_compiler_message(tmp_path, monkeypatch):
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(matvec_module, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(subprocess.CalledProcessError) as failure:
        build(broken)
    assert "broken.cpp" in failure.value.stderr
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-written is left to be loaded later


def test_a_failed_build_warns_and_falls_back(monkeypatch):
    def failing_build(source):
        raise subprocess.CalledProcessError(1, ["g++"], stderr="fatal error: torch/library.h: No such file")

    monkeypatch.setattr(matvec_module, "build", failing_build)
    monkeypatch.setattr(matvec_module, "cpu_can_run_it", lambda: True)
    monkeypatch.setattr(matvec_module.shutil, "which", lambda name: "/usr/bin/g++")
    with pytest.warns(UserWarning, match="could not compile matvec.cpp.*torch/library.h: No such file"):
        assert matvec_module._load.__wrapped__() is False


def test_switched_off_by_the_environment_the_model_still_matches_transformers(tmp_path):
    """SCRATCH_LM_MATVEC=0: PyTorch's products, in a fresh process (the kernel's availability is decided once)."""
    save_tiny_llama(tmp_path)
    script = f"""
import sys, torch
sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
from transformers import LlamaForCausalLM
from model import load_pretrained
from accel import accelerate, choose_weight_layout
from accel.matvec import matvec_available
assert not matvec_available()
assert choose_weight_layout(True, True) == "column_major"
model = accelerate(load_pretrained({str(tmp_path)!r}))
hf = LlamaForCausalLM.from_pretrained({str(tmp_path)!r}).eval()
ids = torch.tensor([[3, 1, 4, 1, 5]])
with torch.no_grad():
    torch.testing.assert_close(model(ids[:, -1:]).logits, hf(ids[:, -1:]).logits, atol=1e-5, rtol=0)
print("ok")
"""
    env = {**os.environ, "SCRATCH_LM_MATVEC": "0"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]

