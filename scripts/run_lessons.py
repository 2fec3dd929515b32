"""Run the lesson notebooks top to bottom in a fresh kernel, print each one's time, and (with --store) save
their outputs in place, so that figures show in a repository browser.

    .venv/bin/python scripts/run_lessons.py                 # run every lesson, report times, change nothing
    .venv/bin/python scripts/run_lessons.py --store         # the same, then write the outputs into the notebooks
    .venv/bin/python scripts/run_lessons.py 05 07 --store   # only lessons whose file name starts with 05 or 07

A stored notebook carries in its metadata the SHA-256 of its code and markdown (`source_sha256`): the test suite
recomputes it, so a notebook edited after its outputs were stored fails until this script runs it again, and the
outputs a reader sees are always those of the current code. Figures are saved at a modest resolution (see
FIGURE_DPI) to keep the files small.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
CELL_TIMEOUT_S = 600
FIGURE_DPI = 72  # matplotlib's inline figures: about 30-80 KB each as PNG
METADATA_KEY = "scratch_lm"


def lesson_notebooks(prefixes: list[str] | None = None) -> list[Path]:
    paths = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in prefixes)]
    return paths


def source_sha256(nb: nbformat.NotebookNode) -> str:
    """Hash of every cell's type and source, in order (outputs and metadata excluded)."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        digest.update(cell.cell_type.encode() + b"\0" + cell.source.encode("utf-8") + b"\0")
    return digest.hexdigest()


def execute(path: Path) -> tuple[nbformat.NotebookNode, float]:
    """Run a copy of the notebook in a fresh kernel from the lessons folder; (executed notebook, seconds)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(LESSONS_DIR)}},
                            extra_arguments=[f"--InlineBackend.rc=figure.dpi={FIGURE_DPI}"])
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    return nb, time.perf_counter() - start


def store(path: Path, nb: nbformat.NotebookNode) -> None:
    nb.metadata[METADATA_KEY] = {"source_sha256": source_sha256(nb),
                                 "regenerated_by": "scripts/run_lessons.py --store"}
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lessons", nargs="*", help="file-name prefixes, e.g. 05 (default: every lesson)")
    parser.add_argument("--store", action="store_true", help="write the outputs into the notebooks")
    args = parser.parse_args(argv)
    paths = lesson_notebooks(args.lessons)
    if not paths:
        parser.error(f"no lesson notebook in {LESSONS_DIR} starts with {args.lessons}")
    total = 0.0
    for path in paths:
        nb, seconds = execute(path)
        total += seconds
        if args.store:
            store(path, nb)
        size = f", {path.stat().st_size / 1024:.0f} KB stored" if args.store else ""
        print(f"{path.name:40s} {seconds:6.1f} s{size}", flush=True)
    print(f"{'total':40s} {total:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
