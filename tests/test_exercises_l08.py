"""Lesson 08 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import torch
from exercise_helpers import run

from dsv3_edu.exercises import l08_speculative as ex


def test_accept(capsys):
    ok, out = run(capsys, ex.check_accept, ex.solution_accept)
    assert ok and "2 tokens" in out
    ok, _ = run(capsys, ex.check_accept, lambda d, c: torch.tensor(ex.solution_accept(d, c)))
    assert ok
    ok, out = run(capsys, ex.check_accept, lambda d, c: [d, c[1]])  # never verifies
    assert not ok and "trap 14" in out
    ok, out = run(capsys, ex.check_accept, lambda d, c: [d, c[1]] if d == c[0] else list(c))
    assert not ok and "main_choices[1] is invalid" in out
    ok, out = run(capsys, ex.check_accept, lambda d, c: [d] if d == c[0] else [c[0]])
    assert not ok and "free token" in out
    ok, out = run(capsys, ex.check_accept, lambda d, c: None)
    assert not ok and "forget `return`" in out
    ok, out = run(capsys, ex.check_accept, lambda d, c: "x")
    assert not ok and "list of token ids" in out


def test_tokens_per_forward(capsys):
    ok, out = run(capsys, ex.check_tokens_per_forward, ex.solution_tokens_per_forward)
    assert ok and "2.952" in out
    ok, out = run(capsys, ex.check_tokens_per_forward, lambda a, k: 1 + k * a)
    assert not ok and "discarded" in out
    ok, out = run(capsys, ex.check_tokens_per_forward, lambda a, k: sum(a**j for j in range(1, k + 1)))
    assert not ok and "main model's own token" in out
    ok, out = run(capsys, ex.check_tokens_per_forward, lambda a, k: 1 + a)
    assert not ok and "alpha^2" in out
    ok, out = run(capsys, ex.check_tokens_per_forward, lambda a, k: (1 - a ** (k + 1)) / (1 - a))
    assert not ok and "ZeroDivisionError" in out and "divides by zero" in out


def _verify_without_crop(model, cache, x_m, draft):
    h = model.backbone(torch.tensor([[x_m, draft]]), cache=cache)
    c = model.lm_head(h[0]).argmax(-1).tolist()
    return [draft, c[1]] if c[0] == draft else [c[0]]


def _verify_unverified(model, cache, x_m, draft):
    h = model.backbone(torch.tensor([[x_m, draft]]), cache=cache)
    return [draft, int(model.lm_head(h[0, 1]).argmax())]


def _verify_no_cache(model, cache, x_m, draft):
    h = model.backbone(torch.tensor([[x_m, draft]]))
    c = model.lm_head(h[0]).argmax(-1).tolist()
    return [draft, c[1]] if c[0] == draft else [c[0]]


def _verify_crop_too_much(model, cache, x_m, draft):
    m = cache.seq_len()
    h = model.backbone(torch.tensor([[x_m, draft]]), cache=cache)
    c = model.lm_head(h[0]).argmax(-1).tolist()
    if c[0] == draft:
        return [draft, c[1]]
    cache.crop(m)
    return [c[0]]


def test_verify(capsys):
    ok, out = run(capsys, ex.check_verify, ex.solution_verify)
    assert ok and "token for token" in out
    ok, out = run(capsys, ex.check_verify, _verify_without_crop)
    assert not ok and "cache.crop(m + 1)" in out
    ok, out = run(capsys, ex.check_verify, _verify_unverified)
    assert not ok and "trap 14" in out
    ok, out = run(capsys, ex.check_verify, _verify_no_cache)
    assert not ok and "did not grow" in out
    ok, out = run(capsys, ex.check_verify, _verify_crop_too_much)
    assert not ok and "you kept fewer" in out
    ok, out = run(capsys, ex.check_verify, lambda *a: None)
    assert not ok and "forget `return`" in out
