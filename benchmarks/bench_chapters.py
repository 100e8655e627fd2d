"""How long does each chapter take to execute? Prints seconds per chapter against its budget.

The budget is 60 s per chapter on the 2-core reference machine (the book's target),
and the whole `make test` has to stay under 25 minutes as chapters are added.
As a reference measured in the same run, an empty notebook's execution (kernel
start-up and shut-down) is timed too, and each chapter is given as a ratio to it.

Run: python benchmarks/bench_chapters.py [book/01_ddpm.ipynb ...]
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BUDGET_S = 60.0
ROOT = Path(__file__).resolve().parents[1]


def execute_seconds(nb: nbformat.NotebookNode) -> float:
    start = time.perf_counter()
    resources = {"metadata": {"path": str(ROOT / "book")}}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources).execute()
    return time.perf_counter() - start


def main(paths: list[str]) -> None:
    chapters = [Path(p) for p in paths] or sorted((ROOT / "book").glob("*.ipynb"))
    empty_nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    empty = min(execute_seconds(empty_nb) for _ in range(2))  # the first start also warms the disk cache
    print(f"{'empty notebook (reference)':<32}{empty:7.1f} s")
    total = 0.0
    for path in chapters:
        seconds = execute_seconds(nbformat.read(path, as_version=4))
        total += seconds
        verdict = "ok" if seconds <= BUDGET_S else "OVER BUDGET"
        print(f"{path.name:<32}{seconds:7.1f} s  {seconds / empty:5.1f}x reference  "
              f"{seconds / BUDGET_S:4.0%} of {BUDGET_S:.0f} s  {verdict}")
    print(f"{'all chapters':<32}{total:7.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
