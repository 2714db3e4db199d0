"""Lesson 06: plausible wrong attempts, each with the words its diagnosis must contain."""

import pytest
import torch
from exercise_helpers import run

from dsv3_edu.exercises import l06_balancing as ex


def _vio(loads, kind):
    x = loads.double()
    mean = x.mean()
    return float({"min": (mean - x.min()) / mean, "floor": (x.max() - mean) // mean,
                  "no divide": x.max() - mean, "plus": (x.max() - mean) / mean + 0.1}[kind])


def _seq_loss(s, idx, alpha, variant):
    B, T, E = s.shape
    K = idx.shape[-1]
    if variant == "global":
        counts = torch.zeros(E).scatter_add_(0, idx.reshape(-1), torch.ones(idx.numel()))
        return alpha * (counts * E / (K * T * B) * (s / s.sum(-1, keepdim=True)).mean((0, 1))).sum()
    counts = torch.zeros(B, E).scatter_add_(1, idx.reshape(B, -1), torch.ones(B, T * K))
    return alpha * (counts * E / (K * T) * s.mean(1)).sum(-1).mean()  # raw s: not normalized per token


SOL = ex.solution_bias_by_hand()
FLIP = ex.solution_steps_to_flip()
ATTEMPTS = [  # checker, attempt, words
    (ex.check_bias_by_hand, [-v for v in SOL], "signs are reversed"),
    (ex.check_max_violation, lambda loads: _vio(loads, "min"), "LEAST loaded"),
    (ex.check_max_violation, lambda loads: _vio(loads, "floor"), "whole-number division"),
    (ex.check_max_violation, lambda loads: _vio(loads, "no divide"), "forgot to divide by the mean"),
    (ex.check_max_violation, lambda loads: _vio(loads, "plus"), "not one of the usual mistakes"),
    (ex.check_steps_to_flip, (2 * FLIP[0], 2 * FLIP[1]), "counts one bias only"),
    (ex.check_steps_to_flip, FLIP[::-1], "MORE steps"),
    (ex.check_sequence_balance_loss, lambda s, i, a: _seq_loss(s, i, a, "global"), "pooled the whole batch"),
    (ex.check_sequence_balance_loss, lambda s, i, a: _seq_loss(s, i, a, "raw"), "normalized scores"),
]


@pytest.mark.parametrize("check,attempt,words", ATTEMPTS)
def test_wrong_attempts_get_the_right_diagnosis(capsys, check, attempt, words):
    ok, out = run(capsys, check, attempt)
    assert not ok and words in out, out
