"""accel/: the accelerated model equals the plain one, for every option, with each kernel and layout path forced.

The plain model is held to transformers by tests/model/test_model.py; here the reference is the plain model (and, for
single products, F.linear in float64). Tolerances: float32 1e-5 (the products differ only in summation order),
bf16/fp16 one rounding step of the values compared. Each route of `linear` is forced with a hand-built `Products`,
so what is covered does not depend on the vendor of the CPU that runs the tests.
"""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import accel.linear as linear_module
from accel import FusedRMSNorm, Products, accelerate
from accel.linear import NO_ROWS, FastLinear, PackedLinear, cpu_vendor, linear
from accel.matvec import matvec_available
from accel.stacked import StackedAttention, StackedSwiGLU, stack_rows
from helpers import save_tiny_llama
from generation import generate
from generation.loop import final_and_early_exit_logits
from model import load_pretrained
from model.layers import RMSNorm

REPO = Path(__file__).resolve().parents[2]
LAYOUTS = ("row_major", "column_major", "column_major_blocks", "packed_head")
# Every route of `linear`, forced: each one takes 1-40 rows of its dtype (the kernel where it can be built).
KERNEL = Products(kernel_float32=(1, 40), kernel_half=(1, 40))
TALL_SKINNY = Products(tall_skinny=(1, 40))
UPCAST = Products(upcast=(1, 10**9), upcast_dtypes=(torch.bfloat16, torch.float16))
PYTORCH = Products()  # F.linear everywhere
ROUTES = {"kernel": KERNEL, "tall_skinny": TALL_SKINNY, "upcast": UPCAST, "pytorch": PYTORCH}
needs_kernel = pytest.mark.skipif(not matvec_available(), reason="the kernel cannot be built here")


def storage_bytes(model: nn.Module) -> int:
    """Bytes of memory behind the parameters (the union of their address ranges): what the weights really hold.
    Not the storages' sizes: a loaded model's parameters are views into the checkpoint file's one mapping."""
    def address_range(p: torch.Tensor) -> tuple[int, int]:  # first and one-past-last byte (strided views too)
        last = sum((size - 1) * stride for size, stride in zip(p.shape, p.stride()))
        return p.data_ptr(), p.data_ptr() + (last + 1) * p.element_size()

    ranges = sorted(address_range(p) for p in model.parameters())
    total, covered_to = 0, 0
    for start, end in ranges:
        total += max(end, covered_to) - max(start, covered_to)
        covered_to = max(covered_to, end)
    return total


def hf_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(ids).logits


