"""Lesson 01: plausible wrong attempts, each with the words its diagnosis must contain."""

import pytest
import torch
from exercise_helpers import run

from dsv3_edu.exercises import l01_attention as ex


def _divisors_that_fit(H, L, D, b, t, B, budget, divides=True):
    return [g for g in range(1, H + 1)
            if (H % g == 0 or not divides) and ex.solution_kv_cache_bytes(L, g, D, b, t, B) <= budget]


ATTEMPTS = [  # checker, attempt, words
    (ex.check_kv_cache_bytes, lambda L, G, D, b, t, B: L * G * D * b * t * B, "forget V"),
    (ex.check_kv_cache_bytes, lambda L, G, D, b, t, B: 2 * L * D * b * t * B, "each K/V head"),
    (ex.check_append, lambda c, k: k if c is None else torch.cat([c, k], dim=1), "torch.cat along dim 2"),
    (ex.check_append, lambda c, k: k if c is None else torch.cat([k, c], dim=2), "must go last"),
    (ex.check_append, lambda c, k: torch.cat([c, k], dim=2), "cache_k is None"),
    (ex.check_repeat_kv, lambda x, n: x.repeat(1, n, 1, 1), "repeat_interleave"),
    (ex.check_repeat_kv, lambda x, n: x.repeat_interleave(n, dim=2), "the head axis"),
    (ex.check_pick_kv_heads, lambda *a: min(_divisors_that_fit(*a), default=None), "return the largest divisor"),
    (ex.check_pick_kv_heads, lambda *a: max(_divisors_that_fit(*a, divides=False), default=None),
     "Only try divisors"),
]


@pytest.mark.parametrize("check,attempt,words", ATTEMPTS)
def test_wrong_attempts_get_the_right_diagnosis(capsys, check, attempt, words):
    ok, out = run(capsys, check, attempt)
    assert not ok and words in out, out
