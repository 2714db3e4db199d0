"""Find the exercise cells of a lesson and write their answer-key version (used by .ci/answers.py and
tests/test_exercise_cells.py).

The convention every lesson follows, which this module relies on and the tests enforce:
- a code cell calls ``check_NAME(ANSWER, ...)`` at top level, with ``check_NAME`` imported in the
  notebook from ``dsv3_edu.exercises.lNN_<slug>``;
- the same module has ``solution_NAME``: a function for a function exercise, or a function without
  arguments that returns the value for a value exercise;
- the same cell defines ``ANSWER``: ``def ANSWER(...)`` whose body raises NotImplementedError (a
  function exercise) or ``ANSWER = <blank>`` (a value exercise, e.g. ``answer = None``).
The answer key replaces that definition with the solution and leaves the rest of the cell as it is.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass

PREFIX = "dsv3_edu.exercises."


@dataclass
class Exercise:
    cell: int  # index in nb.cells
    module: str  # dsv3_edu.exercises.l01_attention
    name: str  # kv_cache_bytes: check_kv_cache_bytes / solution_kv_cache_bytes
    answer: str  # the learner's name in the cell: my_kv_cache_bytes or answer
    kind: str  # "function" or "value"
    lines: tuple[int, int]  # 1-based first and last line of the learner's definition in the cell
    extra_args: int  # arguments of the check call after the answer (notebook state, e.g. a tracker)

    @property
    def checker(self) -> str:
        return "check_" + self.name

    @property
    def solution(self) -> str:
        return "solution_" + self.name


class ConventionError(ValueError):
    """A cell calls a checker but does not follow the exercise convention; the message says how."""


def _source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _parse(source: str) -> ast.Module | None:
    # IPython magics are blanked, not dropped, so line numbers stay those of the cell.
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def checker_modules(nb) -> dict[str, str]:
    """{check_NAME: module} for every checker the notebook imports from dsv3_edu.exercises."""
    found = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or (tree := _parse(_source(cell))) is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PREFIX):
                for alias in node.names:
                    if alias.name.startswith("check_"):
                        found[alias.asname or alias.name] = node.module
    return found


def find_exercises(nb) -> list[Exercise]:
    """Every exercise cell of the notebook, in order; ConventionError if a checker call breaks the convention."""
    modules = checker_modules(nb)
    exercises = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or (tree := _parse(_source(cell))) is None:
            continue
        for stmt in tree.body:
            call = stmt.value if isinstance(stmt, ast.Expr) else None
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in modules):
                continue
            where = f"cell {index} ({call.func.id})"
            if not call.args or not isinstance(call.args[0], ast.Name):
                raise ConventionError(f"{where}: the first argument of the check call must be the learner's name")
            answer = call.args[0].id
            definition = next((node for node in tree.body if _defines(node, answer)), None)
            if definition is None:
                raise ConventionError(f"{where}: the cell must define `{answer}` (def {answer}(...) or {answer} = ...)")
            kind = "function" if isinstance(definition, ast.FunctionDef) else "value"
            exercises.append(Exercise(index, modules[call.func.id], call.func.id.removeprefix("check_"), answer, kind,
                                      (definition.lineno, definition.end_lineno), len(call.args) - 1))
    return exercises


def _defines(node, name: str) -> bool:
    if isinstance(node, ast.FunctionDef):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    return False


def answer_source(source: str, ex: Exercise, solution_fn) -> str:
    """The cell's source with the learner's definition replaced by the solution (shown and used)."""
    lines = source.splitlines()
    first, last = ex.lines
    shown = textwrap.indent(textwrap.dedent(inspect.getsource(solution_fn)).rstrip(), "#     ")
    key = [f"# Answer key: {ex.module}.{ex.solution}", "#", shown]
    if ex.kind == "function":
        key.append(f"from {ex.module} import {ex.solution} as {ex.answer}")
    else:
        key += [f"from {ex.module} import {ex.solution}", "", f"{ex.answer} = {ex.solution}()"]
    return "\n".join(lines[: first - 1] + key + lines[last:])
