"""Lesson 03 exercises: MLA's cache in bytes, splitting kv_b_proj, and what a latent cache stores.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong, or "Correct: ...".
It returns nothing (so a notebook cell echoes nothing) and never raises on a stub.
``solution_xxx`` is one answer.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..mla import MLA
from ._common import NOT_DONE as _NOT_DONE
from ._common import call_learner as _call
from ._common import checker, diagnose, run_cases

# ----------------------------------------------------------------------------------------------
# Exercise 1: MLA's cache in bytes
# ----------------------------------------------------------------------------------------------


def solution_mla_cache_bytes(config, tokens, batch, bytes_per_value):
    """[c^KV; k^R] per token and layer: (d_c + d_h^R) values, for every main layer, token and sequence."""
    per_layer = config.kv_lora_rank + config.qk_rope_head_dim
    return per_layer * config.num_hidden_layers * tokens * batch * bytes_per_value


_BYTES_CASES = (  # (config, tokens, batch, bytes_per_value)
    (ModelConfig.deepseek_v3(), 1, 1, 2),  # 70,272 bytes per token in BF16
    (ModelConfig.deepseek_v3(), 4096, 3, 1),  # FP8, batch 3
    (ModelConfig.tiny(num_hidden_layers=5, kv_lora_rank=48, qk_rope_head_dim=16), 100, 2, 4),  # odd sizes, fp32
)


def _mistakes(c: ModelConfig):
    """(values per token and layer a typical mistake counts, the explanation)."""
    H, C, R = c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim
    return (
        (C, f"you counted only the latent c^KV ({C} values): the rope key k^R ({R} values) is cached too "
            "(trap 8: a cache that forgets k^R cannot score old tokens' positions)"),
        (2 * C + R, "you counted the latent twice, once for K and once for V: K and V share ONE latent, "
                    "so it is cached once"),
        (2 * (C + R), "you doubled the entry as if K and V were cached apart: the one entry [c^KV; k^R] serves both"),
        (C + H * R, f"you counted one rope key per head ({H} x {R}): k^R is ONE key per token, shared by all heads"),
        (H * (c.qk_head_dim + c.v_head_dim), "that is the expanded per-head K and V (what MHA would cache): "
                                             "MLA caches the latent and the rope key instead"),
        (R, "you counted only the rope key: the latent c^KV is cached too"),
    )


def _diagnose_bytes(results) -> str:
    """The one typical mistake that explains every case, else the factor of the first wrong case."""
    wrong = next(r for r in results if r[1] != r[2])
    per_token = [  # what a mistaken count of one token and layer gives for a whole case
        (lambda *case, k=k: _mistakes(case[0])[k][0] * case[0].num_hidden_layers * case[1] * case[2] * case[3], text)
        for k, (_, text) in enumerate(_mistakes(results[0][0][0]))]
    factors = (
        (lambda case: 1 / case[0].num_hidden_layers,
         lambda case: f"{case[0].num_hidden_layers} times too small: every one of the "
                      f"{case[0].num_hidden_layers} layers has its own cache"),
        (lambda case: (case[0].num_hidden_layers + case[0].num_nextn_predict_layers) / case[0].num_hidden_layers,
         lambda case: "you counted the MTP module's layer too: this exercise (and the paper's 70,272) counts "
                      "the main model's num_hidden_layers"),
        (lambda case: 1 / case[3], lambda case: f"you counted values, not bytes ({case[3]} bytes each)"),
        (lambda case: 8.0, lambda case: "8 times too much: that is bits, the question asks for bytes"),
        (lambda case: 1 / case[1], lambda case: f"the cache grows with every token (tokens={case[1]})"),
        (lambda case: 1 / case[2], lambda case: f"each sequence in the batch has its own cache (batch={case[2]})"),
    )
    scaled = [(lambda *case, f=factor: solution_mla_cache_bytes(*case) * f(case), lambda _, t=text: t(wrong[0]))
              for factor, text in factors]
    found = diagnose(results, per_token + scaled)
    if found:
        return found
    case, got, want = wrong
    return (f"off by a factor of {got / want:.4g}; write it as (kv_lora_rank + qk_rope_head_dim) x "
            "num_hidden_layers x tokens x batch x bytes_per_value")


@checker
def check_mla_cache_bytes(fn) -> None:
    """fn(config, tokens, batch, bytes_per_value) -> bytes of MLA's cache over the main model's layers."""
    results = run_cases(fn, _BYTES_CASES, solution_mla_cache_bytes)
    if results is None:
        return
    wrong = [r for r in results if r[1] != r[2]]
    if wrong:
        (config, tokens, batch, bpv), got, want = wrong[0]
        print(f"For {config.num_hidden_layers} layers, kv_lora_rank={config.kv_lora_rank}, "
              f"qk_rope_head_dim={config.qk_rope_head_dim}, {config.num_attention_heads} heads, tokens={tokens}, "
              f"batch={batch}, {bpv} bytes per value: expected {want:,} bytes, got {got:,}.")
        print("Hint: " + _diagnose_bytes(results) + ".")
        return
    print("Correct: DeepSeek-V3 caches (512 + 64) x 61 layers x 2 bytes = 70,272 bytes per token in BF16, "
          "and the number of heads does not appear in the formula.")


# ----------------------------------------------------------------------------------------------
# Exercise 2: split kv_b_proj into W^UK and W^UV
# ----------------------------------------------------------------------------------------------


def solution_split_kv_b(weight, n_heads, qk_nope_head_dim, v_head_dim):
    """weight (H*(D+V), C), rows per head [k_nope (D); v (V)] -> W^UK (H, D, C), W^UV (H, V, C)."""
    per_head = weight.view(n_heads, qk_nope_head_dim + v_head_dim, -1)  # (H, D+V, C)
    return per_head[:, :qk_nope_head_dim], per_head[:, qk_nope_head_dim:]


_SPLIT_CASES = ((3, 4, 6, 5), (4, 8, 8, 16))  # (n_heads, qk_nope_head_dim, v_head_dim, kv_lora_rank)


@checker
def check_split_kv_b(fn) -> None:
    """fn(weight (H*(D+V), C), n_heads, qk_nope_head_dim, v_head_dim) -> (w_uk (H, D, C), w_uv (H, V, C))."""
    gen = torch.Generator().manual_seed(0)
    for H, D, V, C in _SPLIT_CASES:
        weight = torch.randn(H * (D + V), C, generator=gen)
        want_uk, want_uv = solution_split_kv_b(weight, H, D, V)
        got = _call(fn, weight, H, D, V,
                    hint="kv_b_proj's rows come head by head, and within a head the K rows come first.")
        if got is _NOT_DONE:
            return
        where = f"With H={H}, D={D}, V={V}, C={C} (weight {tuple(weight.shape)})"
        if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(isinstance(t, torch.Tensor) for t in got):
            print(f"Return two tensors (w_uk, w_uv), not {type(got).__name__}.")
            return
        uk, uv = got
        if uk.shape == want_uv.shape and uv.shape == want_uk.shape and D != V:
            print(f"{where}: w_uk has shape {tuple(uk.shape)} and w_uv {tuple(uv.shape)}: swapped? "
                  f"Each head's first D={D} rows are W^UK (k_nope), the next V={V} rows W^UV.")
            return
        if uk.shape != want_uk.shape or uv.shape != want_uv.shape:
            msg = (f"{where}: expected w_uk {tuple(want_uk.shape)} (H, D, C) and w_uv {tuple(want_uv.shape)} "
                   f"(H, V, C), got {tuple(uk.shape)} and {tuple(uv.shape)}.")
            if uk.shape == (H, C, D) or uv.shape == (H, C, V):
                msg += " Keep the weight's (out, in) layout: don't transpose the last two axes."
            print(msg)
            return
        if torch.equal(uk, want_uv) or torch.equal(uv, want_uk):
            print(f"{where}: right shapes, but K and V are swapped: each head's rows are [k_nope (D); v (V)], "
                  "K first.")
            return
        block_uk = weight[: H * D].reshape(H, D, C)
        if torch.equal(uk, block_uk):
            print(f"{where}: you took the first H*D={H * D} rows as all heads' W^UK. kv_b_proj's rows are grouped "
                  f"PER HEAD: [head 0 k_nope ({D}); head 0 v ({V}); head 1 k_nope; ...]. Separate the heads first, "
                  "then split each head's rows.")
            return
        head_minor = weight.view(D + V, H, C).transpose(0, 1)  # (H, D+V, C) read as if the head were inner
        if torch.equal(uk, head_minor[:, :D]) and torch.equal(uv, head_minor[:, D:]):
            print(f"{where}: you read the rows as if the head were the INNER index (row i*H + h). The head is the "
                  "outer one: all D+V rows of head 0 come first, then head 1's.")
            return
        per_head = weight.view(H, D + V, C)
        if torch.equal(uk, per_head[:, V:]) and torch.equal(uv, per_head[:, :V]):
            print(f"{where}: you took each head's LAST D rows as W^UK and its first V rows as W^UV. Within a "
                  "head the K rows come first: rows 0..D-1 are W^UK, rows D..D+V-1 are W^UV.")
            return
        if not (torch.equal(uk, want_uk) and torch.equal(uv, want_uv)):
            print(f"{where}: right shapes, wrong values; not one of the usual mistakes. "
                  "Row h*(D+V) + i of kv_b_proj is row i of head h: "
                  "rows 0..D-1 of a head are W^UK, rows D..D+V-1 are W^UV.")
            return
    print("Correct: kv_b_proj.weight.view(H, D+V, C) split at D on dim 1 gives W^UK (H, D, C) and W^UV (H, V, C), "
          "the same views as MLA.w_uk and MLA.w_uv.")


# ----------------------------------------------------------------------------------------------
# Exercise 3: what a latent cache stores (fix the cache that stores expanded K)
# ----------------------------------------------------------------------------------------------


def solution_cache_entry(mla, h):
    """What MLA caches for tokens h (B, T, d) at positions 0..T-1: c^KV (B, T, C) and k^R (B, T, R)."""
    from ..rope import apply_rope

    c = mla.config
    c_kv, k_r = mla.kv_a_proj_with_mqa(h).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
    cos, sin = mla.rotary_emb(torch.arange(h.shape[1]))
    return mla.kv_a_layernorm(c_kv), apply_rope(k_r, cos, sin, c.rope_interleave)


def _exercise_mla(seed: int = 0) -> MLA:
    """A small MLA with random weights, including the latent norm's scale (so a missing norm shows)."""
    torch.manual_seed(seed)
    mla = MLA(ModelConfig.tiny())
    with torch.no_grad():
        mla.kv_a_layernorm.weight.uniform_(0.5, 1.5)
        mla.q_a_layernorm.weight.uniform_(0.5, 1.5)
    return mla


