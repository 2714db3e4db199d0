"""Lesson 02: plausible wrong attempts, each with the words its diagnosis must contain."""

import math

import pytest
import torch
from exercise_helpers import run

from dsv3_edu.exercises import l02_rope as ex


def _turn(x, m, base, exponent_step, pairs, sign=1):
    R = x.shape[-1]
    theta = base ** (-torch.arange(0, R, exponent_step, dtype=torch.float64)[: R // 2] / R)
    cos, sin = (m * theta).cos(), sign * (m * theta).sin()
    a, b = pairs(x.double())
    out = (a * cos - b * sin, b * cos + a * sin)
    return (torch.cat(out) if pairs is _halves else torch.stack(out, -1).flatten()).to(x.dtype)


def _neighbours(x):
    return x[0::2], x[1::2]


def _halves(x):
    return x[: x.shape[-1] // 2], x[x.shape[-1] // 2:]


def _bound(beta, dim, base, original):
    return dim * math.log(original / (2 * math.pi * beta)) / (2 * math.log(base))


SOL = ex.solution_pair_treatment()
ATTEMPTS = [  # checker, attempt, words
    (ex.check_rope_vector, lambda x, m, base=10000.0: _turn(x, m, base, 2, _halves), "half-split"),
    (ex.check_rope_vector, lambda x, m, base=10000.0: _turn(x, m, base, 2, _neighbours, sign=-1), "wrong way"),
    (ex.check_rope_vector, lambda x, m, base=10000.0: _turn(x, m, base, 1, _neighbours), "wrong frequencies"),
    (ex.check_half_split_weights, lambda w: w, "never trained to rotate together"),
    (ex.check_half_split_weights,
     lambda w: torch.stack((w[: w.shape[0] // 2], w[w.shape[0] // 2:]), 1).reshape(w.shape), "inverse permutation"),
    (ex.check_correction_range, lambda bf, bs, d, b, o: (_bound(bf, d, b, o), _bound(bs, d, b, o)), "round outwards"),
    (ex.check_correction_range, lambda *a: ex.solution_correction_range(*a)[::-1], "swapped"),
    (ex.check_correction_range,
     lambda bf, bs, d, b, o: (math.floor(_bound(bf, d, b, o)), math.ceil(_bound(bs, d, b, o))), "clamp"),
    (ex.check_pair_treatment, {"kept": SOL["interpolated"], "blended": SOL["blended"], "interpolated": SOL["kept"]},
     "swapped"),
]


@pytest.mark.parametrize("check,attempt,words", ATTEMPTS)
def test_wrong_attempts_get_the_right_diagnosis(capsys, check, attempt, words):
    ok, out = run(capsys, check, attempt)
    assert not ok and words in out, out
