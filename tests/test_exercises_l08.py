"""Lesson 08 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import pytest
import torch
from exercise_helpers import run

from dsv3_edu.exercises import l08_speculative as ex

ACCEPT_WRONG = [  # (attempt, words its diagnosis must contain)
    (lambda d, c: [d, c[1]], "trap 14"),  # never verifies
    (lambda d, c: [d, c[1]] if d == c[1] else [c[0]], "compare the draft with main_choices[1]"),  # wrong choice
    (lambda d, c: [d] if d == c[0] else [c[0]], "free token"),
    (lambda d, c: [d, c[1]] if d == c[0] else list(c), "main_choices[1] too"),
    (lambda d, c: [c[1]] if d == c[0] else [c[0]], "the draft itself is a new token"),
    (lambda d, c: [d], "Not one of the usual mistakes"),  # always the draft alone: what differs, case by case
]


def test_accept(capsys):
    ok, out = run(capsys, ex.check_accept, ex.solution_accept)
    assert ok and "2 tokens" in out
    ok, _ = run(capsys, ex.check_accept, lambda d, c: torch.tensor(ex.solution_accept(d, c)))
    assert ok
    ok, out = run(capsys, ex.check_accept, lambda d, c: None)
    assert not ok and "forget `return`" in out
    ok, out = run(capsys, ex.check_accept, lambda d, c: "x")
    assert not ok and "list of token ids" in out


@pytest.mark.parametrize("attempt,words", ACCEPT_WRONG)
def test_accept_names_the_right_mistake(capsys, attempt, words):
    ok, out = run(capsys, ex.check_accept, attempt)
    assert not ok and words in out, out
    if words != "free token":
        assert "free token" not in out  # the wrong-choice attempt appends the free token: never blame that
    if words == "Not one of the usual mistakes":
        assert "draft=42, main_choices=(42, 7): expected [42, 7], got [42]" in out


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


def _verify_fed_x_m_only(model, cache, x_m, draft):
    h = model.backbone(torch.tensor([[x_m]]), cache=cache)
    c0 = int(model.lm_head(h[0, -1]).argmax())
    return [draft] if c0 == draft else [c0]


def _verify_fed_draft_only(model, cache, x_m, draft):
    h = model.backbone(torch.tensor([[draft]]), cache=cache)
    c = int(model.lm_head(h[0, -1]).argmax())
    return [draft, c]


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
    ok, out = run(capsys, ex.check_verify, _verify_fed_x_m_only)
    assert not ok and "fed only [x_m]" in out and "use the cache" not in out
    ok, out = run(capsys, ex.check_verify, _verify_fed_draft_only)
    assert not ok and "fed only [draft]" in out and "never read x_m" in out
    ok, out = run(capsys, ex.check_verify, lambda *a: None)
    assert not ok and "forget `return`" in out
