"""Lesson 11 checkers: each accepts its solution, explains typical mistakes, survives a stub."""

import pytest
import torch
from exercise_helpers import run, stub

from dsv3_edu.exercises import l11_distributed as ex


@pytest.mark.parametrize("name", ["send_counts", "global_bias_step"])
def test_solution_is_correct_and_stub_is_explained(name, capsys):
    checker, solution = getattr(ex, f"check_{name}"), getattr(ex, f"solution_{name}")
    assert run(capsys, checker, solution)[0]
    assert "Not done yet" in run(capsys, checker, stub)[1]
    assert "returned None" in run(capsys, checker, lambda *a: None)[1]


def _pairs(idx, per, world):
    return torch.bincount((idx // per).flatten(), minlength=world)


def _round_robin(idx, per, world):
    return ex.solution_send_counts(idx % world, 1, world)


@pytest.mark.parametrize("fn,message", [
    (_pairs, "one row per (token, expert) pair"),
    (_round_robin, "round robin"),
    (lambda idx, per, world: torch.bincount((idx // per)[:, 0], minlength=world), "first expert"),
    (lambda idx, per, world: torch.full((world,), idx.shape[0]), "broadcast"),
    (lambda idx, per, world: torch.zeros(world + 1), "one count per rank"),
    (lambda idx, per, world: _pairs(idx, per, world) + 1, "find the set of ranks"),
])
def test_send_counts_mistakes(fn, message, capsys):
    correct, out = run(capsys, ex.check_send_counts, fn)
    assert not correct and message in out


def test_token_bytes(capsys):
    assert ex.solution_token_bytes() == (28672, 57344)
    assert run(capsys, ex.check_token_bytes, ex.solution_token_bytes())[0]
    assert run(capsys, ex.check_token_bytes, [28672, 57344])[0]
    assert "Not done yet" in run(capsys, ex.check_token_bytes, None)[1]


@pytest.mark.parametrize("answer,message", [
    ((7168 * 2 * 4, 7168 * 2 * 8), "BF16"),
    ((7168 * 4 * 4, 7168 * 4 * 8), "fp32"),
    ((7168 * 8, 7168 * 8), "at most M = 4 nodes"),
    ((7168 * 4, 7168 * 4), "8 different nodes"),
    ((57344, 28672), "smaller number comes first"),
    ((3584, 7168), "no division by 8"),
    ((1, 2, 3), "two numbers"),
    ("many", "two whole numbers"),
    ((5, 6), "bytes = (nodes the token reaches)"),
])
def test_token_bytes_mistakes(answer, message, capsys):
    correct, out = run(capsys, ex.check_token_bytes, answer)
    assert not correct and message in out


def _signs(loads):
    c = loads.double()
    return torch.sign(c.mean(1, keepdim=True) - c)  # (W, E) each rank's own step


@pytest.mark.parametrize("fn,message", [
    (lambda loads, bias, g: bias + g * _signs(loads)[0], "rank 0's counts only"),
    (lambda loads, bias, g: bias + g * _signs(loads).mean(0), "averaged the ranks' own steps"),
    (lambda loads, bias, g: bias + g * _signs(loads).sum(0), "added up the ranks' own steps"),
    (lambda loads, bias, g: bias - g * torch.sign(loads.sum(0).double().mean() - loads.sum(0)), "reversed"),
    (lambda loads, bias, g: g * torch.sign(loads.sum(0).double().mean() - loads.sum(0)), "step alone"),
    (lambda loads, bias, g: bias[:2], "shape (4,)"),
    (lambda loads, bias, g: bias + 1.0, "c = rank_loads.sum(0)"),
])
def test_global_bias_step_mistakes(fn, message, capsys):
    correct, out = run(capsys, ex.check_global_bias_step, fn)
    assert not correct and message in out
