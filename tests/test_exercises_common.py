"""Every exercise checker, fed what a hurried learner might give it, answers with an explanation: it never
raises, never prints "Correct" for None, NaN, inf, a wrong type, a wrong shape or a function that raises."""

import importlib
import inspect
import pkgutil

import pytest
import torch
from exercise_helpers import stub

import dsv3_edu.exercises as exercises
from dsv3_edu.exercises._common import as_int_list, as_number, as_tensor, close, diagnose, run_cases

CHECKERS = [
    (f"{info.name}.{name}", fn)
    for info in pkgutil.iter_modules(exercises.__path__) if info.name.startswith("l")
    for name, fn in inspect.getmembers(importlib.import_module(f"dsv3_edu.exercises.{info.name}"), inspect.isfunction)
    if name.startswith("check_")
]


def _raises(*args):
    raise ValueError("boom")


JUNK = {
    "None": None, "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "text": "forty-two",
    "int": 3, "negative ids": [-1, -2, -3], "two-element tensor": torch.tensor([1.0, 2.0]),
    "nan tensor": torch.full((2, 3), float("nan")), "0-d nan tensor": torch.tensor(float("nan")),
    "bool": True, "dict": {"a": 1},
}


def test_every_lesson_has_checkers():
    lessons = {name.split(".")[0] for name, _ in CHECKERS}
    assert {f"l{n:02d}" for n in range(11)} <= {lesson[:3] for lesson in lessons}


@pytest.mark.parametrize("name,check", CHECKERS, ids=[n for n, _ in CHECKERS])
def test_junk_is_explained_never_passed_never_raised(name, check, capsys):
    takes_fn = next(iter(inspect.signature(check).parameters)) == "fn"
    for label, value in JUNK.items():
        answer = (lambda *args, v=value: v) if takes_fn else value
        assert check(answer) is None, (name, label)
        out = capsys.readouterr().out
        assert out.strip(), (name, label)  # it says something
        assert not out.startswith("Correct"), (name, label, out)
    if takes_fn:
        assert check(_raises) is None
        out = capsys.readouterr().out
        assert "raised ValueError: boom" in out and not out.startswith("Correct")
        assert check(stub) is None
        assert capsys.readouterr().out.startswith("Not done yet")


def test_shared_readers(capsys):
    assert as_number(float("nan")) is None and "not a finite number" in capsys.readouterr().out
    assert as_number(None) is None and "forget `return`" in capsys.readouterr().out
    assert as_number(torch.tensor([1, 2])) is None and "shape (2,)" in capsys.readouterr().out
    assert as_number(torch.tensor(2.5)) == 2.5 and as_number(7) == 7
    assert as_tensor(torch.ones(2), (3,), "the scores") is None and "Expected shape (3,) (the scores)" in \
        capsys.readouterr().out
    assert as_tensor(torch.tensor([1.0, float("inf")]), (2,), "the scores") is None
    assert "The scores holds 1 NaN or inf value of 2" in capsys.readouterr().out
    assert as_tensor(2.0, numbers_ok=True).item() == 2.0
    assert as_int_list(torch.tensor([1, 2])) == [1, 2] and as_int_list((3, torch.tensor(4))) == [3, 4]
    assert as_int_list([1.5]) is None and as_int_list(torch.ones(2)) is None and as_int_list([True]) is None
    assert close(torch.tensor([1.0]), torch.tensor([1.0 + 1e-7])) and not close(torch.ones(2), torch.ones(3))
    assert not close(torch.tensor([float("nan")]), torch.tensor([float("nan")]))


def test_mistake_table(capsys):
    def solution(a, b):
        return a * b

    results = run_cases(lambda a, b: a * b / 2, [(2, 3), (4, 5)], solution)
    assert [r[1:] for r in results] == [(3.0, 6), (10.0, 20)]
    mistakes = [(lambda a, b: a + b, "added"), (lambda a, b: a * b / 2, lambda res: f"halved {len(res)}")]
    assert diagnose(results, mistakes) == "halved 2"
    assert diagnose(results, mistakes[:1]) is None
    assert run_cases(lambda a, b: float("nan"), [(1, 1)], solution) is None
    assert "not a finite number" in capsys.readouterr().out
