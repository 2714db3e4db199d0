"""MLA: the two paths agree, caching is exact and minimal, the layer equals transformers' DeepseekV3Attention,
and each MLA trap (traps 6-10, section 7 of notebooks/REFERENCE.md) is caught by a test that builds the
broken variant."""

import pytest
import torch
from torch import nn

from dsv3_edu.accounting import kv_cache_values_per_layer
from dsv3_edu.config import ModelConfig
from dsv3_edu.mla import (
    MLA,
    ExpandedKVCache,
    LatentCache,
    absorbed_attention,
    causal_mask,
    naive_attention,
)
from dsv3_edu.rope import RotaryEmbedding, apply_rope, deinterleave

YARN = {"type": "yarn", "factor": 8, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 64}  # tiny max_position_embeddings 512 = 8 x 64
CONFIGS = {
    "q_lora": ModelConfig.tiny(),
    "no_q_lora": ModelConfig.tiny(q_lora_rank=None),
    "q_lora_yarn": ModelConfig.tiny(rope_scaling=YARN),
    "no_q_lora_yarn": ModelConfig.tiny(q_lora_rank=None, rope_scaling=YARN),
}
close = dict(rtol=1e-5, atol=1e-5)


def make_mla(config, seed=0, layer_idx=0):
    """An MLA layer with random weights large enough for peaked attention, and non-trivial norm weights."""
    torch.manual_seed(seed)
    mla = MLA(config, layer_idx)
    with torch.no_grad():
        for name, p in mla.named_parameters():
            if name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 2.0 / p.shape[1] ** 0.5)
    return mla


def inputs(config, B=2, T=9, seed=1):
    torch.manual_seed(seed)
    return torch.randn(B, T, config.hidden_size)


def decode(mla, x, cache, prefill=3, attn_impl=None):
    """Prefill the first tokens, then feed the rest one at a time; return the outputs in order."""
    outs = [mla(x[:, :prefill], cache=cache, attn_impl=attn_impl)]
    outs += [mla(x[:, t : t + 1], cache=cache, attn_impl=attn_impl) for t in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1)


# --------------------------------------------------------- the two paths agree
@pytest.mark.parametrize("name", ["q_lora", "no_q_lora", "q_lora_yarn"])
def test_absorbed_equals_naive_prefill(name):
    mla, x = make_mla(CONFIGS[name]), inputs(CONFIGS[name])
    torch.testing.assert_close(mla(x, attn_impl="absorbed"), mla(x, attn_impl="naive"), **close)


@pytest.mark.parametrize("name", ["q_lora", "no_q_lora", "q_lora_yarn"])
def test_absorbed_equals_naive_cached_decoding(name):
    mla, x = make_mla(CONFIGS[name]), inputs(CONFIGS[name])
    absorbed = decode(mla, x, LatentCache(1), attn_impl="absorbed")
    naive = decode(mla, x, LatentCache(1), attn_impl="naive")
    torch.testing.assert_close(absorbed, naive, **close)


@pytest.mark.parametrize("attn_impl", ["naive", "absorbed", "expanded"])
@pytest.mark.parametrize("name", ["q_lora", "no_q_lora_yarn"])
def test_cached_decoding_equals_full_forward(name, attn_impl):
    config = CONFIGS[name]
    mla, x = make_mla(config), inputs(config)
    full = mla(x, attn_impl="naive")
    if attn_impl == "expanded":
        cached = decode(mla, x, ExpandedKVCache(1))
    else:
        cached = decode(mla, x, LatentCache(1), attn_impl=attn_impl)
    torch.testing.assert_close(cached, full, **close)


def test_crop_rolls_back():
    config = CONFIGS["q_lora"]
    mla, x = make_mla(config), inputs(config)
    cache = LatentCache(1)
    mla(x[:, :5], cache=cache)
    mla(x[:, 5:8], cache=cache)  # three "draft" tokens, then rejected
    cache.crop(5)
    assert cache.seq_len() == 5
    torch.testing.assert_close(mla(x[:, 5:9], cache=cache), mla(x)[:, 5:9], **close)


