"""Lesson 01 exercises: KV-cache bytes by hand, appending to the cache, sharing K/V heads, fitting a budget.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong, or "Correct: ...".
It returns nothing (so a notebook cell echoes nothing) and never raises on a stub.
``solution_xxx`` is one answer.
"""

from __future__ import annotations

import torch

from ._common import NOT_DONE as _NOT_DONE
from ._common import call_learner as _call
from ._common import checker, diagnose, run_cases


def _heads(n: int) -> str:
    return f"{n} K/V head{'s' if n != 1 else ''}"


# ----------------------------------------------------------------------------------------------
# Exercise 1: the cache formula by hand
# ----------------------------------------------------------------------------------------------


def solution_kv_cache_bytes(n_layers, n_kv_heads, head_dim, bytes_per_value, tokens, batch):
    """K and V (the 2), for every layer, K/V head, position and sequence in the batch."""
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_value * tokens * batch


_BYTES_CASES = (  # (n_layers, n_kv_heads, head_dim, bytes_per_value, tokens, batch)
    (80, 8, 128, 2, 4096, 1),  # a 70B GQA model in bf16 at 4K: 1.25 GiB
    (32, 32, 128, 2, 8192, 4),  # a 7B MHA model, batch 4 at 8K: 16 GiB
    (61, 1, 192, 1, 1000, 3),  # odd sizes, fp8
)


# Typical mistakes: (factor the answer is off by, for a case) and the explanation.
_BYTES_MISTAKES = (
    (lambda c: 0.5, lambda c: "exactly half: did you forget V (or K)? Every position stores a key AND a value"),
    (lambda c: 2.0, lambda c: "exactly twice too much: did you count K and V twice?"),
    (lambda c: 1 / c[0], lambda c: f"{c[0]} times too small: every one of the {c[0]} layers has its own cache"),
    (lambda c: 1 / c[3], lambda c: f"{c[3]} times too small: you counted values, not bytes ({c[3]} bytes each)"),
    (lambda c: 8.0, lambda c: "8 times too much: that is bits, the question asks for bytes"),
    (lambda c: 1 / c[4], lambda c: f"{c[4]} times too small: the cache grows with every position (tokens={c[4]})"),
    (lambda c: 1 / c[5], lambda c: f"{c[5]} times too small: each sequence in the batch has its own cache "
                                   f"(batch={c[5]})"),
    (lambda c: 1 / c[1], lambda c: f"{c[1]} times too small: each K/V head stores its own key and value"),
    (lambda c: 1 / c[2], lambda c: f"{c[2]} times too small: each head's key has head_dim={c[2]} values"),
)


def _diagnose_bytes(results) -> str:
    """The one typical mistake that explains every case, else the factor of the first wrong case."""
    wrong = next(r for r in results if r[1] != r[2])
    scaled = [(lambda *case, f=factor: solution_kv_cache_bytes(*case) * f(case), lambda _, t=text: t(wrong[0]))
              for factor, text in _BYTES_MISTAKES]
    found = diagnose(results, scaled)
    if found:
        return found
    case, got, want = wrong
    return f"off by a factor of {got / want:.4g}; write it as 2 x layers x kv_heads x head_dim x bytes x tokens x batch"


@checker
def check_kv_cache_bytes(fn) -> None:
    """fn(n_layers, n_kv_heads, head_dim, bytes_per_value, tokens, batch) -> bytes of K and V together."""
    results = run_cases(fn, _BYTES_CASES, solution_kv_cache_bytes)
    if results is None:
        return
    wrong = [r for r in results if r[1] != r[2]]
    if wrong:
        case, got, want = wrong[0]
        names = "n_layers, n_kv_heads, head_dim, bytes_per_value, tokens, batch"
        print(f"For ({names}) = {case}: expected {want:,} bytes, got {got:,}.")
        print("Hint: " + _diagnose_bytes(results) + ".")
        return
    print(f"Correct: e.g. 80 layers x 8 K/V heads x 128 x (K+V) x 2 bytes x 4096 tokens = "
          f"{solution_kv_cache_bytes(*_BYTES_CASES[0]):,} bytes = 1.25 GiB.")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 2: append to the cache
