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
