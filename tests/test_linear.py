"""model/linear.py (stacked q/k/v and gate/up, the kernel form for a few rows) and the fused RMSNorm.

They must be invisible: same logits as transformers, same state_dict, no extra memory, a correct fallback
when a weight is replaced or a hook is watching, re-stacked after every dtype change.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import save_tiny_llama
from generation.loop import final_and_early_exit_logits
from model import load_pretrained
from model.layers import RMSNorm, rms_norm_reference
import model.linear as linear_module
from model.linear import cpu_vendor, float32_kernel_is_faster, linear, stack_rows, tall_skinny_is_faster


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


def test_stacked_projections_share_memory_and_keep_the_state_dict(tmp_path):
    hf = save_tiny_llama(tmp_path, tie_word_embeddings=True)
    model = load_pretrained(tmp_path)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert attn.qkv_proj is not None and mlp.gate_up_proj is not None
    # q/k/v are views into the one stacked matrix: the parameters hold exactly the checkpoint's bytes.
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.qkv_proj.weight.untyped_storage().data_ptr()
    # gate_proj and up_proj lie back to back in the file (written in name order): stacked in place, no copy.
    file_mapping = mlp.down_proj.weight.untyped_storage().data_ptr()
    assert mlp.gate_up_proj.weight.untyped_storage().data_ptr() == file_mapping
    assert mlp.gate_proj.weight.data_ptr() == mlp.gate_up_proj.weight.data_ptr()
    hf_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    assert storage_bytes(model) == hf_bytes
    ours = model.state_dict()
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


def test_conversion_restacks_in_the_new_dtype(tmp_path):
    save_tiny_llama(tmp_path)
    model = load_pretrained(tmp_path).to(torch.bfloat16)
    attn = model.layers[0].self_attn
    assert attn.qkv_proj.weight.dtype == torch.bfloat16
    assert attn.qkv_proj.is_current([attn.q_proj, attn.k_proj, attn.v_proj])


@pytest.mark.parametrize("rows", [1, 2, 4, 9, 31, 32, 33, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tall_skinny", [True, False])  # AMD CPUs take (W @ x^T)^T for 2-32 rows, others F.linear
def test_linear_equals_f_linear_for_any_number_of_rows(rows, dtype, tall_skinny, monkeypatch):
    """`linear` switches kernel form for 2-32 rows of float32 (on AMD CPUs) and computes half precision in float32
    from 32 rows on; the numbers must be F.linear's (to rounding)."""
    monkeypatch.setattr(linear_module, "tall_skinny_is_faster", lambda: tall_skinny)
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(48, 20, generator=generator).to(dtype)
    bias = torch.randn(48, generator=generator).to(dtype)
    x = torch.randn(rows, 1, 20, generator=generator).to(dtype)  # any leading shape
    expected = torch.nn.functional.linear(x.double(), weight.double(), bias.double())
    got = linear(x, weight, bias)
    assert got.shape == (rows, 1, 48) and got.dtype == dtype and got.is_contiguous()
    tolerance = 1e-5 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(got.double(), expected, atol=tolerance, rtol=0)


@pytest.mark.parametrize("lines, vendor, tall_skinny, float32_kernel", [
    (["processor\t: 0", "vendor_id\t: AuthenticAMD", "model name\t: AMD EPYC"], "AuthenticAMD", True, True),
    (["processor\t: 0", "vendor_id\t: GenuineIntel", "flags\t\t: avx512f amx_tile"], "GenuineIntel", False, False),
    (["processor\t: 0", "CPU implementer\t: 0x41"], "", False, True),  # an ARM /proc/cpuinfo has no vendor_id
    (None, "", False, True),  # no /proc/cpuinfo at all (macOS, Windows)
])
def test_the_cpu_vendor_decides_the_few_row_form_and_the_float32_kernel(tmp_path, monkeypatch, lines, vendor,
                                                                        tall_skinny, float32_kernel):
    """Tall-skinny only on AMD; the float32 one-row kernel wherever it runs except on Intel (MKL is faster)."""
    cpuinfo = tmp_path / "cpuinfo"
    if lines is not None:
        cpuinfo.write_text("\n".join(lines) + "\n")
    assert cpu_vendor(str(cpuinfo)) == vendor
    monkeypatch.setattr(linear_module, "cpu_vendor", lambda: vendor)
    assert tall_skinny_is_faster() is tall_skinny
    for available in (True, False):
        monkeypatch.setattr(linear_module, "matvec_available", lambda: available)
        assert float32_kernel_is_faster() is (float32_kernel and available)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_match_transformers_after_conversion(tmp_path, dtype):
    hf = save_tiny_llama(tmp_path)
    model = load_pretrained(tmp_path).to(dtype)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids).logits.float()
    expected = hf_logits(hf.to(dtype), ids).float()
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2  # bf16 keeps 8 bits of mantissa
    torch.testing.assert_close(ours, expected, atol=tolerance, rtol=0)


