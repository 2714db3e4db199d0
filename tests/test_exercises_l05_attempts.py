"""Lesson 05: plausible wrong attempts, each with the words its diagnosis must contain."""

import pytest
from exercise_helpers import run

from dsv3_edu.exercises import l05_moe as ex


def _gate(s, b, idx, r, variant):
    picked = (s + b if variant == "biased" else s).gather(1, idx)
    if variant == "softmax":
        return picked.softmax(-1) * r
    norm = s.sum(-1, keepdim=True) if variant == "all" else picked.sum(-1, keepdim=True)
    return picked / norm * (1.0 if variant == "no scale" else r)


ATTEMPTS = [  # checker, attempt, words
    (ex.check_group_scores, lambda b, G: b.view(b.shape[0], G, -1).max(-1).values, "trap 3"),
    (ex.check_group_scores, lambda b, G: b.view(b.shape[0], G, -1).sum(-1), "summed EVERY expert"),
    (ex.check_group_scores, lambda b, G: b.view(b.shape[0], -1, G).transpose(1, 2).topk(2, -1).values.sum(-1),
     "CONTIGUOUS"),
    (ex.check_gate_weights, lambda *a: _gate(*a, "biased"), "trap 1"),
    (ex.check_gate_weights, lambda *a: _gate(*a, "no scale"), "routed_scaling_factor"),
    (ex.check_gate_weights, lambda *a: _gate(*a, "softmax"), "softmax is DeepSeek-V2's gate"),
    (ex.check_gate_weights, lambda *a: _gate(*a, "all"), "normalized over ALL experts"),
    (ex.check_spot_the_bug, "A", "Not A"),
]


@pytest.mark.parametrize("check,attempt,words", ATTEMPTS)
def test_wrong_attempts_get_the_right_diagnosis(capsys, check, attempt, words):
    ok, out = run(capsys, check, attempt)
    assert not ok and words in out, out


def test_answer_letters_are_case_insensitive(capsys):
    assert run(capsys, ex.check_spot_the_bug, ex.solution_spot_the_bug().lower())[0]