# ----------------------------------------------------------------------------------------------


def solution_append(cache_k, k_new):
    """cache_k (B, G, S, D) or None, k_new (B, G, T, D) -> (B, G, S+T, D): new positions go last, on dim 2."""
    return k_new if cache_k is None else torch.cat([cache_k, k_new], dim=2)


@checker
def check_append(fn) -> None:
    """fn(cache_k, k_new) -> the cache with k_new appended along the sequence axis (dim 2)."""
    gen = torch.Generator().manual_seed(0)
    b, g, s, t, d = 2, 3, 5, 1, 4
    k_new = torch.randn(b, g, t, d, generator=gen)
    got = _call(fn, None, k_new, hint="on the first step there is no cache yet (cache_k is None): return k_new.")
    if got is _NOT_DONE:
        return
    if not isinstance(got, torch.Tensor) or got.shape != k_new.shape or not torch.equal(got, k_new):
        print("With an empty cache (cache_k=None, the first step) the cache is just k_new: return it.")
        return
    cache_k = torch.randn(b, g, s, d, generator=gen)
    want = solution_append(cache_k, k_new)
    got = _call(fn, cache_k, k_new, hint=f"cache_k {tuple(cache_k.shape)} and k_new {tuple(k_new.shape)} differ only "
                "on dim 2, the positions: torch.cat along dim 2 (dim=-2 works too).")
    if got is _NOT_DONE:
        return
    if not isinstance(got, torch.Tensor):
        print(f"Return a tensor, not {type(got).__name__}.")
        return
    if got.shape != want.shape:
        msg = f"Expected shape {tuple(want.shape)} (B, G, S+T, D), got {tuple(got.shape)}."
        for dim, name in ((0, "batch B"), (1, "heads G"), (3, "head_dim D")):
            if got.dim() == 4 and got.shape[dim] == cache_k.shape[dim] + k_new.shape[dim]:
                msg += f" You concatenated along dim {dim} ({name}); positions live on dim 2."
        if got.shape == cache_k.shape:
            msg += " That is the old cache: the new position was not appended."
        print(msg)
        return
    if torch.equal(got, torch.cat([k_new, cache_k], dim=2)):
        print("The new position is at the front: it must go last (position S), after the cached ones.")
        return
    if not torch.equal(got, want):
        print("Right shape, wrong values: keep the cached positions unchanged and put k_new after them.")
        return
    multi = torch.randn(b, g, 3, d, generator=gen)
    got = _call(fn, cache_k, multi, hint="k_new may hold several positions (T=3).")
    if got is _NOT_DONE or not isinstance(got, torch.Tensor) or not torch.equal(got, solution_append(cache_k, multi)):
        print("Appending one position works, but several at once (T=3, as in a prefill) does not.")
        return
    print(f"Correct: (B, G, S, D) {tuple(cache_k.shape)} + (B, G, T, D) {tuple(k_new.shape)} -> {tuple(want.shape)}.")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 3: share K/V heads (GQA)
# ----------------------------------------------------------------------------------------------


def solution_repeat_kv(x, n_rep):
    """(B, G, S, D) -> (B, G*n_rep, S, D); query head h reads K/V head h // n_rep."""
    return x.repeat_interleave(n_rep, dim=1)


@checker
def check_repeat_kv(fn) -> None:
    """fn(x (B, G, S, D), n_rep) -> (B, G*n_rep, S, D); K/V head g serves query heads g*n_rep .. g*n_rep+n_rep-1."""
    x = torch.arange(2 * 2 * 3 * 2, dtype=torch.float32).view(2, 2, 3, 2)  # K/V heads are easy to tell apart
    for n_rep in (3, 1):
        want = solution_repeat_kv(x, n_rep)
        got = _call(fn, x, n_rep)
        if got is _NOT_DONE:
            return
        if not isinstance(got, torch.Tensor):
            print(f"Return a tensor, not {type(got).__name__}.")
            return
        if got.shape != want.shape:
            print(f"With x {tuple(x.shape)} and n_rep={n_rep}: expected {tuple(want.shape)} (B, G*n_rep, S, D), "
                  f"got {tuple(got.shape)}. Repeat along dim 1, the head axis.")
            return
        if n_rep > 1 and torch.equal(got, x.repeat(1, n_rep, 1, 1)):
            print("Head order is 0,1,0,1,0,1: that is `repeat`. Query heads 0..2 must share K/V head 0, "
                  "heads 3..5 K/V head 1 (order 0,0,0,1,1,1): use `repeat_interleave` on dim 1.")
            return
        if not torch.equal(got, want):
            print(f"n_rep={n_rep}: right shape, wrong values. Query head h should see K/V head h // n_rep.")
            return
    print("Correct: K/V head g serves query heads g*n_rep ... g*n_rep + n_rep - 1 (as transformers' repeat_kv).")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 4: the most K/V heads that fit a memory budget
