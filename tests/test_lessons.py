"""Every lesson notebook executes cleanly from a fresh clone on CPU, and is committed without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
NOTEBOOKS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300  # a lesson targets well under a minute on 2 CPU cores; this only catches a hang


def test_the_course_has_its_notebooks():
    numbers = {int(path.name[:2]) for path in NOTEBOOKS}
    assert set(range(1, 10)) <= numbers, f"lesson notebooks found: {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    """No outputs or execution counts stored, a title cell first, and no model class of its own."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), (
        f"{path.name} has stored outputs: clear them (Jupyter: Edit > Clear All Outputs) before committing")
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# 课时{int(path.name[:2])}")
    source = "\n".join(cell.source for cell in code)
    assert "(nn.Module)" not in source, "a lesson imports the package's model; it never defines its own copy"


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
