"""Lesson 03: plausible wrong attempts, each with the words its diagnosis must contain (and not the lesson's code)."""

import pytest
from exercise_helpers import run

from dsv3_edu.exercises import l03_mla as ex


def _head_minor(w, H, D, V):
    rows = w.view(D + V, H, -1).transpose(0, 1)
    return rows[:, :D], rows[:, D:]


def _v_first(w, H, D, V):
    rows = w.view(H, D + V, -1)
    return rows[:, V:], rows[:, :V]


def _blocks(w, H, D, V):
    return w[: H * D].reshape(H, D, -1), w[H * D:].reshape(H, V, -1)


ATTEMPTS = [  # checker, attempt, words
    (ex.check_split_kv_b, _head_minor, "INNER index"),
    (ex.check_split_kv_b, _v_first, "LAST D rows"),
    (ex.check_split_kv_b, _blocks, "PER HEAD"),
    (ex.check_mla_cache_bytes,
     lambda c, t, b, n: 2 * (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * t * b * n, "serves both"),
]


@pytest.mark.parametrize("check,attempt,words", ATTEMPTS)
def test_wrong_attempts_get_the_right_diagnosis(capsys, check, attempt, words):
    ok, out = run(capsys, check, attempt)
    assert not ok and words in out, out
    assert "view(" not in out  # a hint at the idea, never the lesson's own code
