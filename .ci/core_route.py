"""Each lesson's core route runs on its own (called by `make core`): the lesson without the cells tagged
`deep-dive`, executed top to bottom, must raise no error. Also checks the tagging itself: every lesson
has both a core route and at least one deep dive, and each deep dive opens with its banner (a markdown
cell tagged `deep-dive` whose text starts with BANNER).

Usage: python .ci/core_route.py [NOTEBOOK ...]   (default: every notebooks/NN_*.ipynb)
Writes the executed core routes to build/core/ (for timing and reading); the notebooks are not touched.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "core"
TAG = "deep-dive"
BANNER = "> **Deep dive"  # e.g. "> **Deep dive (optional, 10 min):** what it adds. Skip it on the core route."


def is_deep(cell) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", [])


def tagging_problems(nb) -> list[str]:
    """What is wrong with a lesson's core/deep-dive tags (empty when all is well)."""
    problems = []
    deep = [is_deep(c) for c in nb.cells]
    if not any(deep):
        problems.append(f"no cell is tagged {TAG!r}")
    if all(deep) or not any(not d and c.cell_type == "code" for d, c in zip(deep, nb.cells)):
        problems.append("no core route: every code cell is a deep dive")
    for i, cell in enumerate(nb.cells):
        starts = deep[i] and (i == 0 or not deep[i - 1])
        if starts and not (cell.cell_type == "markdown" and cell.source.lstrip().startswith(BANNER)):
            problems.append(f"cell {i} starts a deep dive without its banner (a markdown cell starting {BANNER!r})")
    return problems


def run_core(path: Path) -> tuple[str, list[str], int, int, float]:
    nb = nbformat.read(path, as_version=4)
    problems = tagging_problems(nb)
    total = len(nb.cells)
    nb.cells = [c for c in nb.cells if not is_deep(c)]
    for cell in nb.cells:
        if cell.cell_type == "code" and "NBVAL_SKIP" in cell.source:
            cell.source = "# NBVAL_SKIP: not run on the core route check"
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as err:  # the core route needs something a deep dive defines, or a cell fails
        problems.append(f"the core route fails: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}")
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / (path.name + ".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(OUT / path.name)
    return path.name, problems, len(nb.cells), total, time.perf_counter() - start


def main() -> int:
    paths = [Path(p).resolve() for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    failed = 0
    with ProcessPoolExecutor(max_workers=2) as pool:
        for name, problems, core, total, seconds in pool.map(run_core, paths):
            print(f"{seconds:6.1f} s  {name}: core route {core} of {total} cells, "
                  f"{'ok' if not problems else f'{len(problems)} problem(s)'}")
            for problem in problems:
                print(f"         {problem}")
            failed += bool(problems)
    print(f"core routes: {len(paths)} lessons" + (f", {failed} with problems" if failed else ", all run on their own"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