def test_config_attn_impl_is_the_default():
    config = ModelConfig.tiny(attn_impl="absorbed")
    mla = make_mla(config)
    mla.record_attn = True
    x = inputs(config)
    torch.testing.assert_close(mla(x), mla(x, attn_impl="naive"), **close)


def test_gradients_agree_between_paths():
    """Training may use either path: the gradients are the same too."""
    config = CONFIGS["q_lora_yarn"]
    x = inputs(config, T=6)
    grads = {}
    for impl in ("naive", "absorbed"):
        mla = make_mla(config)
        mla(x, attn_impl=impl).square().mean().backward()
        grads[impl] = {n: p.grad for n, p in mla.named_parameters()}
    for name, g in grads["naive"].items():
        torch.testing.assert_close(grads["absorbed"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_runs_and_paths_agree_loosely():
    config = CONFIGS["q_lora"]
    mla, x = make_mla(config).to(torch.bfloat16), inputs(config).to(torch.bfloat16)
    naive, absorbed = mla(x, attn_impl="naive"), mla(x, attn_impl="absorbed")
    assert naive.dtype == torch.bfloat16
    torch.testing.assert_close(absorbed.float(), naive.float(), rtol=0.05, atol=0.1)


# ---------------------------------------------------------------- the cache
def test_latent_cache_holds_exactly_latent_and_rope_key():
    config = ModelConfig.tiny(num_hidden_layers=3)
    layers = [make_mla(config, layer_idx=i) for i in range(3)]
    cache, expanded = LatentCache(3), ExpandedKVCache(3)
    B, T = 2, 7
    x = inputs(config, B, T)
    for layer in layers:
        layer(x, cache=cache)
        layer(x, cache=expanded)
    C, R = config.kv_lora_rank, config.qk_rope_head_dim
    assert cache.numel() == B * T * 3 * (C + R) == B * T * 3 * kv_cache_values_per_layer(config, "mla")
    assert cache.nbytes() == 4 * cache.numel()
    H, D, V = config.num_attention_heads, config.qk_nope_head_dim, config.v_head_dim
    assert expanded.numel() == B * T * 3 * H * (D + R + V) == B * T * 3 * kv_cache_values_per_layer(config, "mha")
    assert [cache.seq_len(i) for i in range(3)] == [T, T, T]
    c_kv, k_r = cache.layers[0]
    assert c_kv.shape == (B, T, C) and k_r.shape == (B, T, R)
    cache.crop(0)
    assert cache.numel() == 0 and cache.seq_len() == 0


def test_released_sizes_per_token():
    config = ModelConfig.deepseek_v3()
    assert kv_cache_values_per_layer(config, "mla") == 576
    assert kv_cache_values_per_layer(config, "mha") == 40960


# ------------------------------------------------------------ transformers
def hf_attention(config, mla):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    hf_config = DeepseekV3Config(**config.to_hf("transformers"), attn_implementation="eager")
    attn = DeepseekV3Attention(hf_config, layer_idx=0)
    attn.load_state_dict(mla.state_dict())  # same names, same layouts: a plain copy
    return attn, DeepseekV3RotaryEmbedding(hf_config)


def run_hf(attn, rotary, x, start=0):
    B, T, _ = x.shape
    positions = torch.arange(start, start + T)[None].expand(B, T)
    mask = torch.zeros(B, 1, T, T).masked_fill(causal_mask(T, T), float("-inf"))
    return attn(x, position_embeddings=rotary(x, positions), attention_mask=mask)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("attn_impl", ["naive", "absorbed"])
def test_matches_transformers(name, attn_impl):
    config = CONFIGS[name]
    mla, x = make_mla(config), inputs(config, T=12)
    hf, rotary = hf_attention(config, mla)
    mla.record_attn = True
    with torch.no_grad():
        expected, expected_attn = run_hf(hf, rotary, x)
        torch.testing.assert_close(mla(x, attn_impl=attn_impl), expected, **close)
    torch.testing.assert_close(mla.last_attn, expected_attn, **close)


def test_state_dict_names_are_the_checkpoint_names():
    names = ["kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight"]
    assert sorted(MLA(CONFIGS["q_lora"]).state_dict()) == sorted(
        names + ["q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight"]
    )
    assert sorted(MLA(CONFIGS["no_q_lora"]).state_dict()) == sorted(names + ["q_proj.weight"])
    mla = MLA(CONFIGS["q_lora"])
    c = mla.config
    assert mla.kv_a_proj_with_mqa.weight.shape == (c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size)
    assert mla.kv_b_proj.weight.shape == (c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)


# ------------------------------------------------- the traps of section 7
def test_trap6_rope_on_up_projected_keys_breaks_absorption():
    """With RoPE on k^C = W^UK c^KV, the score q^C R_{n-m} W^UK c depends on the offset, so no fixed W^UK folds
    into the query. The decoupled design (RoPE only on the separate q^R, k^R) absorbs exactly."""
    config = CONFIGS["q_lora"]
    mla, x = make_mla(config), inputs(config)
    T = x.shape[1]
    comp = mla.components(x, torch.arange(T))
    w_uk = mla.w_uk
    k_nope = torch.einsum("btc,hdc->bhtd", comp.c_kv, w_uk)  # (B, H, T, D)
    absorbed = torch.einsum("bhtd,hdc,bsc->bhts", comp.q_nope, w_uk, comp.c_kv)  # q^C . k^C, absorbed
    torch.testing.assert_close(absorbed, comp.q_nope @ k_nope.transpose(-1, -2), **close)  # decoupled: exact
    cos, sin = RotaryEmbedding(config.replace(qk_rope_head_dim=config.qk_nope_head_dim))(torch.arange(T))
    broken = apply_rope(comp.q_nope, cos, sin) @ apply_rope(k_nope, cos, sin).transpose(-1, -2)
    diagonal = torch.arange(T)
    torch.testing.assert_close(broken[..., diagonal, diagonal], absorbed[..., diagonal, diagonal], **close)
    off_diagonal = ~torch.eye(T, dtype=torch.bool)
    assert (broken - absorbed)[..., off_diagonal].abs().max() > 0.1  # only offset 0 survives


def test_trap7_absorbed_path_needs_the_same_softmax_scale():
    """The absorbed dot product is 576-wide at full size, but it is the same number as the 192-wide one:
    scaling it by 1/sqrt(d_c + d_h^R) (what scaled_dot_product_attention would do by default) is wrong."""
    config = CONFIGS["q_lora_yarn"]
    mla, x = make_mla(config), inputs(config)
    comp = mla.components(x, torch.arange(x.shape[1]))
    args = (comp.q_nope, comp.q_r, comp.c_kv, comp.k_r, mla.w_uk, mla.w_uv)
    mask = causal_mask(x.shape[1], x.shape[1])
    naive, _ = naive_attention(*args, mla.softmax_scale, mask)
    right, _ = absorbed_attention(*args, mla.softmax_scale, mask)
    wrong, _ = absorbed_attention(*args, (config.kv_lora_rank + config.qk_rope_head_dim) ** -0.5, mask)
    torch.testing.assert_close(right, naive, **close)
    assert (wrong - naive).abs().max() > 1e-2
    hf, _ = hf_attention(config, mla)
    assert mla.softmax_scale == pytest.approx(hf.scaling, rel=1e-12)  # YaRN's mscale^2 included


def test_trap8_forgetting_the_rope_key_breaks_decoding():
    """c^KV alone cannot give the rope key back (k^R comes from h), so a cache must keep both."""
    config = CONFIGS["q_lora"]
    mla, x = make_mla(config), inputs(config)
    cache = LatentCache(1)
    mla(x[:, :8], cache=cache)
    c_kv, k_r = cache.layers[0]
    cache.layers[0] = (c_kv, torch.zeros_like(k_r))  # "cache only the latent"
    assert (mla(x[:, 8:], cache=cache) - mla(x)[:, 8:]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="ExpandedKVCache"):
        LatentCache(1).update(0, torch.zeros(1, 4, 2, 3), torch.zeros(1, 4, 2, 3))  # per-head K is not MLA's cache


def test_trap9_missing_latent_norms_differ_from_transformers():
    config = CONFIGS["q_lora"]
    mla, x = make_mla(config), inputs(config)
    hf, rotary = hf_attention(config, mla)
    with torch.no_grad():
        expected, _ = run_hf(hf, rotary, x)
        for norm in ("q_a_layernorm", "kv_a_layernorm"):
            broken = make_mla(config)
            setattr(broken, norm, nn.Identity())
            assert (broken(x) - expected).abs().max() > 1e-2, norm


def test_trap10_half_split_rope_needs_permuted_weights():
    """Released weights expect interleaved pairs. Half-split RoPE on them is wrong; it is right only after the
    rope rows of q_b_proj and kv_a_proj_with_mqa are de-interleaved (what older transformers did on load)."""
    config = CONFIGS["q_lora_yarn"]
    mla, x = make_mla(config), inputs(config)
    hf, rotary = hf_attention(config, mla)  # rope_interleave=True, like the checkpoints
    half = config.replace(rope_interleave=False)
    broken = MLA(half)
    broken.load_state_dict(mla.state_dict())
    fixed = MLA(half)
    state = mla.state_dict()
    H, D, R, C = config.num_attention_heads, config.qk_nope_head_dim, config.qk_rope_head_dim, config.kv_lora_rank
    q_b = state["q_b_proj.weight"].view(H, D + R, -1)
    state["q_b_proj.weight"] = torch.cat((q_b[:, :D], deinterleave(q_b[:, D:], dim=1)), dim=1).reshape(H * (D + R), -1)
    kv_a = state["kv_a_proj_with_mqa.weight"]
    state["kv_a_proj_with_mqa.weight"] = torch.cat((kv_a[:C], deinterleave(kv_a[C:], dim=0)))
    fixed.load_state_dict(state)
    with torch.no_grad():
        expected, _ = run_hf(hf, rotary, x)
        torch.testing.assert_close(mla(x), expected, **close)
        torch.testing.assert_close(fixed(x), expected, **close)
        assert (broken(x) - expected).abs().max() > 1e-2


def test_trap15_causal_mask_keeps_the_diagonal():
    assert causal_mask(3, 3).tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    assert causal_mask(2, 4).tolist() == [[False, False, False, True], [False, False, False, False]]
    mla = make_mla(CONFIGS["q_lora"])
    mla.record_attn = True
    mla(inputs(CONFIGS["q_lora"]))
    p = mla.last_attn
    assert torch.isfinite(p).all() and p[..., 0, 0].eq(1).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    assert p.triu(diagonal=1).eq(0).all()


# -------------------------------------------------------------- bad input
def test_errors_say_what_is_wrong():
    config = CONFIGS["q_lora"]
    mla = make_mla(config)
    with pytest.raises(ValueError, match="hidden_size=64"):
        mla(torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match='"naive" or "absorbed"'):
        mla(torch.randn(1, 3, 64), attn_impl="flash")
    cache = LatentCache(1)
    mla(torch.randn(2, 3, 64), cache=cache)
    with pytest.raises(ValueError, match="batch size 2"):
        mla(torch.randn(1, 1, 64), cache=cache)
    with pytest.raises(ValueError, match="max_position_embeddings=512"):
        mla(torch.randn(1, 513, 64))
    long_cache = LatentCache(1)
    mla(torch.randn(1, 510, 64), cache=long_cache)
    with pytest.raises(ValueError, match="position 512"):
        mla(torch.randn(1, 3, 64), cache=long_cache)
    assert long_cache.seq_len() == 510  # a refused call leaves the cache as it was
    with pytest.raises(ValueError, match="LatentCache"):
        mla(torch.randn(1, 3, 64), cache=ExpandedKVCache(1), attn_impl="absorbed")
    with pytest.raises(ValueError, match="layer"):
        MLA(config, layer_idx=2)(torch.randn(1, 3, 64), cache=LatentCache(2))
