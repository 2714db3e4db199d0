"""Lesson 06 checkers: each accepts its solution, explains typical mistakes, survives a stub."""

import pytest
import torch

from dsv3_edu.exercises import l06_balancing as ex


def stub(*args):
    raise NotImplementedError("your code here")


def run(capsys, checker, fn):
    checker(fn)
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["max_violation", "sequence_balance_loss"])
def test_solution_is_correct_and_stub_is_explained(name, capsys):
    checker, solution = getattr(ex, f"check_{name}"), getattr(ex, f"solution_{name}")
    assert run(capsys, checker, solution).startswith("Correct:")
    assert "Not done yet" in run(capsys, checker, stub)
    assert "returned None" in run(capsys, checker, lambda *a: None)


def test_bias_by_hand(capsys):
    assert run(capsys, ex.check_bias_by_hand, ex.solution_bias_by_hand()).startswith("Correct:")
    assert ex.solution_bias_by_hand() == [-0.01, 0.01, 0.01, -0.01]
    assert run(capsys, ex.check_bias_by_hand, torch.tensor(ex.solution_bias_by_hand())).startswith("Correct:")
    assert "Not done yet" in run(capsys, ex.check_bias_by_hand, None)


@pytest.mark.parametrize("answer,message", [
    ([0.01, -0.01, -0.01, 0.01], "signs are reversed"),
    ([-0.03, 0.03, 0.01, -0.01], "times the load gap"),
    ([-0.01, 0.01, 0.03, 0.01], "exactly at the mean"),
    ([0.01, -0.01, 0.0, 0.0], "step 3 alone"),
    ([-1, 1, 1, -1], "multiply by gamma"),
    ([0.0, 0.0], "4 numbers"),
    ("zero", "not str"),
    ([0.5, 0.0, 0.0, 0.0], "+gamma if below"),
])
def test_bias_by_hand_mistakes(answer, message, capsys):
    assert message in run(capsys, ex.check_bias_by_hand, answer)


@pytest.mark.parametrize("fn,message", [
    (lambda x: (x.max() - x.min()) / x.float().mean(), "max - min"),
    (lambda x: x.max() / x.float().mean(), "off by exactly 1"),
    (lambda x: x.max() - x.float().mean(), "forgot to divide"),
    (lambda x: (x.max() - x.float().mean()) / x.max(), "divided by the max"),
    (lambda x: "1.0", "not str"),
])
def test_max_violation_mistakes(fn, message, capsys):
    assert message in run(capsys, ex.check_max_violation, fn)


def test_steps_to_flip(capsys):
    assert ex.solution_steps_to_flip() == (25, 250)
    assert run(capsys, ex.check_steps_to_flip, (25, 250)).startswith("Correct:")
    assert run(capsys, ex.check_steps_to_flip, [26, 251]).startswith("Correct:")
    assert "Not done yet" in run(capsys, ex.check_steps_to_flip, None)


@pytest.mark.parametrize("answer,message", [
    ((50, 500), "counts one bias only"), ((250, 25), "MORE steps"), ((3, 7), "toward each other"),
    ((25,), "two numbers"), ("many", "two numbers"),
])
def test_steps_to_flip_mistakes(answer, message, capsys):
    assert message in run(capsys, ex.check_steps_to_flip, answer)


def _pooled(s, t, a):
    return ex.solution_sequence_balance_loss(s.reshape(1, -1, s.shape[-1]), t.reshape(1, -1, t.shape[-1]), a)


def _parts(s, t):
    B, T, E = s.shape
    K = t.shape[-1]
    counts = torch.zeros(B, E).scatter_add_(1, t.reshape(B, -1), torch.ones(B, T * K))
    return counts, (s / s.sum(-1, keepdim=True)).mean(1), B, T, E, K


def _raw_scores(s, t, a):
    counts, _, B, T, E, K = _parts(s, t)
    return a * (counts * E / (K * T) * s.mean(1)).sum(-1).mean()


def _no_n_r(s, t, a):
    counts, P, B, T, E, K = _parts(s, t)
    return a * (counts / (K * T) * P).sum(-1).mean()


def _summed(s, t, a):
    counts, P, B, T, E, K = _parts(s, t)
    return a * (counts * E / (K * T) * P).sum()


@pytest.mark.parametrize("fn,message", [
    (_pooled, "pooled the whole batch"), (_raw_scores, "normalized scores"), (_no_n_r, "factor N_r"),
    (_summed, "summed over the sequences"), (lambda s, t, a: torch.zeros(2), "Return one number"),
])
def test_sequence_loss_mistakes(fn, message, capsys):
    assert message in run(capsys, ex.check_sequence_balance_loss, fn)


def test_learner_exceptions_are_reported_not_raised(capsys):
    def broken(*args):
        raise IndexError("index 9 is out of bounds")

    for name in ("max_violation", "sequence_balance_loss"):
        out = run(capsys, getattr(ex, f"check_{name}"), broken)
        assert "raised IndexError" in out and "Hint:" in out