def _components_off(*args, **kwargs):
    raise RuntimeError("mla.components is switched off in this exercise: build c_kv and k_r from the weights")


@checker
def check_cache_entry(fn) -> None:
    """fn(mla, h (B, T, d)) -> (c_kv (B, T, C), k_r (B, T, R)): exactly what a LatentCache stores."""
    from ..rope import apply_rope

    mla = _exercise_mla()
    c = mla.config
    H, C, R = c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(2, 5, c.hidden_size, generator=gen)
    with torch.no_grad():
        want_c, want_r = mla.components(h, torch.arange(5))[3:]
        raw_c, raw_r = mla.kv_a_proj_with_mqa(h).split([C, R], dim=-1)
        mla.components = _components_off  # an instance attribute hides the method for this check
        try:
            got = _call(fn, mla, h, hint="kv_a_proj_with_mqa gives [latent; rope key]; split it at kv_lora_rank.")
        finally:
            del mla.components
    if got is _NOT_DONE:
        return
    if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(isinstance(t, torch.Tensor) for t in got):
        print(f"Return two tensors (c_kv, k_r), not {type(got).__name__}.")
        return
    c_kv, k_r = got
    if c_kv.dim() == 4 or k_r.dim() == 4:
        expanded = H * (c.qk_head_dim + c.v_head_dim)
        print(f"You returned per-head tensors {tuple(c_kv.shape)} and {tuple(k_r.shape)}: that is the expanded "
              f"K/V cache, {expanded} values per token and layer instead of C + R = {C + R} "
              f"({expanded // (C + R)}x more; trap 8). Cache the latent and the one rope key, before any "
              "up-projection.")
        return
    if c_kv.shape == want_r.shape and k_r.shape == want_c.shape:
        print(f"Swapped: c_kv should be (B, T, C) = {tuple(want_c.shape)} and k_r (B, T, R) = {tuple(want_r.shape)}.")
        return
    if c_kv.shape != want_c.shape or k_r.shape != want_r.shape:
        print(f"Expected c_kv {tuple(want_c.shape)} (B, T, C) and k_r {tuple(want_r.shape)} (B, T, R), "
              f"got {tuple(c_kv.shape)} and {tuple(k_r.shape)}.")
        return
    ok_c = torch.allclose(c_kv, want_c, atol=1e-5, rtol=1e-4)
    ok_r = torch.allclose(k_r, want_r, atol=1e-5, rtol=1e-4)
    if not ok_c:
        plain = raw_c * torch.rsqrt(raw_c.pow(2).mean(-1, keepdim=True) + mla.kv_a_layernorm.eps)
        if torch.allclose(c_kv, raw_c, atol=1e-5):
            print("c_kv is the raw latent W^DKV h: the cache stores it AFTER kv_a_layernorm (trap 9; the checkpoint's "
                  "kv_b_proj expects normalized latents).")
        elif torch.allclose(c_kv, plain, atol=1e-5):
            print("c_kv is normalized but without the learned scale: use mla.kv_a_layernorm, which multiplies "
                  "by its weight.")
        else:
            print("c_kv has the right shape but wrong values: it is kv_a_layernorm applied to the first "
                  f"kv_lora_rank={C} outputs of kv_a_proj_with_mqa.")
        return
    if not ok_r:
        if torch.allclose(k_r, raw_r, atol=1e-5):
            print("k_r is not rotated: the cache keeps the rope key AFTER RoPE at its own position, so no old "
                  "entry is ever touched again. Apply mla.rotary_emb(positions) with dsv3_edu.rope.apply_rope.")
        else:
            cos, sin = mla.rotary_emb(torch.arange(5))
            if torch.allclose(k_r, apply_rope(raw_r, cos, sin, not c.rope_interleave), atol=1e-5):
                print("k_r is rotated with the wrong pair layout: DeepSeek's weights rotate neighbouring pairs "
                      "(x0, x1), (x2, x3), ... (rope_interleave=True; trap 10).")
            else:
                print(f"k_r has the right shape but wrong values: it is RoPE of the last qk_rope_head_dim={R} "
                      "outputs of kv_a_proj_with_mqa, at positions 0..T-1.")
        return
    print(f"Correct: per token and layer the cache holds c_kv ({C}) and k_r ({R}): {C + R} values, "
          f"against {H * (c.qk_head_dim + c.v_head_dim)} for the expanded per-head K and V.")
