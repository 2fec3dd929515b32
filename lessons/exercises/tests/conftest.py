"""The `impl` fixture: the functions under test, from the reference, the stubs or a student's file.

Each test module sets LESSON = N; SCRATCH_LM_EXERCISE_IMPL picks the implementation ("reference" by
default, "stub", or a path). `python -m lessons.grade N` sets it to lessons/answers/lesson_N.py.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from lessons.exercises import IMPL_ENV, load_implementation


@pytest.fixture(scope="module")
def impl(request) -> SimpleNamespace:
    return load_implementation(request.module.LESSON, os.environ.get(IMPL_ENV, "reference"))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
