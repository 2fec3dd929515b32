"""Every lesson notebook executes cleanly from a fresh clone on CPU; every mechanism it derives in plain PyTorch
is checked against the package or transformers; stored outputs come from a run of the current code."""

from __future__ import annotations

import ast
import importlib.util
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

LESSONS_DIR = Path(__file__).resolve().parents[2] / "lessons"
NOTEBOOKS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300  # a lesson targets well under a minute on 2 CPU cores; this only catches a hang
MAX_STORED_BYTES = 1_500_000  # a notebook with its figures; larger means an image too big for a browser


def _run_lessons_module():
    path = Path(__file__).resolve().parents[2] / "scripts" / "run_lessons.py"
    spec = importlib.util.spec_from_file_location("run_lessons", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code(nb) -> str:
    """The notebook's Python, with IPython's %magics and !shell lines blanked (they are not Python)."""
    lines = [line for cell in nb.cells if cell.cell_type == "code" for line in cell.source.splitlines() + [""]]
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def test_the_course_has_its_notebooks():
    numbers = {int(path.name[:2]) for path in NOTEBOOKS}
    assert set(range(1, 10)) <= numbers, f"lesson notebooks found: {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_form(path):
    """Valid, a title cell first, and no exercise answer printed from the package's source."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# 课时{int(path.name[:2])}")
    assert "getsource(" not in _code(nb), "printing the package's source gives away the exercises' answers"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_derivation_is_checked(path):
    """Every lesson writes its mechanisms itself (functions or classes named my_* / My*), and each of them appears
    in an assert that holds it to the package or to transformers: derive, then verify."""
    tree = ast.parse(_code(nbformat.read(path, as_version=4)))
    derived = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))
               and (node.name.startswith("my_") or node.name.startswith("My"))}
    assert derived, f"{path.name} derives nothing: write the lesson's mechanism as my_* in plain PyTorch, then check it"
    asserted = {name.id for node in ast.walk(tree) if isinstance(node, ast.Assert)
                for name in ast.walk(node) if isinstance(name, ast.Name)}
    # a derivation may also be checked through a variable computed from it right before the assert
    assigned_from = {target.id: {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
                     for node in ast.walk(tree) if isinstance(node, ast.Assign)
                     for target in node.targets if isinstance(target, ast.Name)}
    reached = set(asserted)
    for name in asserted:
        reached |= assigned_from.get(name, set())
    unchecked = sorted(derived - reached)
    assert not unchecked, f"{path.name}: derived but never checked by an assert: {unchecked}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_come_from_the_current_code(path):
    """Either no outputs, or outputs stored by scripts/run_lessons.py --store from exactly these cells, in one run,
    without errors, and small enough to browse."""
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if all(not cell.outputs and cell.execution_count is None for cell in code):
        return
    stamp = nb.metadata.get("scratch_lm", {}).get("source_sha256")
    assert stamp == _run_lessons_module().source_sha256(nb), (
        f"{path.name} was edited after its outputs were stored: run `python scripts/run_lessons.py "
        f"{path.name[:2]} --store` (or clear the outputs)")
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "outputs of one full run"
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert path.stat().st_size < MAX_STORED_BYTES, f"{path.name}: {path.stat().st_size:,} bytes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, default_model_path):
    """Run every cell in a fresh kernel (this interpreter), in the lessons folder, as a student would."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(LESSONS_DIR)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    elapsed = time.perf_counter() - start
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors, errors
    print(f"{path.name}: {elapsed:.1f} s")
