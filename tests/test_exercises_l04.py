"""Lesson 04 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import torch
from exercise_helpers import run

from dsv3_edu.exercises import l04_absorption as ex


def w_uk_of(q, w):
    return w.view(q.shape[1], -1, w.shape[-1])[:, : q.shape[-1]]



def test_absorb_query(capsys):
    ok, out = run(capsys, ex.check_absorb_query, ex.solution_absorb_query)
    assert ok and "(2, 3, 4, 5) -> (2, 3, 4, 7)" in out
    ok, out = run(capsys, ex.check_absorb_query, lambda q, w: q @ w_uk_of(q, w))  # matmul broadcasts over B
    assert ok
    first_rows = lambda q, w: torch.einsum("bhtd,hdc->bhtc", q, w[: q.shape[1] * q.shape[-1]].view(3, 5, 7))
    ok, out = run(capsys, ex.check_absorb_query, first_rows)
    assert not ok and "first H*D rows" in out and "separate the heads first" in out and "view(" not in out
    ok, out = run(capsys, ex.check_absorb_query, lambda q, w: torch.einsum("bhtd,hdc->btc", q, w_uk_of(q, w)))
    assert not ok and "summed over the heads" in out and "got (2, 4, 7)" in out
    ok, out = run(capsys, ex.check_absorb_query, lambda q, w: torch.einsum("bhtd,hcd->bhtc", q, w_uk_of(q, w)))
    assert not ok and "raised RuntimeError" in out and "Hint: kv_b_weight is (H*(D+V), C) = (33, 7)" in out
    ok, out = run(capsys, ex.check_absorb_query, lambda q, w: (q @ w_uk_of(q, w)) * (5 + 2) ** -0.5)
    assert not ok and "leave the softmax scale out" in out and "trap 7" in out
    ok, out = run(capsys, ex.check_absorb_query, lambda q, w: torch.einsum("bhtd,dc->bhtc", q, w[:5]))
    assert not ok and "head 0's W^UK" in out
    ok, out = run(capsys, ex.check_absorb_query, lambda q, w: None)
    assert not ok and "forget `return`" in out


def test_fold_output(capsys):
    ok, out = run(capsys, ex.check_fold_output, ex.solution_fold_output)
    assert ok and "469,762,048" in out and "125,829,120" in out
    wrong_order = lambda wuv, wo: torch.einsum("evh,hvc->ehc", wo.view(wo.shape[0], wuv.shape[1], wuv.shape[0]), wuv)
    ok, out = run(capsys, ex.check_fold_output, wrong_order)
    assert not ok and "viewed w_o as (d, V, H)" in out
    ok, out = run(capsys, ex.check_fold_output, lambda wuv, wo: ex.solution_fold_output(wuv, wo).flatten(1))
    assert not ok and "Right numbers, but return shape (d, H, C) = (5, 3, 6), not (5, 18)" in out
    ok, out = run(capsys, ex.check_fold_output, lambda wuv, wo: ex.solution_fold_output(wuv, wo).transpose(0, 1))
    assert not ok and "got (H, d, C)" in out
    ok, out = run(capsys, ex.check_fold_output, lambda wuv, wo: 2 * ex.solution_fold_output(wuv, wo))
    assert not ok and "Right shape, wrong values" in out


def test_decode_cache_bytes(capsys):
    ok, out = run(capsys, ex.check_decode_cache_bytes, ex.solution_decode_cache_bytes)
    assert ok and "4,718,592" in out and "335,544,320" in out and "71.1x" in out
    no_rope = lambda p, S, B, b: B * S * (128 * 320 if p == "expanded" else 512) * b
    ok, out = run(capsys, ex.check_decode_cache_bytes, no_rope)
    assert not ok and "forgot the rope key" in out and "trap 8" in out
    naive_as_expanded = lambda p, S, B, b: B * S * (576 if p == "absorbed" else 128 * 320) * b
    ok, out = run(capsys, ex.check_decode_cache_bytes, naive_as_expanded)
    assert not ok and "path='naive'" in out and "rebuilds K and V after reading" in out
    keys_without_rope = lambda p, S, B, b: B * S * (128 * 256 if p == "expanded" else 576) * b
    ok, out = run(capsys, ex.check_decode_cache_bytes, keys_without_rope)
    assert not ok and "192 wide" in out
    k_only = lambda p, S, B, b: B * S * (128 * 192 if p == "expanded" else 576) * b
    ok, out = run(capsys, ex.check_decode_cache_bytes, k_only)
    assert not ok and "K only" in out
    per_head_latent = lambda p, S, B, b: B * S * 128 * (320 if p == "expanded" else 576) * b
    ok, out = run(capsys, ex.check_decode_cache_bytes, per_head_latent)
    assert not ok and "shared by all heads" in out
    no_batch = lambda p, S, B, b: S * (128 * 320 if p == "expanded" else 576) * b
    ok, out = run(capsys, ex.check_decode_cache_bytes, no_batch)
    assert not ok and "every sequence in the batch" in out
    values = lambda p, S, B, b: B * S * (128 * 320 if p == "expanded" else 576)
    ok, out = run(capsys, ex.check_decode_cache_bytes, values)
    assert not ok and "counted values, not bytes" in out
    ok, out = run(capsys, ex.check_decode_cache_bytes, lambda *a: "4 MiB")
    assert not ok and "not str" in out


def test_choose_path(capsys):
    ok, out = run(capsys, ex.check_choose_path, ex.solution_choose_path)
    assert ok and "171" in out
    assert ex.solution_choose_path(1, 8192) == "absorbed" and ex.solution_choose_path(4096, 4096) == "naive"
    ok, out = run(capsys, ex.check_choose_path, lambda T, S: "absorbed")
    assert not ok and "always answer 'absorbed'" in out and "T=4096, S=4096" in out
    ok, out = run(capsys, ex.check_choose_path, lambda T, S: "naive")
    assert not ok and "always answer 'naive'" in out and "T=1, S=8192" in out
    ok, out = run(capsys, ex.check_choose_path, lambda T, S: "naive" if T > 1 else "absorbed")
    assert not ok and "T=64, S=8192 you chose naive" in out and "no fixed threshold" in out
    ok, out = run(capsys, ex.check_choose_path, lambda T, S: "naive" if T >= 171 else "absorbed")
    assert not ok and "T=32, S=32 you chose absorbed" in out
    swapped = lambda T, S: "naive" if ex.solution_choose_path(T, S) == "absorbed" else "absorbed"
    ok, out = run(capsys, ex.check_choose_path, swapped)
    assert not ok and "swapped" in out
    ok, out = run(capsys, ex.check_choose_path, lambda T, S: 1)
    assert not ok and "not 1" in out
