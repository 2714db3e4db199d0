"""What every exercise checker shares: run the learner's function without letting it crash the notebook."""

from __future__ import annotations

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
