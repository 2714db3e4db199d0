"""Causal MHA/GQA/MQA with a KV cache, and the toy LM: cached decoding must equal uncached decoding."""

import pytest
import torch
import torch.nn.functional as F

from dsv3_edu.accounting import kv_cache_bytes, kv_cache_bytes_per_token
from dsv3_edu.attention import (
    CausalSelfAttention,
    KVCache,
    ToyLM,
    attention_kind,
    causal_mask,
    check_heads,
    repeat_kv,
    scaled_dot_product_attention,
)
from dsv3_edu.config import ModelConfig

KINDS = [(4, 4), (4, 2), (4, 1)]  # (n_heads, n_kv_heads): MHA, GQA, MQA


def test_causal_mask_keeps_the_diagonal():
    m = causal_mask(4, 4)
    assert not m.diagonal().any() and not m[0, 0]  # every token sees itself: no fully masked row
    assert torch.equal(m, torch.ones(4, 4, dtype=torch.bool).triu(1))
    # 2 new queries after 3 cached positions: they sit at positions 3 and 4.
    assert causal_mask(2, 5).tolist() == [[False] * 4 + [True], [False] * 5]
    with pytest.raises(ValueError, match="only 2 keys"):
        causal_mask(3, 2)


def test_sdpa_matches_torch():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 6))
    assert torch.all(w.triu(1) == 0)
    # queries at the end of a longer key sequence (decoding with a cache)
    q2 = q[:, :, -2:]
    mask = ~causal_mask(2, 6)
    torch.testing.assert_close(scaled_dot_product_attention(q2, k, v),
                               F.scaled_dot_product_attention(q2, k, v, attn_mask=mask))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, causal=False),
                               F.scaled_dot_product_attention(q, k, v))


def test_repeat_kv_groups_heads_in_order():
    x = torch.arange(2.0).view(1, 2, 1, 1)
    assert repeat_kv(x, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    assert repeat_kv(x, 1) is x


@pytest.mark.parametrize("n_heads,n_kv", KINDS)
def test_attention_matches_torch_gqa(n_heads, n_kv):
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, n_heads, n_kv)
    x = torch.randn(2, 7, 32)
    q = attn.q_proj(x).view(2, 7, n_heads, 8).transpose(1, 2)
    k = attn.k_proj(x).view(2, 7, n_kv, 8).transpose(1, 2)
    v = attn.v_proj(x).view(2, 7, n_kv, 8).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(attn(x), attn.o_proj(ref.transpose(1, 2).reshape(2, 7, 32)))


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    gqa = CausalSelfAttention(32, 4, 2)
    mha = CausalSelfAttention(32, 4, 4)
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):  # K/V head g -> query heads 2g, 2g+1
            w = getattr(gqa, name).weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
            getattr(mha, name).weight.copy_(w)
    x = torch.randn(1, 5, 32)
    torch.testing.assert_close(gqa(x), mha(x))