def test_no_module_under_model_imports_accel():
    """model/ is the math: no file imports the speed code, and importing the package loads none of it."""
    for path in sorted((REPO / "model").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            assert not any(name == "accel" or name.startswith("accel.") for name in names), path
    script = "import sys, model, model.loading, model.tensor_parallel; print(sorted(m for m in sys.modules if m.split('.')[0] == 'accel'))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


def test_the_plain_model_is_plain_nn_modules(tmp_path):
    save_tiny_llama(tmp_path)
    model = load_pretrained(tmp_path)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Linear", "Embedding", "RMSNorm", "Attention", "SwiGLU"} <= kinds
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert not hasattr(model, "acceleration")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("rows", [1, 2, 4, 9, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_each_route_of_linear_equals_the_float64_product(route, rows, dtype, monkeypatch):
    """`linear` through each route (forced) equals F.linear in float64, to rounding; the kernel route is counted."""
    if route == "kernel" and not matvec_available():
        pytest.skip("the kernel cannot be built here")
    calls = []
    monkeypatch.setattr(linear_module, "matvec", lambda w, x: calls.append(x.shape) or _matvec(w, x))
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(48, 24, generator=generator).to(dtype)
    bias = torch.randn(48, generator=generator).to(dtype)
    x = torch.randn(rows, 1, 24, generator=generator).to(dtype)  # any leading shape
    expected = torch.nn.functional.linear(x.double(), weight.double(), bias.double())
    with torch.no_grad():
        got = linear(x, weight, bias, ROUTES[route])
    assert got.shape == (rows, 1, 48) and got.dtype == dtype and got.is_contiguous()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2 * expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected, atol=tolerance, rtol=0)
    assert bool(calls) == (route == "kernel" and rows <= 40), calls


def _matvec(weight, x):
    from accel.matvec import matvec

    return matvec(weight, x)


def load_pair(folder, dtype=torch.float32, **accelerate_options):
    """(plain, accelerated) from one checkpoint."""
    return load_pretrained(folder, dtype=dtype), accelerate(load_pretrained(folder, dtype=dtype), **accelerate_options)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("tied", [True, False])
def test_accelerated_logits_equal_the_plain_models_for_every_layout_and_route(tmp_path, layout, route, tied):
    """Prompt, one row, a few rows, through the cache: within 1e-5 of the plain model in float32."""
    if route == "kernel" and not matvec_available():
        pytest.skip("the kernel cannot be built here")
    save_tiny_llama(tmp_path, tie_word_embeddings=tied, initializer_range=0.2)
    plain, fast = load_pair(tmp_path, layout=layout, products=ROUTES[route])
    ids = torch.randint(3, 97, (4, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for batch in (ids[:1], ids[:1, :1], ids[:, :1], ids[:2, :3], ids):
            torch.testing.assert_close(fast(batch).logits, plain(batch).logits, atol=1e-5, rtol=0)
    expected = generate(plain, ids[:2], max_new_tokens=6, eos_token_id=[]).sequences
    assert torch.equal(generate(fast, ids[:2], max_new_tokens=6, eos_token_id=[]).sequences, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("route", ["kernel", "upcast", "pytorch"])
def test_accelerated_half_precision_stays_within_rounding_of_the_plain_model(tmp_path, dtype, route):
    """bf16/fp16: the kernel, the float32 product and the fused RMSNorm round differently; logits stay within a
    few rounding steps of the plain model's (3% of the largest logit in bf16, 0.5% in fp16)."""
    if route == "kernel" and not matvec_available():
        pytest.skip("the kernel cannot be built here")
    save_tiny_llama(tmp_path, initializer_range=0.2)
    plain, fast = load_pair(tmp_path, dtype=dtype, products=ROUTES[route])
    ids = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for batch in (ids[:1, :1], ids[:, :1], ids):
            expected = plain(batch).logits.float()
            tolerance = (3e-2 if dtype == torch.bfloat16 else 5e-3) * expected.abs().max().item()
            torch.testing.assert_close(fast(batch).logits.float(), expected, atol=tolerance, rtol=0)


def test_each_option_can_be_switched_off_and_the_modules_say_what_they_are(tmp_path):
    save_tiny_llama(tmp_path)
    plain = load_pretrained(tmp_path)
    ids = torch.tensor([[3, 4, 5, 6]])
    for options in ({"stack": False}, {"fused_norm": False}, {"stack": False, "fused_norm": False}, {}):
        fast = accelerate(load_pretrained(tmp_path), **options)
        stacked = options.get("stack", True)
        assert isinstance(fast.layers[0].self_attn, StackedAttention) is stacked
        assert isinstance(fast.layers[0].mlp, StackedSwiGLU) is stacked
        assert isinstance(fast.norm, FusedRMSNorm) is options.get("fused_norm", True)
        assert all(isinstance(m, FastLinear) for m in fast.modules() if isinstance(m, nn.Linear))
        assert fast.acceleration.stacked is stacked
        with torch.no_grad():
            torch.testing.assert_close(fast(ids).logits, plain(ids).logits, atol=1e-5, rtol=0)


def test_stacked_projections_share_memory_and_keep_the_state_dict(tmp_path):
    hf = save_tiny_llama(tmp_path, tie_word_embeddings=True)
    model = accelerate(load_pretrained(tmp_path))
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    # q/k/v are views into the one stacked matrix: the parameters hold exactly the checkpoint's bytes.
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.qkv_proj.weight.untyped_storage().data_ptr()
    # gate_proj and up_proj lie back to back in the file (written in name order): stacked in place, no copy.
    file_mapping = mlp.down_proj.weight.untyped_storage().data_ptr()
    assert mlp.gate_up_proj.weight.untyped_storage().data_ptr() == file_mapping
    assert mlp.gate_proj.weight.data_ptr() == mlp.gate_up_proj.weight.data_ptr()
    hf_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    assert storage_bytes(model) == hf_bytes
    ours = model.state_dict()
    assert set(ours) == set(load_pretrained(tmp_path).state_dict())  # no stacked names: the buffers are not saved
    for name, tensor in hf.state_dict().items():
        local = name.removeprefix("model.")
        if local in ours:
            assert torch.equal(ours[local], tensor), name


def test_stack_rows_is_a_view_only_for_parts_that_lie_back_to_back():
    memory = torch.randn(10, 4)
    top, middle, bottom = memory[:3], memory[3:5], memory[5:]
    in_place = stack_rows([top, middle, bottom])
    assert in_place.data_ptr() == memory.data_ptr() and torch.equal(in_place, memory)
    for parts in ([top, bottom],  # a gap
                  [middle, top],  # the wrong order
                  [top, middle.clone()],  # another storage
                  [top, memory[3:5, :2].contiguous(), memory[5:, :2]]):  # different widths: cat must refuse
        try:
            expected = torch.cat(parts)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                stack_rows(parts)
            continue
        stacked = stack_rows(parts)
        assert torch.equal(stacked, expected)
        assert stacked.untyped_storage().data_ptr() != memory.untyped_storage().data_ptr()


def test_column_major_layout_stores_every_matrix_transposed_and_adds_no_memory(tmp_path):
    hf = save_tiny_llama(tmp_path, tie_word_embeddings=True)
    model = accelerate(load_pretrained(tmp_path), layout="column_major")
    for name, param in model.named_parameters():
        if param.dim() == 2:  # every matrix, the tied embedding/head included
            assert param.stride(0) == 1 and param.stride(1) != 1, f"{name} is not column-major"
    assert storage_bytes(model) == sum(p.numel() * p.element_size() for p in hf.parameters())
    half = accelerate(load_pretrained(tmp_path, dtype=torch.bfloat16), layout="column_major")
    assert all(p.stride(-1) == 1 for p in half.parameters() if p.dim() == 2)  # half precision stays row-major


@pytest.mark.parametrize("tied", [True, False])
def test_column_major_blocks_keep_the_head_row_major(tmp_path, tied):
    save_tiny_llama(tmp_path, tie_word_embeddings=tied)
    model = accelerate(load_pretrained(tmp_path), layout="column_major_blocks")
    for name, param in model.named_parameters():
        if param.dim() == 2:
            head = name in ("lm_head.weight", "embed_tokens.weight")
            assert (param.stride(-1) == 1) if head else (param.stride(0) == 1 and param.stride(1) != 1), name


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the packed head needs oneDNN")
@pytest.mark.parametrize("layout", ["column_major_blocks", "packed_head"])
def test_packed_head_gives_transformers_early_exit_logits_and_notices_a_changed_weight(tmp_path, layout):
    """column_major_blocks and packed_head pack the head for oneDNN: early-exit logits (8 layers' rows and the
    final one in one product) equal transformers' head on its hidden states; an in-place edit of the (tied) head
    makes the stale packed copy step aside."""
    hf = save_tiny_llama(tmp_path, tie_word_embeddings=True, num_hidden_layers=8, initializer_range=0.2)
    model = accelerate(load_pretrained(tmp_path), layout=layout)
    blocks_column_major = layout == "column_major_blocks"
    assert all((p.stride(0) == 1) == blocks_column_major for n, p in model.layers.named_parameters() if p.dim() == 2)
    assert isinstance(model.lm_head, PackedLinear)
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(8))
    layers = list(range(8))
    calls = []
    packed = model.lm_head.packed
    model.lm_head.packed = type("Counting", (), {"__call__": lambda self, x, b: calls.append(1) or packed(x, b),
                                                 "is_current": lambda self, w: packed.is_current(w)})()

    def check():
        with torch.no_grad():
            logits, early = final_and_early_exit_logits(model, model.hidden_states(ids, keep_last=1), layers, False)
            hidden = hf(ids, output_hidden_states=True).hidden_states  # transformers: the same un-normed states
            expected = torch.stack([hf.lm_head(hidden[j][:, -1]) for j in layers])
            torch.testing.assert_close(early, expected, atol=1e-4, rtol=0)
            torch.testing.assert_close(logits, hf(ids).logits[:, -1:], atol=1e-4, rtol=0)

    check()
    assert calls  # the packed product ran
    with torch.no_grad():
        model.embed_tokens.weight[5] += 1.0  # the tied head, edited in place: the packed copy is stale now
        hf.model.embed_tokens.weight[5] += 1.0
    calls.clear()
    check()
    assert not calls and not packed.is_current(model.lm_head.weight)
    model.lm_head.packed = packed
    copied = copy.deepcopy(model)  # the opaque packed tensor cannot be copied: the copy packs its own weight
    assert copied.lm_head.packed.is_current(copied.lm_head.weight)
    with torch.no_grad():
        torch.testing.assert_close(copied(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    model(ids).logits.sum().backward()  # oneDNN's packed linear has no backward: the plain product runs
    assert model.embed_tokens.weight.grad is not None and model.norm.weight.grad is not None
    assert not isinstance(accelerate(load_pretrained(tmp_path, dtype=torch.bfloat16), layout=layout).lm_head,
                          PackedLinear)  # only float32 is packed
    with torch.inference_mode():  # inference tensors have no version counter: no packed copy for them
        loaded = accelerate(load_pretrained(tmp_path), layout=layout)
        assert not isinstance(loaded.lm_head, PackedLinear)


def test_bad_layouts_twice_accelerated_and_meta_models_are_refused(tmp_path):
    save_tiny_llama(tmp_path)
    with pytest.raises(ValueError, match="weight_layout must be one of"):
        accelerate(load_pretrained(tmp_path), layout="transposed")
    model = accelerate(load_pretrained(tmp_path))
    with pytest.raises(ValueError, match="already accelerated"):
        accelerate(model)
    with torch.device("meta"):
        from model import CausalLM

        meta = CausalLM(model.config)
    with pytest.raises(ValueError, match="meta device"):
        accelerate(meta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_rms_norm_equals_the_written_out_formula(dtype):
    """The plain RMSNorm is transformers' formula (equal bit for bit); the fused one is within one rounding step."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    generator = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 5, 64, generator=generator) * 3).to(dtype)
    weight = (1 + 0.1 * torch.randn(64, generator=generator)).to(dtype)
    plain, reference = RMSNorm(64, 1e-6).to(dtype), LlamaRMSNorm(64, eps=1e-6).to(dtype)
    fused = FusedRMSNorm(64, 1e-6).to(dtype)
    with torch.no_grad():
        for norm in (plain, reference, fused):
            norm.weight.copy_(weight)
        expected = reference(x)
        torch.testing.assert_close(plain(x), expected, atol=0, rtol=0)
        tolerance = {torch.float32: 1e-6, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
        torch.testing.assert_close(fused(x), expected, atol=tolerance * expected.abs().max().item(), rtol=0)


@pytest.mark.parametrize("lines, vendor, kernel_float32, tall_skinny", [
    (["processor\t: 0", "vendor_id\t: AuthenticAMD", "model name\t: AMD EPYC"], "AuthenticAMD", (1, 1), (2, 32)),
    (["processor\t: 0", "vendor_id\t: GenuineIntel", "flags\t\t: avx512f amx_tile"], "GenuineIntel", (4, 8), NO_ROWS),
    (["processor\t: 0", "CPU implementer\t: 0x41"], "", (1, 1), NO_ROWS),  # an ARM /proc/cpuinfo has no vendor_id
    (None, "", (1, 1), NO_ROWS),  # no /proc/cpuinfo at all (macOS, Windows)
])
def test_the_cpu_vendor_decides_the_default_routes(tmp_path, monkeypatch, lines, vendor, kernel_float32, tall_skinny):
    """Tall-skinny only on AMD; the float32 kernel for one row wherever it runs except on Intel (MKL is faster
    there), for 4-8 rows on Intel; half precision 1-4 rows wherever the kernel runs."""
    cpuinfo = tmp_path / "cpuinfo"
    if lines is not None:
        cpuinfo.write_text("\n".join(lines) + "\n")
    assert cpu_vendor(str(cpuinfo)) == vendor
    monkeypatch.setattr(linear_module, "cpu_vendor", lambda: vendor)
    for available in (True, False):
        monkeypatch.setattr(linear_module, "matvec_available", lambda: available)
        products = Products.for_this_machine()
        assert products.tall_skinny == tall_skinny
        assert products.kernel_float32 == (kernel_float32 if available else NO_ROWS)
        assert products.kernel_half == ((1, 4) if available else NO_ROWS)
