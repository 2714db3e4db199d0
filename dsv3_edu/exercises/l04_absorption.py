"""Lesson 04 exercises: absorb W^UK into the query, fold W^UV into W^O, count the cache bytes a decode
step reads, and pick the cheaper MLA path for T new tokens against S positions.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong, or "Correct: ...".
It returns nothing (so a notebook cell echoes nothing) and never raises on a stub.
``solution_xxx`` is one answer.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..costmodel import attention_flops
from ._common import NOT_DONE as _NOT_DONE
from ._common import as_number, as_tensor, checker, close
from ._common import call_learner as _call

V3 = ModelConfig.deepseek_v3()
# DeepSeek-V3's attention sizes: heads, latent d_c, nope d_h, rope d_h^R, value d_h.
H3, C3, D3, R3, V3_DIM = 128, 512, 128, 64, 128



# ----------------------------------------------------------------------------------------------
# Exercise 1: absorb W^UK into the query, straight from the checkpoint's kv_b_proj
# ----------------------------------------------------------------------------------------------


def solution_absorb_query(q_nope, kv_b_weight):
    """q_nope (B, H, T, D), kv_b_proj.weight (H*(D+V), C) -> q~ = W^UK_h^T q^C_h per head, (B, H, T, C).

    The rows of kv_b_proj are grouped per head: [W^UK_0 (D rows); W^UV_0 (V rows); W^UK_1; ...].
    """
    H, D = q_nope.shape[1], q_nope.shape[-1]
    w_uk = kv_b_weight.view(H, -1, kv_b_weight.shape[-1])[:, :D]  # (H, D, C)
    return torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)


@checker
def check_absorb_query(fn) -> None:
    """fn(q_nope (B, H, T, D), kv_b_weight (H*(D+V), C)) -> q~ (B, H, T, C)."""
    gen = torch.Generator().manual_seed(0)
    B, H, T, D, V, C = 2, 3, 4, 5, 6, 7  # all different, so a wrong axis shows in the shape
    q_nope = torch.randn(B, H, T, D, generator=gen)
    kv_b = torch.randn(H * (D + V), C, generator=gen)
    hint = (f"kv_b_weight is (H*(D+V), C) = {tuple(kv_b.shape)}: view it as (H, D+V, C), take [:, :D] for W^UK "
            f"(H, D, C), then torch.einsum('bhtd,hdc->bhtc', q_nope, w_uk).")
    got = _call(fn, q_nope, kv_b, hint=hint)
    if got is _NOT_DONE:
        return
    want = solution_absorb_query(q_nope, kv_b)
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, T, C):
        print(f"Expected shape {(B, H, T, C)} (B, H, T, C), got {tuple(got.shape)}: you summed over the heads. "
              "Keep h in the output: each head has its own W^UK_h and its own q~.")
        return
    if as_tensor(got, want.shape, "q~ (B, H, T, C)") is None:
        return
    if close(got, want):
        print(f"Correct: q~ = W^UK^T q^C, {tuple(q_nope.shape)} -> {tuple(got.shape)}. At DeepSeek-V3 sizes each "
              f"head's 128-wide q^C becomes a 512-wide q~, and q~ . c_s equals q^C . k^C_s for every cached s.")
        return
    wrong_rows = torch.einsum("bhtd,hdc->bhtc", q_nope, kv_b[: H * D].view(H, D, C))
    wrong_major = torch.einsum("bhtd,dhc->bhtc", q_nope, kv_b.view(D + V, H, C)[:D])
    head0 = torch.einsum("bhtd,dc->bhtc", q_nope, kv_b[:D])
    if close(got, wrong_rows):
        print("You took the first H*D rows of kv_b_proj as W^UK. Its rows are grouped per head, "
              "[W^UK_0 (D rows); W^UV_0 (V rows); W^UK_1; ...]: separate the heads first, then keep each head's "
              "first D rows.")
    elif close(got, wrong_major):
        print("You viewed kv_b_proj as (D+V, H, C): the head is the outer index of its rows (all D+V rows of "
              "head 0, then head 1, ...), and W^UK is the first D rows of each head.")
    elif close(got, head0):
        print("Every head used head 0's W^UK. Each head h has its own block W^UK_h: keep h in the einsum.")
    elif close(got, want * (D + 2) ** -0.5) or close(got, want * (D + V) ** -0.5) or close(got, want * D**-0.5):
        print("Right direction, but scaled: leave the softmax scale out. It multiplies the whole score "
              "(q~ . c + q^R . k^R) once, with the same 1/sqrt(d_h + d_h^R) as the naive path (trap 7).")
    else:
        print("Right shape, wrong values. q~_h = W^UK_h^T q^C_h: contract q's last axis (d) with W^UK_h's rows.")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 2: fold W^UV into W^O
# ----------------------------------------------------------------------------------------------


def solution_fold_output(w_uv, w_o):
    """w_uv (H, V, C), o_proj.weight w_o (d, H*V) -> W^O_h W^UV_h for every head, (d, H, C).

    u = W^O [o_1; ...; o_H] = sum_h W^O_h W^UV_h o~_h, where W^O_h are the V columns of head h.
    """
    H, V, _ = w_uv.shape
    return torch.einsum("ehv,hvc->ehc", w_o.view(w_o.shape[0], H, V), w_uv)


@checker
def check_fold_output(fn) -> None:
    """fn(w_uv (H, V, C), w_o (d, H*V)) -> folded (d, H, C) with u = einsum('bhtc,ehc->bte', o_lat, folded)."""
    gen = torch.Generator().manual_seed(1)
    H, V, C, d, B, T = 3, 4, 6, 5, 2, 3
    w_uv = torch.randn(H, V, C, generator=gen)
    w_o = torch.randn(d, H * V, generator=gen)
    hint = ("view w_o (d, H*V) as (d, H, V), then multiply head by head: "
            "torch.einsum('ehv,hvc->ehc', w_o.view(d, H, V), w_uv).")
    got = _call(fn, w_uv, w_o, hint=hint)
    if got is _NOT_DONE:
        return
    want = solution_fold_output(w_uv, w_o)
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (d, H * C) and close(got.view(d, H, C), want):
        print(f"Right numbers, but return shape (d, H, C) = {(d, H, C)}, not {tuple(got.shape)}: .view(d, H, C).")
        return
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (H, d, C):
        print(f"Expected shape (d, H, C) = {(d, H, C)}, got (H, d, C) = {tuple(got.shape)}: put the output "
              "dimension d first, as in o_proj.weight.")
        return
    if as_tensor(got, want.shape, "the folded matrix (d, H, C)") is None:
        return
    o_lat = torch.randn(B, H, T, C, generator=gen)
    o = torch.einsum("bhtc,hvc->bhtv", o_lat, w_uv)  # (B, H, T, V): the per-head outputs
    unfolded = torch.einsum("bhtv,ehv->bte", o, w_o.view(d, H, V))  # o_proj on [o_1; ...; o_H]
    folded_out = torch.einsum("bhtc,ehc->bte", o_lat, got.float())
    if close(folded_out, unfolded):
        print("Correct: u = sum_h (W^O_h W^UV_h) o~_h, the same output without ever forming o_h. At DeepSeek-V3 "
              f"sizes the folded matrix has 7168 x 128 x 512 = {7168 * H3 * C3:,} values per layer, against "
              f"{7168 * H3 * V3_DIM + H3 * V3_DIM * C3:,} for W^O and W^UV apart (3.7x): the official code keeps "
              "them apart.")
        return
    wrong_order = torch.einsum("evh,hvc->ehc", w_o.view(d, V, H), w_uv)
    if close(got, wrong_order):
        print("You viewed w_o as (d, V, H). Its columns are head by head, [o_1 (V values); o_2; ...], because the "
              "module flattens (B, T, H, V) to (B, T, H*V): view(d, H, V).")
    else:
        print("Right shape, wrong values. folded[:, h, :] must be W^O_h @ W^UV_h, "
              "with W^O_h = w_o.view(d, H, V)[:, h].")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 3: bytes a decode step reads from the cache
# ----------------------------------------------------------------------------------------------


def solution_decode_cache_bytes(path, context, batch, bytes_per_value):
    """Bytes one decode step of one layer reads from the KV cache, at DeepSeek-V3's sizes.

    expanded: per-head K (d_h + d_h^R = 192) and V (128) for all 128 heads; naive and absorbed: the latent
    c^KV (512) and the rope key k^R (64), shared by all heads.
    """
    if path == "expanded":
        values = H3 * (D3 + R3 + V3_DIM)
    elif path in ("naive", "absorbed"):
        values = C3 + R3
    else:
        raise ValueError(f"path={path!r}: use expanded, naive or absorbed")
    return batch * context * values * bytes_per_value


_BYTES_CASES = (  # (path, context, batch, bytes_per_value)
    ("absorbed", 4096, 1, 2),
    ("expanded", 4096, 1, 2),
    ("naive", 4096, 1, 2),
    ("absorbed", 1000, 3, 1),
    ("expanded", 1000, 3, 1),
    ("naive", 1000, 3, 4),
)


def _bytes_mistakes(path, context, batch, bpv):
    """(wrong answer, explanation) for the typical mistakes on one case."""
    n = context * batch * bpv
    if path == "expanded":
        return (
            (n * H3 * (D3 + V3_DIM), "keys are d_h + d_h^R = 192 wide: the rope part k^R is part of every head's key"),
            (n * H3 * (D3 + R3), "that is K only: every head also caches V (128 values)"),
            (n * (D3 + R3 + V3_DIM), "that is one head: each of the 128 heads caches its own K and V"),
            (n * (C3 + R3), "that is the latent cache: the expanded path stores per-head K and V instead"),
        )
    latent = (
        (n * C3, "you forgot the rope key k^R (64 values per token): the cache is [c^KV; k^R], 576 wide (trap 8)"),
        (n * H3 * (C3 + R3), "the latent and the rope key are shared by all heads: one per token, not per head"),
        (n * H3 * (D3 + R3 + V3_DIM), f"that is the expanded cache. The {path} path caches [c^KV; k^R]"
         + (": it rebuilds K and V after reading, which costs compute and the K/V it writes, not cache reads"
            if path == "naive" else "")),
    )
    return latent


@checker
def check_decode_cache_bytes(fn) -> None:
    """fn(path, context, batch, bytes_per_value) -> bytes read from the cache in one decode step of one layer."""
    for case in _BYTES_CASES:
        path, context, batch, bpv = case
        want = solution_decode_cache_bytes(*case)
        got = _call(fn, *case)
        if got is _NOT_DONE or (got := as_number(got)) is None:
            return
        if got == want:
            continue
        where = f"path={path!r}, context={context:,}, batch={batch}, {bpv} byte{'s' if bpv > 1 else ''} per value"
        print(f"For {where}: expected {want:,} bytes, got {got:,}.")
        for wrong, why in _bytes_mistakes(*case):
            if got == wrong:
                print("Hint: " + why + ".")
                return
        if bpv > 1 and got == want // bpv:
            print(f"Hint: {bpv} times too small: you counted values, not bytes.")
        elif got == want * 8:
            print("Hint: 8 times too much: that is bits, the question asks for bytes.")
        elif batch > 1 and got == want // batch:
            print(f"Hint: {batch} times too small: every sequence in the batch has its own cache.")
        else:
            print(f"Hint: off by a factor of {got / want:.4g}. expanded: batch x context x 128 x (192 + 128) x bytes; "
                  "naive and absorbed: batch x context x (512 + 64) x bytes.")
        return
    ratio = solution_decode_cache_bytes("expanded", 1, 1, 1) / solution_decode_cache_bytes("absorbed", 1, 1, 1)
    print(f"Correct: at 4K tokens in BF16 a step reads {solution_decode_cache_bytes('absorbed', 4096, 1, 2):,} bytes "
          f"of latent cache against {solution_decode_cache_bytes('expanded', 4096, 1, 2):,} of expanded K and V "
          f"({ratio:.1f}x). The naive path reads as little as the absorbed one; its cost is the re-expansion.")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 4: which path for T new tokens against S positions?
# ----------------------------------------------------------------------------------------------


def solution_choose_path(T, S):
    """The path with fewer matmul FLOPs at DeepSeek-V3 sizes: naive 2SHC(D+V) + 2HP(D+R+V) against
    absorbed 2THC(D+V) + 2HP(2C+R), with P = T(S-T) + T(T+1)/2 causal (query, key) pairs."""
    naive = attention_flops(V3, T, S, "naive")
    absorbed = attention_flops(V3, T, S, "absorbed")
    return "naive" if naive < absorbed else "absorbed"


_PATH_CASES = ((1, 8192), (4096, 4096), (512, 8192), (64, 8192), (16, 1024), (256, 1024), (32, 32), (150, 100_000),
               (200, 100_000))


def _gflop(T, S, path) -> str:
    return f"{attention_flops(V3, T, S, path) / 1e9:,.1f}"


@checker
def check_choose_path(fn) -> None:
    """fn(T, S) -> "naive" or "absorbed": the path with fewer FLOPs for T new tokens (the last T of S positions)."""
    answers = {}
    for T, S in _PATH_CASES:
        got = _call(fn, T, S)
        if got is _NOT_DONE:
            return
        if got not in ("naive", "absorbed"):
            print(f"For T={T}, S={S}: return the string 'naive' or 'absorbed', not {got!r}.")
            return
        answers[(T, S)] = got
    wants = {case: solution_choose_path(*case) for case in _PATH_CASES}
    wrong = [case for case in _PATH_CASES if answers[case] != wants[case]]
    if not wrong:
        print("Correct: naive for a fresh prompt (T = S, any length) and for chunks of more than about "
              "C(D+V) / (2C - D - V) = 512 x 256 / 768 = 171 new tokens against a long context; absorbed for "
              "decoding and short chunks, where too few queries share the expansion of all S positions.")
        return
    if len(wrong) == len(_PATH_CASES):
        print("Every answer is the other path: you have the two swapped (or compared with >).")
        return
    T, S = wrong[0]
    costs = f"naive {_gflop(T, S, 'naive')} GFLOP, absorbed {_gflop(T, S, 'absorbed')} GFLOP"
    if set(answers.values()) == {"absorbed"}:
        print(f"You always answer 'absorbed'. For T={T}, S={S} ({costs}): in latent space every (query, key) "
              "pair costs 2(2C+R) = 2,176 FLOPs against 2(D+R+V) = 640 after expansion, and expanding the "
              f"{S:,} positions is shared by {T:,} queries.")
    elif set(answers.values()) == {"naive"}:
        print(f"You always answer 'naive'. For T={T}, S={S} ({costs}) naive rebuilds K and V for all {S:,} "
              f"positions to serve only {T} quer{'y' if T == 1 else 'ies'}.")
    elif wants[(T, S)] == "absorbed":
        print(f"For T={T}, S={S} you chose naive, but {costs}: {T} queries do not pay back re-expanding all "
              f"{S:,} positions. Compare the two FLOP counts; no fixed threshold on T alone decides.")
    else:
        print(f"For T={T}, S={S} you chose absorbed, but {costs}: {T} queries share one expansion of the "
              f"{S:,} positions, and each (query, key) pair is 3.4x cheaper after it. Compare the two FLOP counts.")
    return