@pytest.mark.parametrize("n_heads,n_kv", KINDS)
def test_attention_with_cache_equals_full_forward(n_heads, n_kv):
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, n_heads, n_kv, head_dim=12, v_head_dim=6)
    x = torch.randn(2, 9, 32)
    full = attn(x)
    cache = KVCache(1)
    steps = [attn(x[:, :4], cache)] + [attn(x[:, t : t + 1], cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)
    assert cache.k[0].shape == (2, n_kv, 9, 12) and cache.v[0].shape == (2, n_kv, 9, 6)
    assert cache.seq_len() == 9
    assert cache.numel() == 2 * n_kv * 9 * (12 + 6)
    assert cache.nbytes() == kv_cache_bytes(1, n_kv, 12, 6, torch.float32, tokens=9, batch=2)


def test_attention_kind_and_head_errors():
    assert [attention_kind(h, g) for h, g in KINDS] == ["mha", "gqa", "mqa"]
    assert attention_kind(1, 1) == "mha"
    with pytest.raises(ValueError, match="more than n_heads"):
        check_heads(4, 8)
    with pytest.raises(ValueError, match=r"does not divide n_heads=12.*\[1, 2, 3, 4, 6, 12\]"):
        check_heads(12, 5)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            check_heads(4, bad)
        with pytest.raises(ValueError, match="positive integer"):
            check_heads(bad, 1)
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        CausalSelfAttention(30, 4)
    with pytest.raises(ValueError, match="head_dim"):
        CausalSelfAttention(32, 4, head_dim=0)
    with pytest.raises(ValueError, match="v_head_dim"):
        CausalSelfAttention(32, 4, v_head_dim=-3)
    with pytest.raises(ValueError, match="hidden_size"):
        CausalSelfAttention(0, 4)
    with pytest.raises(ValueError, match=r"must be \(B, T, 32\)"):
        CausalSelfAttention(32, 4)(torch.randn(5, 16))
    assert CausalSelfAttention(30, 4, head_dim=8).head_dim == 8  # explicit head_dim needs no divisibility


def test_kv_cache_errors_and_bookkeeping():
    with pytest.raises(ValueError, match="n_layers"):
        KVCache(0)
    cache = KVCache(2)
    assert cache.seq_len() == 0 and cache.nbytes() == 0 and cache.numel() == 0
    k, v = torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5)
    for bad in (2, -1, True, 0.0):
        with pytest.raises(ValueError, match="layers 0..1"):
            cache.update(bad, k, v)
    with pytest.raises(ValueError, match="4-d"):
        cache.update(0, k[0], v)
    with pytest.raises(ValueError, match="must agree"):
        cache.update(0, k, torch.zeros(1, 2, 2, 5))
    cache.update(0, k, v)
    with pytest.raises(ValueError, match="differ outside the sequence axis"):
        cache.update(0, torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 5))
    with pytest.raises(ValueError, match="differ outside the sequence axis"):
        cache.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 6))
    k_all, v_all = cache.update(0, torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 5))
    assert k_all.shape == (1, 2, 4, 4) and v_all.shape == (1, 2, 4, 5)
    assert k_all[:, :, -1].eq(1).all() and k_all[:, :, :3].eq(0).all()  # new positions go last
    assert cache.seq_len(1) == 0 and cache.seq_len() == 4
    assert cache.nbytes() == 4 * 2 * 4 * (4 + 5) and "seq_len=4" in repr(cache)
    cache.reset()
    assert cache.seq_len() == 0 and cache.nbytes() == 0


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generate_with_and_without_cache_gives_identical_tokens(n_kv, seed):
    model = ToyLM(n_kv_heads=n_kv, seed=seed)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(seed))
    slow = model.generate(prompt, 30, use_cache=False)
    cache = model.new_cache()
    fast = model.generate(prompt, 30, use_cache=True, cache=cache)
    assert torch.equal(slow, fast) and fast.shape == (2, 35)
    assert torch.equal(fast[:, :5], prompt)
    # the last new token was never fed back, so the cache holds prompt + 29 positions
    assert cache.seq_len() == 34
    head_dim = 64 // 4
    assert cache.nbytes() == kv_cache_bytes(2, n_kv, head_dim, head_dim, torch.float32, tokens=34, batch=2)


def test_cached_logits_equal_full_logits():
    model = ToyLM(n_kv_heads=2)
    idx = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(3))
    cache = model.new_cache()
    steps = [model(idx[:, :6], cache)] + [model(idx[:, t : t + 1], cache) for t in range(6, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), model(idx), atol=1e-5, rtol=1e-5)


def test_toy_from_config_cache_matches_kv_cache_bytes_per_token():
    config = ModelConfig.tiny()
    for kind, n_kv in (("mha", 4), ("gqa", 2), ("mqa", 1)):
        model = ToyLM.from_config(config, n_kv_heads=n_kv)
        cache = model.new_cache()
        model.generate(torch.zeros(1, 3, dtype=torch.long), 8, cache=cache)
        groups = n_kv if kind == "gqa" else None
        assert cache.nbytes() == cache.seq_len() * kv_cache_bytes_per_token(config, kind, torch.float32, groups)
    model = ToyLM.from_config(config, n_kv_heads=1).to(torch.bfloat16)
    cache = model.new_cache()
    model(torch.zeros(1, 7, dtype=torch.long), cache)
    assert cache.k[0].dtype == torch.bfloat16
    assert cache.nbytes() == 7 * kv_cache_bytes_per_token(config, "mqa", torch.bfloat16)


def test_toy_seeded_init_and_errors():
    a, b, c = ToyLM(seed=5), ToyLM(seed=5), ToyLM(seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert torch.equal(a.norm.weight, torch.ones(64))
    prompt = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(a.generate(prompt, 0), prompt) and torch.equal(a.generate(prompt, 0, use_cache=False), prompt)
    with pytest.raises(ValueError, match=r"\(B, T\) token ids"):
        a(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        ToyLM(max_seq_len=8).generate(prompt, 10)
    with pytest.raises(ValueError, match="non-negative"):
        a.generate(prompt, -1)
    with pytest.raises(ValueError, match="use_cache=False"):
        a.generate(prompt, 2, use_cache=False, cache=a.new_cache())
    cache = a.new_cache()
    a.generate(prompt, 2, cache=cache)
    with pytest.raises(ValueError, match="empty cache"):
        a.generate(prompt, 2, cache=cache)
    for name in ("vocab_size", "n_layers", "max_seq_len"):
        with pytest.raises(ValueError, match=name):
            ToyLM(**{name: 0})