def test_a_replaced_weight_is_used_not_the_stale_stack(tmp_path):
    hf = save_tiny_llama(tmp_path)
    model = load_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(1))
    attn, hf_attn = model.layers[0].self_attn, hf.model.layers[0].self_attn
    with torch.no_grad():
        new = torch.randn(hf_attn.k_proj.weight.shape, generator=torch.Generator().manual_seed(5))
        hf_attn.k_proj.weight.copy_(new)
        attn.k_proj.weight = nn.Parameter(new.clone())  # assigned, not copied in: the stack is stale now
        assert not attn.qkv_proj.is_current([attn.q_proj, attn.k_proj, attn.v_proj])
        torch.testing.assert_close(model(ids).logits, hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_an_in_place_change_reaches_the_stacked_matmul(tmp_path):
    hf = save_tiny_llama(tmp_path)
    model = load_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hf.model.layers[1].mlp.up_proj.weight.mul_(-2.0)
        model.layers[1].mlp.up_proj.weight.mul_(-2.0)  # a view into gate_up_proj's stacked weight
        torch.testing.assert_close(model(ids).logits, hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_a_forward_hook_on_q_proj_still_fires(tmp_path):
    """Lesson 3 captures q with a hook on q_proj; the stacked matmul would skip the module."""
    save_tiny_llama(tmp_path)
    model = load_pretrained(tmp_path)
    captured = []
    handle = model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, args, out: captured.append(out))
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with_hook = model(ids).logits
        handle.remove()
        without = model(ids).logits
    assert len(captured) == 1 and captured[0].shape == (1, 5, 32)
    torch.testing.assert_close(with_hook, without, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_rms_norm_equals_transformers_formula(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    generator = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 5, 64, generator=generator) * 3).to(dtype)
    weight = (1 + 0.1 * torch.randn(64, generator=generator)).to(dtype)
    ours, reference = RMSNorm(64, 1e-6).to(dtype), LlamaRMSNorm(64, eps=1e-6).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(weight)
        reference.weight.copy_(weight)
        expected = reference(x)
        # Half precision: at most one rounding step apart (the kernel may round the product once, not twice).
        tolerance = {torch.float32: 1e-6, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
        torch.testing.assert_close(ours(x), expected, atol=tolerance * expected.abs().max().item(), rtol=0)
        torch.testing.assert_close(rms_norm_reference(x, weight, 1e-6), expected, atol=0, rtol=0)


def test_column_major_layout_gives_the_same_logits_and_is_undone_for_half_precision(tmp_path):
    hf = save_tiny_llama(tmp_path, tie_word_embeddings=True)
    model = load_pretrained(tmp_path, weight_layout="column_major")
    assert model.weight_layout == "column_major"
    for name, param in model.named_parameters():
        if param.dim() == 2:  # every matrix, the tied embedding/head included
            assert param.stride(0) == 1 and param.stride(1) != 1, f"{name} is not column-major"
    ids = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(6))  # several rows: F.linear path
    torch.testing.assert_close(model(ids).logits.detach(), hf_logits(hf, ids), atol=1e-4, rtol=0)
    assert storage_bytes(model) == sum(p.numel() * p.element_size() for p in hf.parameters())

    model.to(torch.bfloat16)  # column-major would be ~15x slower in half precision: back to row-major
    assert all(p.stride(-1) == 1 for p in model.parameters() if p.dim() == 2)
    model.to(torch.float32)
    assert all(p.stride(0) == 1 for p in model.parameters() if p.dim() == 2)
    model.set_weight_layout("row_major")
    assert all(p.stride(-1) == 1 for p in model.parameters() if p.dim() == 2)
    torch.testing.assert_close(model(ids).logits.detach(), hf_logits(hf, ids), atol=2e-2, rtol=0)  # via bf16


@pytest.mark.parametrize("tied", [True, False])
def test_column_major_blocks_keep_the_head_row_major(tmp_path, tied):
    hf = save_tiny_llama(tmp_path, tie_word_embeddings=tied)
    model = load_pretrained(tmp_path, weight_layout="column_major_blocks")
    for name, param in model.named_parameters():
        if param.dim() == 2:
            head = name in ("lm_head.weight", "embed_tokens.weight")
            assert (param.stride(-1) == 1) if head else (param.stride(0) == 1 and param.stride(1) != 1), name
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(model(ids).logits.detach(), hf_logits(hf, ids), atol=1e-4, rtol=0)
    model.set_weight_layout("column_major")  # switching in place reaches the head too
    assert model.lm_head.weight.stride(0) == 1


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the packed head needs oneDNN")
@pytest.mark.parametrize("layout", ["column_major_blocks", "packed_head"])
def test_packed_head_gives_transformers_early_exit_logits_and_notices_a_changed_weight(tmp_path, layout):
    """column_major_blocks and packed_head pack the head for oneDNN (point 5): early-exit logits (8 layers' rows
    and the final one in one product) equal transformers' head on its hidden states; an in-place edit of the
    (tied) head or a replaced weight makes the stale packed copy step aside."""
    hf = save_tiny_llama(tmp_path, tie_word_embeddings=True, num_hidden_layers=8, initializer_range=0.2)
    model = load_pretrained(tmp_path, weight_layout=layout)
    blocks_column_major = layout == "column_major_blocks"
    assert all((p.stride(0) == 1) == blocks_column_major for n, p in model.layers.named_parameters() if p.dim() == 2)
    assert model.lm_head.packed is not None
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(8))
    layers = list(range(8))

    def check():
        with torch.no_grad():
            logits, early = final_and_early_exit_logits(model, model.hidden_states(ids, keep_last=1), layers, False)
            hidden = hf(ids, output_hidden_states=True).hidden_states  # transformers: the same un-normed states
            expected = torch.stack([hf.lm_head(hidden[j][:, -1]) for j in layers])
            torch.testing.assert_close(early, expected, atol=1e-4, rtol=0)
            torch.testing.assert_close(logits, hf(ids).logits[:, -1:], atol=1e-4, rtol=0)

    check()
    with torch.no_grad():
        model.embed_tokens.weight[5] += 1.0  # the tied head, edited in place: the packed copy is stale now
        hf.model.embed_tokens.weight[5] += 1.0
    check()
    assert not model.lm_head.packed.is_current(model.lm_head.weight)
    model.set_weight_layout(layout)  # re-packs what changed
    assert model.lm_head.packed.is_current(model.lm_head.weight)
    check()
    copied = copy.deepcopy(model)  # the opaque packed tensor cannot be copied: the copy packs its own weight
    assert copied.lm_head.packed.is_current(copied.lm_head.weight)
    with torch.no_grad():
        torch.testing.assert_close(copied(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    model(ids).logits.sum().backward()  # oneDNN's packed linear has no backward: the plain product runs
    assert model.embed_tokens.weight.grad is not None and model.norm.weight.grad is not None
    model.set_weight_layout("row_major")
    assert model.lm_head.packed is None
    model.set_weight_layout("column_major_blocks")
    model.to(torch.bfloat16)  # only float32 is packed
    assert model.lm_head.packed is None
    from transformers import LlamaForCausalLM

    saved = LlamaForCausalLM.from_pretrained(tmp_path).eval()  # the checkpoint as saved (before the edit above)
    with torch.inference_mode():  # inference tensors have no version counter: no packed copy for them
        loaded = load_pretrained(tmp_path, weight_layout="column_major_blocks")
        assert loaded.lm_head.packed is None
        torch.testing.assert_close(loaded(ids).logits, saved(ids).logits, atol=1e-4, rtol=0)


def test_an_unknown_weight_layout_is_refused_before_loading(tmp_path):
    save_tiny_llama(tmp_path)
    with pytest.raises(ValueError, match="weight_layout must be one of"):
        load_pretrained(tmp_path, weight_layout="transposed")
    with pytest.raises(ValueError, match="weight_layout must be one of"):
        load_pretrained(tmp_path).set_weight_layout("col")


@pytest.mark.parametrize("dtype, max_error", [(torch.float16, 0.5), (torch.bfloat16, 2.5)])
def test_half_precision_logits_stay_within_the_stated_tolerance_of_float32(default_model_path, default_tokenizer,
                                                                           dtype, max_error):
    """The README's half-precision figures come with this bound: on a 46-token chat prompt, logits (std about
    7.4) differ from float32 by at most 0.19 (fp16) / 0.96 (bf16), and the top token is the same at 45 or more
    of the 46 positions."""
    chat = default_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a long story about a robot who learns to paint, with many details."}],
        add_generation_prompt=True)
    ids = torch.tensor([default_tokenizer.encode(chat)])
    reference = load_pretrained(default_model_path)
    model = load_pretrained(default_model_path, dtype=dtype)
    with torch.no_grad():
        expected, got = reference(ids).logits[0], model(ids).logits[0].float()
    assert (got - expected).abs().max() < max_error
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95
