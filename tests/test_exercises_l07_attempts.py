"""Lesson 07: plausible wrong attempts, each with the words its diagnosis must contain."""

import pytest
import torch.nn.functional as F
from exercise_helpers import run

from dsv3_edu.exercises import l07_mtp as ex


def _indices(T, k, n, fed_shift):
    positions = list(range(max(0, n)))
    return positions, [i + k + fed_shift for i in positions], [i + k + 1 for i in positions]


def _depth_loss(logits, labels, k, first_target, reduction="mean"):
    logits = logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                           labels[:, first_target: first_target + logits.shape[1]].reshape(-1), reduction=reduction)


ATTEMPTS = [  # checker, attempt, words
    (ex.check_mtp_indices, lambda T, k: _indices(T, k, T - k, 0), "does not exist"),
    (ex.check_mtp_indices, lambda T, k: _indices(T, k, T - k - 1, 1), "label leak"),
    (ex.check_depth_loss, lambda lg, lab, k: _depth_loss(lg, lab, k, k), "label leak"),
    (ex.check_depth_loss, lambda lg, lab, k: _depth_loss(lg, lab, k, k + 1, "sum"), "sum over positions"),
    (ex.check_total_loss, lambda m, losses, lam: m + lam * sum(losses), "divide by D"),
    (ex.check_total_loss, lambda m, losses, lam: (1 - lam) * m + lam / max(len(losses), 1) * sum(losses),
     "convex mix"),
]


@pytest.mark.parametrize("check,attempt,words", ATTEMPTS)
def test_wrong_attempts_get_the_right_diagnosis(capsys, check, attempt, words):
    ok, out = run(capsys, check, attempt)
    assert not ok and words in out, out
