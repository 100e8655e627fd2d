"""What a chapter prints about its own numbers: the bound a check proved, and figures measured live.

A chapter's stored outputs are compared with a fresh run on the reader's machine (`make test`). The
last bits of a floating-point sum depend on the CPU's kernels, the thread count and the library
versions, so a printed figure must say only what every machine reproduces:

- `below(difference, bound)` asserts a difference is under a bound and prints the bound
  (`< 1e-06`), which is what the check proves, instead of the difference's last digits;
- `live(value, lo, hi)` asserts a figure measured in a live run (a loss, an accuracy) lies in the
  range the prose claims and prints it as `≈0.36`. The comparison of stored outputs replaces every
  `≈<number>` by a placeholder (`tests/nbval_sanitize.cfg`), so the figure is shown but not
  compared; the assertion is what the test checks;
- `check({claim: holds, ...})` prints each claim the prose makes about a live run and fails if one
  does not hold: the lines are the same wherever the claims are true.

`html_table(header, rows)` shows a table, `benchmark_results(name)` reads what a script in
`benchmarks/` measured (found from the working directory: a chapter runs in book/), and
`ci(record, key)` writes one of its values with its interval (bias-corrected on request).
"""

import json
import math
from pathlib import Path

import torch

from diffusion_notes.evaluation.metrics import bias_corrected_interval


def below(difference, bound: float) -> str:
    """`'< 1e-06'` after checking that `difference` (a number, or a tensor's largest |entry|) is under `bound`."""
    if isinstance(difference, torch.Tensor):
        difference = difference.detach().float().abs().max()
    d = float(difference)
    if not abs(d) < bound:  # also catches NaN
        raise AssertionError(f"difference {d:.3e} is not below {bound:.0e}")
    return f"< {bound:g}"


def live(value, lo: float, hi: float, fmt: str = ".2f") -> str:
    """`'≈0.36'` after checking that a live run's figure lies in [lo, hi]: shown, asserted, not compared."""
    v = float(value)  # a Python or NumPy number, or a one-element tensor
    if math.isnan(v) or not lo <= v <= hi:
        raise AssertionError(f"measured {v:{fmt}}, outside the expected range [{lo}, {hi}]")
    return f"≈{v:{fmt}}"


def check(claims: dict[str, bool]) -> None:
    """Print each claim the prose makes about a live run, then fail if any does not hold.

    The printed lines are the same on every machine where the claims hold, so they are what the
    stored output records; the figures themselves are printed elsewhere, with `live` or in a
    table whose cell is not compared.
    """
    for claim, holds in claims.items():
        print(f"{'✓' if holds else '✗ FAILS:'} {claim}")
    failed = [claim for claim, holds in claims.items() if not holds]
    if failed:
        raise AssertionError("claims that do not hold on this run: " + "; ".join(failed))


RESULTS = Path("benchmarks") / "results"


def results_folder(start=None) -> Path:
    """The repository's benchmarks/results, looked for in `start` (default: the working directory) and its parents.

    A chapter runs in book/ (Jupyter Book, `make execute`, nbval and JupyterLab all start its kernel
    there), the tests and the benchmarks in the repository's root: both find the same folder.
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / RESULTS).is_dir():
            return folder / RESULTS
    raise FileNotFoundError(f"no {RESULTS} in {here} or above it: the benchmarks' results ship with the "
                            "repository, so run the chapter from a clone of it")


def book_file(name: str, start=None) -> Path:
    """A file of the book's folder (book/<name>), found from `start` (default: the working directory) or above it.

    The same from book/, where a chapter's kernel starts, and from the repository's root.
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "book" / name).exists():
            return folder / "book" / name
    raise FileNotFoundError(f"no book/{name} in {here} or above it: run the chapter from a clone of the repository")


def benchmark_results(name: str, folder=None) -> dict:
    """The JSON that benchmarks/<name>.py wrote: <folder>/<name>.json, `folder` by default `results_folder()`."""
    path = (Path(folder) if folder is not None else results_folder()) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results {path}: run python benchmarks/{name}.py in the repository")
    return json.loads(path.read_text())


def ci(record: dict, key: str = "mean", fmt: str = ".2f", bias_corrected: bool = False) -> str:
    """`'0.97 [0.95, 0.99]'`: record[key] and its 95% interval, as the benchmarks write them.

    The interval is record[key + "_ci"], or record["ci"] for the key "mean" (`{"mean": m, "ci": [lo, hi]}`).
    `bias_corrected=True` moves the stored percentile interval by the bootstrap's estimate of the bias
    (`evaluation.metrics.bias_corrected_interval`), for a statistic biased in small samples such as the
    Fréchet distance, whose percentile interval can miss its own value.
    """
    interval_key = "ci" if key == "mean" else f"{key}_ci"
    if key not in record or interval_key not in record:
        raise KeyError(f"the record needs {key!r} and {interval_key!r}, it has {sorted(record)}")
    lo, hi = record[interval_key]
    if bias_corrected:
        lo, hi = bias_corrected_interval(record[key], (lo, hi))
    return f"{record[key]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def html_table(header: list, rows: list[list]):
    """A small HTML table (rendered the same in JupyterLab and on the book's static pages).

    Cells are written as given, so a cell may hold inline HTML (<b>, <br>).
    """
    from IPython.display import HTML

    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells, got lengths {sorted({len(r) for r in rows})}")

    def cells(row, tag):
        return "".join(f"<{tag}>{c}</{tag}>" for c in row)

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return HTML(f"<table><thead><tr>{cells(header, 'th')}</tr></thead><tbody>{body}</tbody></table>")
