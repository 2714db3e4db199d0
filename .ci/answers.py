"""The answer key (called by `make answers`): every lesson with each exercise cell filled with its solution,
executed, written to build/answers/. Fails unless every exercise cell then prints a line starting "Correct".

Usage: python .ci/answers.py [NOTEBOOK ...]   (default: every notebooks/NN_*.ipynb)
Run it through `make answers` so the environment matches CI (one BLAS thread, the same cell names).
Exercise cells are found by convention (see .ci/exercise_cells.py); the recorded notebooks are not touched.
Cells marked `# NBVAL_SKIP` (reruns of long training or benchmarks) are not executed, as under nbval.
"""

from __future__ import annotations

import importlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exercise_cells import answer_source, find_exercises  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "answers"


def stdout_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


def answer_key(path: Path) -> tuple[str, int, list[str], float]:
    """(lesson, exercises, problems, seconds); writes OUT/<lesson>.ipynb."""
    nb = nbformat.read(path, as_version=4)
    exercises = find_exercises(nb)
    for ex in exercises:
        cell = nb.cells[ex.cell]
        solution = getattr(importlib.import_module(ex.module), ex.solution)
        cell.source = answer_source(cell.source, ex, solution)
        cell.metadata.setdefault("tags", []).append("answer-key")
    skipped = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "NBVAL_SKIP" in cell.source:
            skipped[i], cell.source = cell.source, "# NBVAL_SKIP: not run for the answer key"
    start = time.perf_counter()
    problems = []
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as err:  # a cell raised: report which, keep going with the other lessons
        problems.append(f"execution stopped: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}")
    for i, source in skipped.items():
        nb.cells[i].source, nb.cells[i].outputs = source, []
    for ex in exercises:
        printed = stdout_of(nb.cells[ex.cell])
        if not any(line.startswith("Correct") for line in printed.splitlines()):  # a cell may print a menu first
            problems.append(f"cell {ex.cell} ({ex.checker}) printed: {printed.strip()[:200] or '(nothing)'}")
    nb.metadata.pop("widgets", None)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / (path.name + ".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(OUT / path.name)
    return path.name, len(exercises), problems, time.perf_counter() - start


def main() -> int:
    paths = [Path(p).resolve() for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    failed, total = 0, 0
    with ProcessPoolExecutor(max_workers=2) as pool:
        for name, count, problems, seconds in pool.map(answer_key, paths):
            total += count
            print(f"{seconds:6.1f} s  {name}: {count} exercises, "
                  f"{'all correct' if not problems else f'{len(problems)} problem(s)'}")
            for problem in problems:
                print(f"         {problem}")
            failed += bool(problems)
    rel = OUT.relative_to(ROOT)
    print(f"answers: {len(paths)} lessons, {total} exercises solved, in {rel}/"
          + (f"; {failed} lesson(s) with problems" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
