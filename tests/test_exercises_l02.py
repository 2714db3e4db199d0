"""Lesson 02 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import math

import pytest
import torch
from exercise_helpers import run

from dsv3_edu.exercises import l02_rope as ex
from dsv3_edu.rope import apply_rope, deinterleave, yarn_correction_range


def test_errors_in_learner_code_are_reported(capsys):
    ok, out = run(capsys, ex.check_rope_vector, lambda x, m, base: x[5:99].reshape(2, 2))
    assert not ok and "RuntimeError" in out and "Hint" in out


# ------------------------------------------------------------------ exercise 1
def test_rope_vector_solution_matches_the_package(capsys):
    x = torch.randn(2, 8)
    cos = torch.cos(torch.tensor([[3.0]]) * 10000.0 ** (-torch.arange(0, 8, 2) / 8))
    sin = torch.sin(torch.tensor([[3.0]]) * 10000.0 ** (-torch.arange(0, 8, 2) / 8))
    torch.testing.assert_close(ex.solution_rope_vector(x[0], 3, 10000.0), apply_rope(x[:1], cos, sin)[0])
    ok, out = run(capsys, ex.check_rope_vector, ex.solution_rope_vector)
    assert ok and "apply_rope" in out


def test_rope_vector_accepts_a_float32_answer(capsys):
    def mine(x, m, base):
        R = x.shape[0]
        angle = m * base ** (-torch.arange(0, R, 2) / R)
        out = torch.empty_like(x)
        out[0::2] = x[0::2] * angle.cos() - x[1::2] * angle.sin()
        out[1::2] = x[1::2] * angle.cos() + x[0::2] * angle.sin()
        return out

    assert run(capsys, ex.check_rope_vector, mine)[0]


@pytest.mark.parametrize("variant,message", [
    (dict(pairs="half"), "half-split"),
    (dict(layout="split"), "transformers' layout"),
    (dict(sign=-1.0), "wrong way"),
    (dict(exponent=1.0), "you used base^(-i/R)"),
    (dict(exponent=-2.0), "drop the minus sign"),
    (dict(first=1), "count pairs from i = 0"),
])
def test_rope_vector_typical_mistakes(capsys, variant, message):
    ok, out = run(capsys, ex.check_rope_vector, lambda x, m, base: ex._rotate(x, m, base, **variant).float())
    assert not ok and message in out


def test_rope_vector_other_mistakes(capsys):
    assert "returned x unchanged" in run(capsys, ex.check_rope_vector, lambda x, m, b: x)[1]
    assert "keeps the length" in run(capsys, ex.check_rope_vector, lambda x, m, b: 2 * x)[1]
    assert "Expected shape (8,)" in run(capsys, ex.check_rope_vector, lambda x, m, b: x[:4])[1]
    assert "forget `return`" in run(capsys, ex.check_rope_vector, lambda x, m, b: None)[1]


# ------------------------------------------------------------------ exercise 2
def test_half_split_weights(capsys):
    ok, out = run(capsys, ex.check_half_split_weights, ex.solution_half_split_weights)
    assert ok
    ok, out = run(capsys, ex.check_half_split_weights, lambda w: w)
    assert not ok and "rows are unchanged" in out and "differ by up to" in out
    ok, out = run(capsys, ex.check_half_split_weights, lambda w: deinterleave(w, 1))
    assert not ok and "columns" in out
    ok, out = run(capsys, ex.check_half_split_weights, lambda w: w[torch.arange(8).view(2, 4).T.flatten()])
    assert not ok and "inverse permutation" in out
    ok, out = run(capsys, ex.check_half_split_weights, lambda w: 2 * w)
    assert not ok and "not the old rows reordered" in out
    ok, out = run(capsys, ex.check_half_split_weights, lambda w: w.T)
    assert not ok and "Expected shape (8, 12)" in out


# ------------------------------------------------------------------ exercise 3
def test_correction_range_solution_is_the_package(capsys):
    for case in ex._RANGE_CASES:
        assert ex.solution_correction_range(*case) == yarn_correction_range(*case)
    assert ex.solution_correction_range(*ex._RANGE_CASES[0]) == (10, 23)
    assert run(capsys, ex.check_correction_range, ex.solution_correction_range)[0]


def test_correction_range_mistakes(capsys):
    raw = ex._raw_range
    cases = [
        (lambda *c: raw(*c), "round outwards"),
        (lambda *c: tuple(reversed(ex.solution_correction_range(*c))), "swapped"),
        (lambda *c: (math.floor(raw(*c)[0]), math.ceil(raw(*c)[1])), "clamp"),
        (lambda *c: (math.floor(raw(*c, two_pi=False)[0]), math.ceil(raw(*c, two_pi=False)[1])), "2 pi"),
        (lambda *c: (math.floor(raw(*c, half=True)[0]), math.ceil(raw(*c, half=True)[1])), "not the number of pairs"),
        (lambda *c: tuple(math.floor(v) for v in raw(*c)), "floor the low one and ceil the high one"),
        (lambda *c: "ab", "Return two numbers"),
    ]
    for fn, message in cases:
        ok, out = run(capsys, ex.check_correction_range, fn)
        assert not ok and message in out, out


# ------------------------------------------------------------------ exercise 4
def test_pair_treatment(capsys):
    want = ex.solution_pair_treatment()
    assert (max(want["kept"]), min(want["interpolated"])) == (18, 35)
    ok, out = run(capsys, ex.check_pair_treatment, want)
    assert ok and "low = 18, high = 35" in out
    ok, out = run(capsys, ex.check_pair_treatment, {k: range(v[0], v[-1] + 1) for k, v in want.items()})
    assert ok


@pytest.mark.parametrize("answer,message", [
    ({"kept": range(35, 64), "blended": range(19, 35), "interpolated": range(19)}, "swapped"),
    ({"kept": range(11), "blended": range(11, 23), "interpolated": range(23, 64)}, "DeepSeek-V3's bounds"),
    ({"kept": range(18), "blended": range(18, 35), "interpolated": range(35, 64)}, "it is kept"),
    ({"kept": range(19), "blended": range(19, 36), "interpolated": range(36, 64)}, "fully interpolated"),
    ({"kept": range(37), "blended": range(37, 70), "interpolated": range(70, 128)}, "Count pairs, not dims"),
    ({"kept": range(19), "blended": range(19, 30), "interpolated": range(35, 64)}, "Missing: 30-34"),
    ({"kept": range(19)}, "exactly the keys"),
    ({"kept": range(20), "blended": range(20, 34), "interpolated": range(34, 64)}, '"kept" should be pairs 0-18'),
])
def test_pair_treatment_mistakes(capsys, answer, message):
    ok, out = run(capsys, ex.check_pair_treatment, answer)
    assert not ok and message in out, out
