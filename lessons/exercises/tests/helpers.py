"""Assertions whose failure message is a hint for the student, followed by what went wrong."""

from __future__ import annotations

import torch


def check_close(got, expected: torch.Tensor, hint: str, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Shape, dtype class and values of `got` against the independent `expected`; `hint` leads the message."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{hint}\n(expected a torch.Tensor, got {type(got).__name__})")
    if tuple(got.shape) != tuple(expected.shape):
        raise AssertionError(f"{hint}\n(shape {tuple(got.shape)}, expected {tuple(expected.shape)})")
    if got.dtype == torch.bool or expected.dtype == torch.bool:
        if got.dtype != expected.dtype or not torch.equal(got, expected):
            raise AssertionError(f"{hint}\n(got\n{got}\nexpected\n{expected})")
        return
    try:
        torch.testing.assert_close(got.to(expected.dtype), expected, atol=atol, rtol=rtol)
    except AssertionError as err:
        detail = str(err).strip().splitlines()
        raise AssertionError(f"{hint}\n({' '.join(detail[:3])})") from None


def check_equal(got, expected, hint: str) -> None:
    if got != expected:
        raise AssertionError(f"{hint}\n(got {got!r}, expected {expected!r})")


TINY_LLAMA = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_llama_pair(seed: int = 0, std: float = 0.3, **overrides):
    """A random transformers LlamaForCausalLM (the oracle) and the package's CausalLM with the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from model import CausalLM, ModelConfig

    settings = {**TINY_LLAMA, **overrides}
    torch.manual_seed(seed)
    theirs = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            if p.ndim == 2:
                p.normal_(0.0, std)
    ours = CausalLM(ModelConfig(**settings)).eval()
    ours.load_state_dict({name.removeprefix("model."): t for name, t in theirs.state_dict().items()})
    return ours, theirs


class CountingModel(torch.nn.Module):
    """Wraps a model and counts its forward calls and the tokens it is fed (to check that a cache is used)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.calls = 0
        self.tokens_fed = 0

    def forward(self, input_ids, *args, **kwargs):
        self.calls += 1
        self.tokens_fed += input_ids.shape[-1]
        return self.model(input_ids, *args, **kwargs)
