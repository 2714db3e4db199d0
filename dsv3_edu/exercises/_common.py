"""What every exercise checker shares: run the learner's function without letting it crash the notebook."""

from __future__ import annotations

import numbers

NOT_DONE = object()  # returned by call_learner when the learner's function did not give an answer


def call_learner(fn, *args, hint: str = ""):
    """Run the learner's function; print a short explanation (and ``hint``) instead of a traceback."""
    try:
        return fn(*args)
    except NotImplementedError:
        print("Not done yet: replace `raise NotImplementedError(...)` with your code, then run this cell again.")
    except Exception as err:  # the learner's code: report, do not crash the notebook
        print(f"Your function raised {type(err).__name__}: {err}")
        if hint:
            print("Hint: " + hint)
    return NOT_DONE


def _number(x):
    """int or float from a Python, numpy or one-element torch number; None otherwise (bools too)."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x)
    if hasattr(x, "numel") and x.numel() == 1:
        return _number(x.item())
    return None


def as_number(got):
    """The learner's answer as an int or float, or None after printing why it is not one."""
    if got is None:
        print("Your function returned None: did you forget `return`?")
        return None
    value = _number(got)
    if value is None:
        print(f"Return a number, not {type(got).__name__}.")
    return value
