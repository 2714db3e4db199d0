"""Shared by the exercise-checker tests: a learner's untouched stub, and running a checker."""


def stub(*args):
    raise NotImplementedError("your code here")


def run(capsys, checker, fn, *args):
    """(correct?, printed text) of ``checker(fn, *args)``; checkers print and return None."""
    assert checker(fn, *args) is None  # prints only: nothing for a notebook cell to echo
    out = capsys.readouterr().out
    return out.startswith("Correct"), out
