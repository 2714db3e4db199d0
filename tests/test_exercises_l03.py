"""Lesson 03 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import torch
from exercise_helpers import run, stub

from dsv3_edu.config import ModelConfig
from dsv3_edu.exercises import l03_mla as ex
from dsv3_edu.mla import MLA, expand_kv
from dsv3_edu.rope import apply_rope


def test_solution_matches_the_package_numbers():
    v3 = ModelConfig.deepseek_v3()
    assert ex.solution_mla_cache_bytes(v3, 1, 1, 2) == 70_272
    mla = ex._exercise_mla()
    uk, uv = ex.solution_split_kv_b(mla.kv_b_proj.weight, 4, 16, 16)
    assert torch.equal(uk, mla.w_uk) and torch.equal(uv, mla.w_uv)


def test_mla_cache_bytes(capsys):
    ok, out = run(capsys, ex.check_mla_cache_bytes, ex.solution_mla_cache_bytes)
    assert ok and "70,272" in out

    def only_latent(c, t, b, n):
        return c.kv_lora_rank * c.num_hidden_layers * t * b * n

    ok, out = run(capsys, ex.check_mla_cache_bytes, only_latent)
    assert not ok and "expected 70,272 bytes, got 62,464" in out and "rope key k^R (64 values) is cached" in out

    def twice(c, t, b, n):
        return (2 * c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * t * b * n

    ok, out = run(capsys, ex.check_mla_cache_bytes, twice)
    assert not ok and "share ONE latent" in out

    def per_head_rope(c, t, b, n):
        return (c.kv_lora_rank + c.num_attention_heads * c.qk_rope_head_dim) * c.num_hidden_layers * t * b * n

    ok, out = run(capsys, ex.check_mla_cache_bytes, per_head_rope)
    assert not ok and "one rope key per head (128 x 64)" in out

    def expanded(c, t, b, n):
        return c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * c.num_hidden_layers * t * b * n

    ok, out = run(capsys, ex.check_mla_cache_bytes, expanded)
    assert not ok and "expanded per-head K and V" in out

    def with_mtp(c, t, b, n):
        return (c.kv_lora_rank + c.qk_rope_head_dim) * (c.num_hidden_layers + 1) * t * b * n

    ok, out = run(capsys, ex.check_mla_cache_bytes, with_mtp)
    assert not ok and "MTP module's layer" in out

    def no_batch(c, t, b, n):
        return (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * t * n

    ok, out = run(capsys, ex.check_mla_cache_bytes, no_batch)
    assert not ok and "each sequence in the batch" in out and "batch=3" in out

    def values(c, t, b, n):
        return (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * t * b

    ok, out = run(capsys, ex.check_mla_cache_bytes, values)
    assert not ok and "counted values, not bytes" in out
    ok, out = run(capsys, ex.check_mla_cache_bytes, lambda *a: None)
    assert not ok and "forget `return`" in out
    ok, out = run(capsys, ex.check_mla_cache_bytes, lambda *a: 7)
    assert not ok and "off by a factor" in out


def test_split_kv_b(capsys):
    ok, out = run(capsys, ex.check_split_kv_b, ex.solution_split_kv_b)
    assert ok and "MLA.w_uk" in out

    def blocks(w, H, D, V):  # [all K rows; all V rows]: the classic mistake
        return w[: H * D].reshape(H, D, -1), w[H * D :].reshape(H, V, -1)

    ok, out = run(capsys, ex.check_split_kv_b, blocks)
    assert not ok and "PER HEAD" in out and "view(" not in out  # the idea, not the lesson's code

    def swapped(w, H, D, V):
        uk, uv = ex.solution_split_kv_b(w, H, D, V)
        return uv, uk

    ok, out = run(capsys, ex.check_split_kv_b, swapped)
    assert not ok and "swapped" in out

    def transposed(w, H, D, V):
        uk, uv = ex.solution_split_kv_b(w, H, D, V)
        return uk.transpose(1, 2), uv.transpose(1, 2)

    ok, out = run(capsys, ex.check_split_kv_b, transposed)
    assert not ok and "don't transpose" in out
    ok, out = run(capsys, ex.check_split_kv_b, lambda w, H, D, V: w)
    assert not ok and "Return two tensors" in out


def test_cache_entry(capsys):
    ok, out = run(capsys, ex.check_cache_entry, ex.solution_cache_entry)
    assert ok and "40 values, against 160" in out

    def expanded(mla, h):  # the buggy cache of the lesson: stores per-head K and V
        c_kv, k_r = ex.solution_cache_entry(mla, h)
        return expand_kv(c_kv, k_r, mla.w_uk, mla.w_uv)

    ok, out = run(capsys, ex.check_cache_entry, expanded)
    assert not ok and "expanded K/V cache, 160 values" in out and "4x more" in out

    def no_norm(mla, h):
        c = mla.config
        c_kv, _ = mla.kv_a_proj_with_mqa(h).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        return c_kv, ex.solution_cache_entry(mla, h)[1]

    ok, out = run(capsys, ex.check_cache_entry, no_norm)
    assert not ok and "trap 9" in out

    def no_rope(mla, h):
        c = mla.config
        _, k_r = mla.kv_a_proj_with_mqa(h).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        return ex.solution_cache_entry(mla, h)[0], k_r

    ok, out = run(capsys, ex.check_cache_entry, no_rope)
    assert not ok and "not rotated" in out

    def half_split(mla, h):
        c = mla.config
        _, k_r = mla.kv_a_proj_with_mqa(h).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        cos, sin = mla.rotary_emb(torch.arange(h.shape[1]))
        return ex.solution_cache_entry(mla, h)[0], apply_rope(k_r, cos, sin, interleaved=False)

    ok, out = run(capsys, ex.check_cache_entry, half_split)
    assert not ok and "trap 10" in out

    def uses_components(mla, h):
        comp = mla.components(h, torch.arange(h.shape[1]))
        return comp.c_kv, comp.k_r

    ok, out = run(capsys, ex.check_cache_entry, uses_components)
    assert not ok and "switched off" in out
    assert isinstance(MLA.components, type(MLA.forward))  # the method is back on the class


def test_cache_entry_restores_components(capsys):
    ex.check_cache_entry(stub)
    mla = ex._exercise_mla()
    assert "components" not in vars(mla)
    mla.components(torch.randn(1, 2, 64), torch.arange(2))
