"""Lesson 02 exercises: rotate one vector, port interleaved weights to half-split code, YaRN's correction
range, and which pairs YaRN stretches.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong, or "Correct: ...".
It returns nothing (so a notebook cell echoes nothing) and never raises on a stub.
``solution_xxx`` is one answer.
"""

from __future__ import annotations

import math

import torch

from ..rope import apply_rope, deinterleave, yarn_correction_range
from ._common import NOT_DONE as _NOT_DONE
from ._common import as_tensor, checker, close
from ._common import call_learner as _call


def _close_rope(a: torch.Tensor, b: torch.Tensor) -> bool:
    return close(a, b, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Exercise 1: rotate one vector, interleaved pairs
# ----------------------------------------------------------------------------------------------


def _rotate(x, m, base, *, pairs="interleaved", sign=1.0, exponent=2.0, first=0, layout="interleaved"):
    """Reference rotation and its typical wrong variants (pairing, direction, frequencies, output layout)."""
    x = x.double()
    R = x.shape[-1]
    i = torch.arange(first, first + R // 2, dtype=torch.float64)
    angle = sign * m * base ** (-exponent * i / R)  # (R/2,)
    cos, sin = angle.cos(), angle.sin()
    if pairs == "interleaved":
        a, b = x[0::2], x[1::2]
    else:
        a, b = x[: R // 2], x[R // 2 :]
    ra, rb = a * cos - b * sin, b * cos + a * sin
    if pairs == "half" or layout == "split":
        return torch.cat((ra, rb))
    return torch.stack((ra, rb), dim=-1).flatten()


def solution_rope_vector(x, m, base=10000.0):
    """x (R,) at position m -> (R,): pair (x_2i, x_2i+1) turned by m * theta_i, theta_i = base^(-2i/R)."""
    R = x.shape[-1]
    theta = base ** (-torch.arange(0, R, 2, dtype=torch.float64) / R)  # (R/2,)
    cos, sin = (m * theta).cos(), (m * theta).sin()
    x_even, x_odd = x[0::2].double(), x[1::2].double()  # first and second element of every pair
    out = torch.stack((x_even * cos - x_odd * sin, x_odd * cos + x_even * sin), dim=-1)  # (R/2, 2)
    return out.flatten().to(x.dtype)  # (R,), the interleaved layout kept


_ROPE_CASES = ((8, 0, 10000.0), (8, 3, 10000.0), (6, 7, 100.0), (8, 1000, 10000.0))  # (R, m, base)
_ROPE_MISTAKES = (
    (dict(pairs="half"), "you paired x_i with x_{i+R/2} (half-split, Llama's rotate_half). DeepSeek pairs "
                         "neighbours: (x_0, x_1), (x_2, x_3), ... -- use x[0::2] and x[1::2]"),
    (dict(layout="split"), "the rotation is right, but the output is [all first elements, all second elements] "
                           "(transformers' layout). Keep the interleaved layout: out[0::2] and out[1::2], or "
                           "torch.stack((a, b), dim=-1).flatten()"),
    (dict(sign=-1.0), "you rotated the wrong way (clockwise). The first element of a pair becomes "
                      "x_2i cos - x_2i+1 sin, the second x_2i+1 cos + x_2i sin"),
    (dict(exponent=1.0), "wrong frequencies: theta_i = base^(-2i/R) for pair i = 0..R/2-1 (you used base^(-i/R)). "
                         "Equivalently base^(-j/R) for the even dims j = 0, 2, 4, ..."),
    (dict(exponent=-2.0), "wrong frequencies: theta_i = base^(-2i/R) falls from 1 (pair 0) towards 1/base; "
                          "yours grow: did you drop the minus sign?"),
    (dict(first=1), "pair 0 must have theta_0 = base^0 = 1: count pairs from i = 0, not 1"),
)


@checker
def check_rope_vector(fn) -> None:
    """fn(x (R,), m, base) -> x rotated as DeepSeek-V3 does: interleaved pairs, theta_i = base^(-2i/R)."""
    gen = torch.Generator().manual_seed(0)
    for R, m, base in _ROPE_CASES:
        x = torch.randn(R, generator=gen)
        want = _rotate(x, m, base)
        got = _call(fn, x.clone(), m, base, hint="x is a 1-D tensor of R values; m an int; base a float.")
        if got is _NOT_DONE:
            return
        got = as_tensor(got, want.shape, "the rotated vector: (R,), like x")
        if got is None:
            return
        if _close_rope(got, want):
            continue
        where = f"For R={R}, m={m}, base={base:g}"
        if m and _close_rope(got, x):
            print(f"{where}: you returned x unchanged; rotate pair i by the angle m * theta_i.")
            return
        for variant, text in _ROPE_MISTAKES:
            if _close_rope(got, _rotate(x, m, base, **variant)):
                print(f"{where}: {text}.")
                return
        if not math.isclose(got.norm().item(), x.norm().item(), rel_tol=1e-4):
            print(f"{where}: a rotation keeps the length of the vector: |x| = {x.norm():.4f}, yours "
                  f"{got.norm():.4f}. Each pair must be multiplied by [[cos, -sin], [sin, cos]].")
            return
        if m == 0:
            print(f"{where}: at position 0 every angle is 0, so x must come back unchanged; yours changed.")
            return
        print(f"{where}: expected {[round(v, 4) for v in want.tolist()]}, got {[round(v, 4) for v in got.tolist()]}.")
        return
    print("Correct: pair (x_2i, x_2i+1) turned by m * base^(-2i/R); the same numbers as "
          "dsv3_edu.rope.apply_rope and the official code's complex multiply.")


# ----------------------------------------------------------------------------------------------
# Exercise 2: interleaved checkpoint weights for half-split code
# ----------------------------------------------------------------------------------------------


def solution_half_split_weights(w):
    """w (R, d_in): rope rows trained with interleaved pairs -> rows for half-split (rotate_half) code.

    Pair i is rows (2i, 2i+1); half-split code pairs rows (i, i + R/2). Put rows 0, 2, 4, ... first,
    then 1, 3, 5, ...: that is ``deinterleave`` along the rows.
    """
    return deinterleave(w, dim=0)


def _scores(w_q, w_k, h, interleaved):
    """(T, T) rope scores of hidden states h (T, d) with rope rows w_q, w_k (R, d), positions 0..T-1."""
    R = w_q.shape[0]
    T = h.shape[0]
    theta = 10000.0 ** (-torch.arange(0, R, 2, dtype=torch.float64) / R)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * theta  # (T, R/2)
    cos, sin = angles.cos(), angles.sin()
    q = apply_rope(h @ w_q.T, cos, sin, interleaved)
    k = apply_rope(h @ w_k.T, cos, sin, interleaved)
    return q @ k.T


@checker
def check_half_split_weights(fn) -> None:
    """fn(w (R, d_in)) -> (R, d_in) such that half-split RoPE on the new rows gives the scores that
    interleaved RoPE gives on the old ones (apply it to both W^QR and W^KR)."""
    gen = torch.Generator().manual_seed(0)
    R, d, T = 8, 12, 5
    w_q = torch.randn(R, d, generator=gen, dtype=torch.float64)
    w_k = torch.randn(R, d, generator=gen, dtype=torch.float64)
    h = torch.randn(T, d, generator=gen, dtype=torch.float64)
    new = []
    for w in (w_q, w_k):
        got = _call(fn, w.clone(), hint="w is (R, d_in), the rope rows of a projection (nn.Linear weight layout).")
        if got is _NOT_DONE:
            return
        got = as_tensor(got, w.shape, "the same rows of w, reordered: (R, d_in)")
        if got is None:
            return
        new.append(got)
    want = _scores(w_q, w_k, h, interleaved=True)
    if close(_scores(new[0], new[1], h, interleaved=False), want, rtol=1e-5, atol=1e-5):
        print(f"Correct: rows (0, 2, 4, 6 | 1, 3, 5, 7) of an R={R} rope block. Half-split code now gives the "
              "scores the interleaved checkpoint was trained with (to float rounding).")
        return
    diff = (_scores(new[0], new[1], h, interleaved=False) - want).abs().max().item()
    got = new[0]
    if torch.equal(got, w_q):
        print(f"The rows are unchanged, so half-split code pairs rows i and i+R/2, which were never trained to "
              f"rotate together: scores differ by up to {diff:.2f}. Put rows 0, 2, 4, ... first, then 1, 3, 5, ...")
    elif torch.equal(got, deinterleave(w_q, dim=1)):
        print("You reordered the columns (the inputs). The rope dims are the ROWS of the (out, in) weight: "
              "reorder along dim 0.")
    elif torch.equal(got, w_q[torch.arange(R).view(2, R // 2).T.flatten()]):
        print("That is the inverse permutation (half-split -> interleaved: rows 0, R/2, 1, R/2+1, ...). "
              "Half-split code needs rows 0, 2, 4, ... first, then 1, 3, 5, ...")
    elif sorted(got.sum(1).tolist()) != sorted(w_q.sum(1).tolist()):
        print("The new rows are not the old rows reordered: only the order of the rows may change.")
    else:
        print(f"The rows are reordered, but not into half-split pairs: scores differ by up to {diff:.2f}. "
              "Half-split pair i is (row i, row i+R/2); it must hold what interleaved pair i held, rows 2i, 2i+1.")


# ----------------------------------------------------------------------------------------------
# Exercise 3: YaRN's correction range
# ----------------------------------------------------------------------------------------------


def solution_correction_range(beta_fast, beta_slow, dim, base, original_max):
    """(low, high): pair i turns original_max / (2 pi base^(2i/dim)) times over the original context;
    solve for the i that turns beta times, floor the fast bound, ceil the slow one, clamp to [0, dim-1]."""

    def pair_for(turns):
        return dim * math.log(original_max / (2 * math.pi * turns)) / (2 * math.log(base))

    return max(math.floor(pair_for(beta_fast)), 0), min(math.ceil(pair_for(beta_slow)), dim - 1)


_RANGE_CASES = (  # (beta_fast, beta_slow, dim, base, original_max)
    (32, 1, 64, 10000.0, 4096),  # DeepSeek-V3: (10, 23)
    (32, 1, 128, 500000.0, 8192),  # a Llama-3-like rope: (18, 35)
    (32, 1, 64, 10000.0, 128),  # a short original context: beta_fast's pair is negative -> 0
    (32, 1, 16, 10000.0, 10**9),  # a huge one: beta_slow's pair is past dim - 1 -> 15
)


def _raw_range(bf, bs, dim, base, L, two_pi=True, half=False):
    width = dim / 2 if half else dim
    c = 2 * math.pi if two_pi else 1.0
    return tuple(width * math.log(L / (c * b)) / (2 * math.log(base)) for b in (bf, bs))


@checker
def check_correction_range(fn) -> None:
    """fn(beta_fast, beta_slow, dim, base, original_max) -> (low, high), two ints."""
    for case in _RANGE_CASES:
        want = solution_correction_range(*case)
        got = _call(fn, *case)
        if got is _NOT_DONE:
            return
        where = "For (beta_fast, beta_slow, dim, base, original_max) = ({}, {}, {}, {:g}, {:,})".format(*case)
        try:
            low, high = got
        except (TypeError, ValueError):
            print(f"Return two numbers (low, high), not {got!r}.")
            return
        low, high = (v.item() if isinstance(v, torch.Tensor) else v for v in (low, high))
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (low, high)):
            print(f"Return two numbers (low, high), not {got!r}.")
            return
        if (low, high) == want:
            continue
        raw_fast, raw_slow = _raw_range(*case)
        print(f"{where}: expected {want}, got {got}.")
        if (high, low) == want:
            print("Hint: swapped. beta_fast (32 turns) belongs to faster pairs, so it gives the SMALLER index: "
                  "low comes from beta_fast, high from beta_slow.")
        elif abs(low - raw_fast) < 1e-6 and abs(high - raw_slow) < 1e-6:
            print("Hint: the formula is right; now round outwards to whole pair indices: floor the low bound, "
                  "ceil the high one (as the official code and transformers do).")
        elif (low, high) in ((round(raw_fast), round(raw_slow)), (math.floor(raw_fast), math.floor(raw_slow)),
                             (math.ceil(raw_fast), math.ceil(raw_slow))):
            print(f"Hint: the unrounded bounds are {raw_fast:.2f} and {raw_slow:.2f}: floor the low one and ceil "
                  "the high one, so the ramp covers every pair that needs it.")
        elif (low, high) == (math.floor(raw_fast), math.ceil(raw_slow)):
            print(f"Hint: clamp to valid indices: low = max(low, 0), high = min(high, dim - 1) "
                  f"(here the unrounded bounds are {raw_fast:.2f} and {raw_slow:.2f}).")
        elif (low, high) == tuple(f(r) for f, r in zip((math.floor, math.ceil), _raw_range(*case, two_pi=False))):
            print("Hint: a turn is 2 pi radians. Pair i turns original_max * theta_i / (2 pi) times, so solve "
                  "original_max / (2 pi base^(2i/dim)) = beta.")
        elif (low, high) == tuple(f(r) for f, r in zip((math.floor, math.ceil), _raw_range(*case, half=True))):
            print("Hint: the formula has the full rope width dim (theta_i = base^(-2i/dim)), not the number "
                  "of pairs dim/2.")
        else:
            print("Hint: pair i turns original_max / (2 pi base^(2i/dim)) times; solve for i at beta_fast and at "
                  "beta_slow: i = dim * ln(original_max / (2 pi beta)) / (2 ln base).")
        return
    print("Correct: DeepSeek-V3's released config gives (10, 23): pairs up to 10 turn more than 32 times in "
          "4,096 tokens, pairs from 23 on less than once.")


# ----------------------------------------------------------------------------------------------
# Exercise 4: which pairs does YaRN stretch?
# ----------------------------------------------------------------------------------------------

PAIR_QUESTION = dict(beta_fast=32, beta_slow=1, dim=128, base=500000.0, original_max=8192, factor=16)


def solution_pair_treatment() -> dict[str, list[int]]:
    """For PAIR_QUESTION: ramp_i = clamp((i - low) / (high - low), 0, 1); 0 kept, 1 interpolated."""
    q = PAIR_QUESTION
    low, high = yarn_correction_range(q["beta_fast"], q["beta_slow"], q["dim"], q["base"], q["original_max"])
    pairs = range(q["dim"] // 2)
    return {
        "kept": [i for i in pairs if i <= low],
        "blended": [i for i in pairs if low < i < high],
        "interpolated": [i for i in pairs if i >= high],
    }


def _runs(indices) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, indices = [], sorted(indices)
    start = prev = None
    for i in indices + [None]:
        if start is None:
            start = prev = i
        elif i is not None and i == prev + 1:
            prev = i
        else:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = i
    return ", ".join(out) if out else "none"


@checker
def check_pair_treatment(answer) -> None:
    """answer = {"kept": [...], "blended": [...], "interpolated": [...]} for PAIR_QUESTION's rope."""
    q = PAIR_QUESTION
    n = q["dim"] // 2
    want = {k: set(v) for k, v in solution_pair_treatment().items()}
    if answer is None:
        print('Not done yet: set answer = {"kept": [...], "blended": [...], "interpolated": [...]} '
              "(lists or ranges of pair indices), then run this cell again.")
        return
    if not isinstance(answer, dict) or set(answer) != set(want):
        print('answer must be a dict with exactly the keys "kept", "blended" and "interpolated", each a list or '
              f"range of pair indices, e.g. range(0, 5). Got {answer!r}.")
        return
    try:
        got = {k: {int(i) for i in v} for k, v in answer.items()}
    except (TypeError, ValueError):
        print("Each value must be a list or range of whole pair indices.")
        return
    everything = set().union(*got.values())
    if everything and min(everything) < 0:
        print(f"Pair indices run from 0 to {n - 1}; you listed {_runs(i for i in everything if i < 0)}.")
        return
    if everything and max(everything) >= n:
        print(f"Rope dim {q['dim']} has {n} pairs, 0 to {n - 1}; you listed {_runs(i for i in everything if i >= n)}. "
              "Count pairs, not dims.")
        return
    missing = set(range(n)) - everything
    twice = {i for i in range(n) if sum(i in v for v in got.values()) > 1}
    if missing or twice:
        print("Every pair belongs to exactly one group."
              + (f" Missing: {_runs(missing)}." if missing else "")
              + (f" In two groups: {_runs(twice)}." if twice else ""))
        return
    if got == want:
        print(f"Correct: low = {min(want['blended']) - 1}, high = {max(want['blended']) + 1}. Pairs 0-18 turn more "
              "than 32 times in 8,192 tokens and are kept; pairs 35-63 turn less than once and are divided by 16. "
              "The factor decides how much, not which.")
        return
    if got["kept"] == want["interpolated"] or got["interpolated"] == want["kept"]:
        print("Kept and interpolated are swapped. Fast pairs (small i, many turns in training) are kept; slow "
              "pairs (large i, less than one turn) are interpolated.")
    elif got["kept"] == set(range(11)) and got["interpolated"] == set(range(23, n)):
        print("Those are DeepSeek-V3's bounds (rope dim 64, base 10,000, 4,096 tokens). Recompute low and high "
              "for this rope: dim 128, base 500,000, original context 8,192.")
    elif got["kept"] == want["kept"] - {max(want["kept"])}:
        print(f"Pair low = {max(want['kept'])} has ramp (low - low) / (high - low) = 0: it is kept, not blended.")
    elif got["interpolated"] == want["interpolated"] - {min(want["interpolated"])}:
        print(f"Pair high = {min(want['interpolated'])} has ramp (high - low) / (high - low) = 1: it is fully "
              "interpolated, not blended.")
    else:
        for group in ("kept", "blended", "interpolated"):
            if got[group] != want[group]:
                print(f'"{group}" should be pairs {_runs(want[group])}; you have {_runs(got[group])}. Compute low '
                      "and high with yarn_correction_range (or your exercise 3), then ramp_i = "
                      "clamp((i - low) / (high - low), 0, 1).")
                break
