"""What every exercise checker shares: run the learner's function without letting it crash the notebook, read
its answer (a number, an int list, a tensor) or say plainly why it cannot be read, compare with one tolerance,
and find the typical mistake that reproduces every wrong answer.

Every message starts from what the learner returned; a checker prints "Correct" only for finite values.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

NOT_DONE = object()  # returned by call_learner when the learner's function did not give an answer
RETURNED_NONE = "Your function returned None: did you forget `return`?"


def call_learner(fn, *args, hint: str = "", none_ok: bool = False):
    """Run the learner's function and return its answer, or NOT_DONE after a short explanation (and ``hint``)
    instead of a traceback: the function is a stub, raises, or returns None (unless ``none_ok``: None is an
    answer)."""
    if not callable(fn):
        print(f"Pass your function itself (its name, without parentheses), not {type(fn).__name__}.")
        return NOT_DONE
    try:
        got = fn(*args)
        return NOT_DONE if not none_ok and returned_none(got) else got
    except NotImplementedError:
        print("Not done yet: replace `raise NotImplementedError(...)` with your code, then run this cell again.")
    except Exception as err:  # the learner's code: report, do not crash the notebook
        print(f"Your function raised {type(err).__name__}: {err}")
        if hint:
            print("Hint: " + hint)
    return NOT_DONE


def checker(check: Callable[..., None]) -> Callable[..., None]:
    """Wrap a checker so that no answer can crash it: anything it did not foresee is explained, not raised."""

    @functools.wraps(check)
    def safe(*args, **kwargs) -> None:
        try:
            check(*args, **kwargs)
        except Exception as err:  # an answer of a kind the checker's own diagnosis did not expect
            print(f"Your answer could not be checked ({type(err).__name__}: {err}). Return the type and shape "
                  f"the exercise asks for: {(check.__doc__ or '').strip().splitlines()[0] if check.__doc__ else ''}")
        return None

    return safe


def returned_none(got) -> bool:
    """True (after saying so) if the learner's function returned None."""
    if got is None:
        print(RETURNED_NONE)
        return True
    return False


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
    """The learner's answer as a finite int or float, or None after printing why it is not one."""
    if returned_none(got):
        return None
    value = _number(got)
    if value is None:
        print(f"Return a number, not {type(got).__name__}" + (f" of shape {tuple(got.shape)}." if hasattr(got, "shape")
                                                             else "."))
        return None
    if not math.isfinite(value):
        print(f"Your answer is {value}, not a finite number: look for a division by zero or an overflow.")
        return None
    return value


def as_int(x) -> int | None:
    """An int from an int, a whole float or a one-element integer tensor; None otherwise (no message)."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_floating_point():
        return int(x)
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return int(x)
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return None


def as_int_list(x) -> list[int] | None:
    """A list of ints from a list, tuple or range of ints (or one-element integer tensors), or a 0-D/1-D integer
    tensor; None if it is none of those (no message: the caller says what it expected)."""
    if isinstance(x, torch.Tensor):
        if x.dim() > 1 or x.is_floating_point() or x.is_complex():
            return None
        return [int(v) for v in x.reshape(-1).tolist()]
    if isinstance(x, (list, tuple, range)) and all(
        (isinstance(v, numbers.Integral) and not isinstance(v, bool))
        or (isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point()) for v in x):
        return [int(v) for v in x]
    return None


def as_tensor(got, shape: Sequence[int] | None = None, what: str = "the result", numbers_ok: bool = False):
    """The learner's answer as a tensor (detached, its own dtype), or None after printing why it cannot be used:
    None, not a tensor, the wrong shape, or NaN/inf values. ``numbers_ok``: a plain number becomes a 0-D tensor."""
    if returned_none(got):
        return None
    if numbers_ok and _number(got) is not None and not isinstance(got, torch.Tensor):
        got = torch.tensor(float(got))
    if not isinstance(got, torch.Tensor):
        print(f"Return {what} as a torch.Tensor, not {type(got).__name__}.")
        return None
    if shape is not None and tuple(got.shape) != tuple(shape):
        print(f"Expected shape {tuple(shape)} ({what}), got {tuple(got.shape)}.")
        return None
    got = got.detach()
    if (got.is_floating_point() or got.is_complex()) and not bool(torch.isfinite(got).all()):
        bad = int((~torch.isfinite(got)).sum())
        print(f"{what[0].upper() + what[1:]} holds {bad} NaN or inf value{'s' if bad != 1 else ''} of {got.numel()}: "
              "look for a division by zero, a log of 0, or -inf that reaches a softmax row with nothing left.")
        return None
    return got


def as_scalar(got, what: str = "the result (a number)"):
    """The learner's answer as one finite float (a number or a one-element tensor), or None after printing why not."""
    got = as_tensor(got, what=what, numbers_ok=True)
    if got is None:
        return None
    if got.numel() != 1:
        print(f"Return one number ({what}), got a tensor of shape {tuple(got.shape)}.")
        return None
    return float(got)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Same shape and equal within |a - b| <= atol + rtol |b|, compared in float64 (NaN is never close)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    return bool(torch.allclose(a.detach().double(), b.detach().double(), rtol=rtol, atol=atol))


def same_number(a, b) -> bool:
    """Equal ints, or floats equal to 1e-9 relative."""
    return a == b or (isinstance(a, float) or isinstance(b, float)) and math.isclose(a, b, rel_tol=1e-9)


def run_cases(fn, cases: Sequence[tuple], solution: Callable[..., Any], hint: str = ""):
    """[(case, got, want)] for number-valued exercises, or None (after printing why) when the function is a stub,
    raises, or returns something that is not a finite number."""
    results = []
    for case in cases:
        got = call_learner(fn, *case, hint=hint)
        if got is NOT_DONE or (value := as_number(got)) is None:
            return None
        results.append((case, value, solution(*case)))
    return results


def diagnose(results, mistakes, same: Callable[[Any, Any], bool] = same_number) -> str | None:
    """The mistake table: the explanation of the first typical mistake ``wrong(*case)`` that reproduces every
    answer (all cases, not one), if any. ``text`` is a string or a function of the results; ``same`` compares
    an answer with a mistake's output (numbers by default; ``==`` for token lists)."""
    for wrong, text in mistakes:
        if all(same(got, wrong(*case)) for case, got, _ in results):
            return text if isinstance(text, str) else text(results)
    return None


def what_differs(results, describe: Callable[[Any], str] = repr, limit: int = 3,
                 same: Callable[[Any, Any], bool] = same_number) -> str:
    """What a checker says when no known mistake reproduces the answers: the cases that differ, with the
    expected and the returned value (at most ``limit`` of them)."""
    rows = [f"  {describe(case)}: expected {want!r}, got {got!r}" for case, got, want in results
            if not same(got, want)]
    more = f"\n  ... and {len(rows) - limit} more" if len(rows) > limit else ""
    return "Not one of the usual mistakes; here is what differs:\n" + "\n".join(rows[:limit]) + more