# ----------------------------------------------------------------------------------------------


def solution_pick_kv_heads(n_heads, n_layers, head_dim, bytes_per_value, tokens, batch, budget_bytes):
    """The largest n_kv that divides n_heads and whose cache fits the budget; None if not even MQA fits."""
    fits = [
        g for g in range(1, n_heads + 1)
        if n_heads % g == 0 and solution_kv_cache_bytes(n_layers, g, head_dim, bytes_per_value, tokens, batch)
        <= budget_bytes
    ]
    return max(fits) if fits else None


_PICK_CASES = (  # (n_heads, n_layers, head_dim, bytes_per_value, tokens, batch, budget_bytes)
    (32, 32, 128, 2, 32768, 1, 6 * 2**30),  # 6 GiB: 8 K/V heads take 4 GiB, 16 would take 8
    (64, 80, 128, 2, 8192, 8, 16 * 2**30),  # 4 K/V heads: 10 GiB
    (48, 40, 128, 2, 8192, 2, 1 * 2**30),  # 48 heads: divisors 1,2,3,4,6,8,...; 3 heads = 0.94 GiB
    (32, 32, 128, 2, 1_000_000, 16, 1 * 2**30),  # nothing fits
)


@checker
def check_pick_kv_heads(fn) -> None:
    """fn(n_heads, n_layers, head_dim, bytes_per_value, tokens, batch, budget_bytes) -> best n_kv or None."""
    for case in _PICK_CASES:
        n_heads, n_layers, head_dim, bpv, tokens, batch, budget = case
        want = solution_pick_kv_heads(*case)
        got = _call(fn, *case, none_ok=True)  # None is the answer when nothing fits
        if got is _NOT_DONE:
            return
        where = f"n_heads={n_heads}, budget {budget / 2**30:.2f} GiB, {tokens:,} tokens x batch {batch}"
        if want is None:
            if got is not None:
                print(f"{where}: even MQA (1 K/V head) needs "
                      f"{solution_kv_cache_bytes(n_layers, 1, head_dim, bpv, tokens, batch) / 2**30:.1f} GiB. "
                      f"Return None when nothing fits, not {got!r}.")
                return
            continue
        if got is None:
            print(f"{where}: you returned None, but {_heads(want)} fit.")
            return
        if isinstance(got, bool) or not isinstance(got, int):
            print(f"Return a whole number of K/V heads (or None), not {got!r}.")
            return
        if not 1 <= got <= n_heads or n_heads % got:
            print(f"{where}: n_kv_heads={got} does not divide n_heads={n_heads}, so query heads cannot be shared "
                  "out evenly. Only try divisors of n_heads.")
            return
        size = solution_kv_cache_bytes(n_layers, got, head_dim, bpv, tokens, batch)
        if size > budget:
            print(f"{where}: {_heads(got)} need{'s' if got == 1 else ''} {size / 2**30:.2f} GiB, over the budget. "
                  "Check the cache formula (K and V, every layer) and pick fewer heads.")
            return
        if got < want:
            print(f"{where}: {_heads(got)} fit{'s' if got == 1 else ''}, but {want} fit too. More K/V heads cost "
                  "nothing while they fit (quality grows with them): return the largest divisor that fits.")
            return
    print("Correct: the largest divisor of n_heads whose cache fits, e.g. 8 K/V heads (4 GiB) for a 6 GiB budget.")
    return
