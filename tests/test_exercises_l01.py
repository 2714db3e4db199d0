"""Lesson 01 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import torch
from exercise_helpers import run

from dsv3_edu.exercises import l01_attention as ex


def test_kv_cache_bytes(capsys):
    ok, out = run(capsys, ex.check_kv_cache_bytes, ex.solution_kv_cache_bytes)
    assert ok and out.startswith("Correct") and "1,342,177,280" in out
    ok, out = run(capsys, ex.check_kv_cache_bytes, lambda L, g, d, b, t, n: L * g * d * b * t * n)
    assert not ok and "forget V" in out and "expected 1,342,177,280 bytes, got 671,088,640" in out
    ok, out = run(capsys, ex.check_kv_cache_bytes, lambda L, g, d, b, t, n: 2 * g * d * b * t * n)
    assert not ok and "80 layers has its own cache" in out
    ok, out = run(capsys, ex.check_kv_cache_bytes, lambda L, g, d, b, t, n: 2 * L * g * d * t * n)
    assert not ok and "counted values, not bytes" in out
    ok, out = run(capsys, ex.check_kv_cache_bytes, lambda L, g, d, b, t, n: 2 * L * g * d * b * t)
    assert not ok and "each sequence in the batch" in out  # passes case 1 (batch 1), fails case 2
    ok, out = run(capsys, ex.check_kv_cache_bytes, lambda *a: None)
    assert not ok and "forget `return`" in out
    ok, out = run(capsys, ex.check_kv_cache_bytes, lambda *a: "1 GiB")
    assert not ok and "not str" in out


def test_append(capsys):
    ok, out = run(capsys, ex.check_append, ex.solution_append)
    assert ok and out.startswith("Correct")
    ok, out = run(capsys, ex.check_append, lambda c, k: torch.cat([c, k], 2))
    assert not ok and "cache_k is None" in out
    ok, out = run(capsys, ex.check_append, lambda c, k: k if c is None else torch.cat([c, k], 0))
    assert not ok and "torch.cat along dim 2" in out
    ok, out = run(capsys, ex.check_append, lambda c, k: k if c is None else torch.cat([k, c], 2))
    assert not ok and "must go last" in out
    ok, out = run(capsys, ex.check_append, lambda c, k: k if c is None else torch.cat([c, k[:, :, :1]], 2))
    assert not ok and "several at once" in out
    ok, out = run(capsys, ex.check_append, lambda c, k: k if c is None else torch.cat([c, c[:, :, :1]], 2))
    assert not ok and "Right shape, wrong values" in out
    ok, out = run(capsys, ex.check_append, lambda c, k: k if c is None else c)
    assert not ok and "Expected shape (2, 3, 6, 4)" in out and "not appended" in out


def test_repeat_kv(capsys):
    ok, out = run(capsys, ex.check_repeat_kv, ex.solution_repeat_kv)
    assert ok and out.startswith("Correct")
    ok, out = run(capsys, ex.check_repeat_kv, lambda x, n: x.repeat(1, n, 1, 1))
    assert not ok and "repeat_interleave" in out and "0,1,0,1" in out
    ok, out = run(capsys, ex.check_repeat_kv, lambda x, n: x.repeat_interleave(n, dim=2))
    assert not ok and "expected (2, 6, 3, 2)" in out and "dim 1" in out
    ok, out = run(capsys, ex.check_repeat_kv, lambda x, n: x.repeat_interleave(n, dim=1).flip(1))
    assert not ok and "wrong values" in out


def test_pick_kv_heads(capsys):
    ok, out = run(capsys, ex.check_pick_kv_heads, ex.solution_pick_kv_heads)
    assert ok and out.startswith("Correct")
    per_head = lambda L, d, b, t, n: 2 * L * d * b * t * n
    floor = lambda h, L, d, b, t, n, B: max(1, B // per_head(L, d, b, t, n))
    ok, out = run(capsys, ex.check_pick_kv_heads, floor)
    assert not ok and "n_kv_heads=12 does not divide n_heads=32" in out
    ok, out = run(capsys, ex.check_pick_kv_heads, lambda *a: 1)
    assert not ok and "1 K/V head fits, but 8 fit too" in out
    ok, out = run(capsys, ex.check_pick_kv_heads, lambda *a: 16)
    assert not ok and "16 K/V heads need 8.00 GiB, over the budget" in out
    ok, out = run(capsys, ex.check_pick_kv_heads, lambda *a: None)
    assert not ok and "you returned None, but 8 K/V heads fit" in out
    ok, out = run(capsys, ex.check_pick_kv_heads, lambda *a: ex.solution_pick_kv_heads(*a) or 1)
    assert not ok and "Return None when nothing fits" in out
    ok, out = run(capsys, ex.check_pick_kv_heads, lambda *a: 8.0)
    assert not ok and "whole number" in out
