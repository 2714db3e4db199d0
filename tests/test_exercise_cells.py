"""Every exercise cell of every lesson follows the convention the answer key relies on (.ci/exercise_cells.py):
its solution passes its checker, and the blank cell, as a learner first sees it, fails with "Not done yet"."""

import importlib
import json
from pathlib import Path

import pytest
from exercise_cells import answer_source, find_exercises

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CASES = [(path, ex) for path in LESSONS for ex in find_exercises(json.loads(path.read_text()))]


def test_every_lesson_has_exercises():
    per_lesson = {path.name: 0 for path in LESSONS}
    for path, _ in CASES:
        per_lesson[path.name] += 1
    assert all(count >= 2 for count in per_lesson.values()), per_lesson


def test_every_checker_call_is_an_exercise_cell():
    """A cell that calls check_*( but breaks the convention would be missing from the answer key."""
    for path in LESSONS:
        nb = json.loads(path.read_text())
        found = {ex.cell for ex in find_exercises(nb)}
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code" and "\ncheck_" in "\n" + "".join(cell["source"]):
                assert i in found, f"{path.name} cell {i} calls a checker but is not recognized as an exercise"


@pytest.mark.parametrize("path, ex", CASES, ids=[f"{p.stem[:2]}-{e.name}" for p, e in CASES])
def test_solution_passes_and_blank_fails(path, ex, capsys):
    module = importlib.import_module(ex.module)
    checker, solution = getattr(module, ex.checker), getattr(module, ex.solution)
    cell = "".join(json.loads(path.read_text())["cells"][ex.cell]["source"])
    # The answer key's cell compiles, and defines the learner's name from the solution.
    compile(answer_source(cell, ex, solution), f"{path.name} answer cell {ex.cell}", "exec")
    if ex.extra_args:
        pytest.skip("the checker needs notebook state; `make answers` runs it in the lesson")
    answer = solution if ex.kind == "function" else solution()
    assert checker(answer) is None
    assert capsys.readouterr().out.startswith("Correct"), f"{ex.solution} does not pass {ex.checker}"
    # The blank: the learner's definition exactly as the cell has it.
    first, last = ex.lines
    namespace = {k: v for k, v in vars(module).items() if not k.startswith("_")}
    exec("\n".join(cell.splitlines()[first - 1:last]), namespace)
    assert checker(namespace[ex.answer]) is None
    out = capsys.readouterr().out
    assert out.startswith("Not done yet"), f"{ex.checker} on the blank cell printed: {out[:200]}"
