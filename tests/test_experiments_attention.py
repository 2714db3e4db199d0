"""The attention experiment: its variants compute attention correctly, cache what the formulas say, are
matched in size, and a quick run is deterministic."""

import math

import pytest
import torch

from dsv3_edu.attention import repeat_kv, scaled_dot_product_attention
from dsv3_edu.experiments import attention as exp
from dsv3_edu.mla import MLA
from dsv3_edu.moe import SwiGLUMLP
from dsv3_edu.rope import apply_rope

QUICK = exp.settings(quick=True)


def _model(arm):
    net = exp.build_model(arm, exp.MODEL, seed=0).eval()
    with torch.no_grad():  # larger weights than the 0.02 init, so that every part moves the output
        for p in net.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return net


def test_arms_are_the_advertised_attention_modules():
    kinds = {arm: type(exp.build_model(arm, exp.MODEL, 0).model.layers[0].self_attn).__name__ for arm in exp.ARMS}
    assert kinds == {"mha": "GroupedAttention", "gqa": "GroupedAttention", "mqa": "GroupedAttention",
                     "mla": "MLA", "mla_no_rope": "LatentAttentionNoRoPE"}
    n_kv = {arm: exp.build_model(arm, exp.MODEL, 0).model.layers[1].self_attn.n_kv_heads
            for arm in ("mha", "gqa", "mqa")}
    assert n_kv == {"mha": 4, "gqa": 2, "mqa": 1}
    for arm in exp.ARMS:  # everything else is the course's DeepSeekV3 with a dense FFN and no MTP
        net = exp.build_model(arm, exp.MODEL, 0)
        assert not net.mtp and all(type(layer.mlp) is SwiGLUMLP for layer in net.model.layers)  # dense FFNs only


@pytest.mark.parametrize("arm", list(exp.ARMS))
def test_cached_decoding_matches_the_full_forward_and_caches_the_formula(arm):
    net = _model(arm)
    ids = torch.randint(0, 260, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = net.backbone(ids)
        cache = exp.new_cache(arm, net)
        parts = [net.backbone(ids[:, :12], cache=cache)]
        parts += [net.backbone(ids[:, t : t + 1], cache=cache) for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)
    c = net.config
    L, dk, dv, C, R = c.num_hidden_layers, c.qk_head_dim, c.v_head_dim, c.kv_lora_rank, c.qk_rope_head_dim
    by_formula = {  # values per token, all layers ([V2] Table 1 with the real key width d_h + d_h^R)
        "mha": L * 4 * (dk + dv), "gqa": L * 2 * (dk + dv), "mqa": L * 1 * (dk + dv),
        "mla": L * (C + R), "mla_no_rope": L * C,
    }[arm]
    assert cache.numel() == by_formula * 2 * 20  # what the cache really holds: batch 2, 20 tokens
    assert exp.kv_bytes_per_token(arm, c) == by_formula * 2  # bf16
    assert exp.kv_bytes_per_token(arm, c, torch.float32) == by_formula * 4


def test_kv_bytes_keep_deepseek_v3s_ordering():
    c = exp.arm_config("mla", exp.MODEL)
    b = {arm: exp.kv_bytes_per_token(arm, c) for arm in exp.ARMS}
    assert b["mha"] > b["gqa"] > b["mla"] > b["mla_no_rope"] > b["mqa"]
    assert b["mla"] / b["mqa"] == pytest.approx(576 / 320)  # d_c = 4 d_h, d_h^R = d_h / 2, as in V3


def test_grouped_attention_against_lesson_01s_attention_with_rope():
    torch.manual_seed(0)
    config = exp.arm_config("gqa", exp.MODEL)
    m = exp.GroupedAttention(config, 0, n_kv_heads=2)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 10, config.hidden_size)
    B, T, H, G, dk, dv = 2, 10, 4, 2, config.qk_head_dim, config.v_head_dim
    q = m.q_proj(x).view(B, T, H, dk).transpose(1, 2)
    k = m.k_proj(x).view(B, T, G, dk).transpose(1, 2)
    v = m.v_proj(x).view(B, T, G, dv).transpose(1, 2)
    cos, sin = m.rotary_emb(torch.arange(T))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o = scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2))  # lesson 01's explicit softmax
    torch.testing.assert_close(m(x), m.o_proj(o.transpose(1, 2).reshape(B, T, -1)), rtol=1e-5, atol=1e-6)


def test_mla_without_rope_is_mla_with_a_zero_rope_part_and_ignores_positions():
    torch.manual_seed(0)
    config = exp.arm_config("mla_no_rope", exp.MODEL)
    m = exp.LatentAttentionNoRoPE(config, 0)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    # The package's MLA with the same weights and its rope rows zeroed computes the same output.
    ref = MLA(config, 0)
    H, D, R, C = config.num_attention_heads, config.qk_nope_head_dim, config.qk_rope_head_dim, config.kv_lora_rank
    with torch.no_grad():
        wq = torch.zeros(H, D + R, config.hidden_size)
        wq[:, :D] = m.q_proj.weight.view(H, D, -1)
        ref.q_proj.weight.copy_(wq.reshape(H * (D + R), -1))
        ref.kv_a_proj_with_mqa.weight.zero_()
        ref.kv_a_proj_with_mqa.weight[:C] = m.kv_a_proj.weight
        ref.kv_a_layernorm.weight.copy_(m.kv_a_layernorm.weight)
        ref.kv_b_proj.weight.copy_(m.kv_b_proj.weight)
        ref.o_proj.weight.copy_(m.o_proj.weight)
    ref.softmax_scale = m.softmax_scale  # MLA scales by 1/sqrt(d_h + d_h^R); without rope it is 1/sqrt(d_h)
    x = torch.randn(2, 9, config.hidden_size)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)
    # No position information: the last token's output depends on the set of earlier tokens, not their order.
    perm = torch.tensor([3, 0, 7, 1, 5, 2, 6, 4, 8])
    torch.testing.assert_close(m(x)[:, -1], m(x[:, perm])[:, -1], rtol=1e-5, atol=1e-6)


def test_parameter_counts_are_matched_within_one_ffn_unit_per_layer():
    counts = {arm: sum(p.numel() for p in exp.build_model(arm, exp.MODEL, 0).parameters()) for arm in exp.ARMS}
    c = exp.arm_config("mla", exp.MODEL)
    tolerance = 1.5 * c.hidden_size * c.num_hidden_layers  # half of 3 d per layer, plus the kv norm's d_c
    assert max(counts.values()) - min(counts.values()) <= tolerance + c.kv_lora_rank * c.num_hidden_layers
    widths = {arm: exp.arm_config(arm, exp.MODEL).intermediate_size for arm in exp.ARMS}
    assert widths["mqa"] > widths["gqa"] > widths["mha"] >= widths["mla"]  # smaller attention, wider FFN
    assert math.isclose(counts["mqa"], counts["mla"], rel_tol=0.005)


def test_quick_run_every_arm_and_determinism():
    results = {arm: exp.run(arm, 0, QUICK, None) for arm in exp.ARMS}
    for arm, (value, extra) in results.items():
        assert 0 < value < 10
        assert extra["kv_bytes_per_token"] == exp.kv_bytes_per_token(arm, exp.arm_config(arm, QUICK["model"]))
        assert set(extra["domains"]) == {"prose", "arithmetic", "code", "csv"}
    seen = []
    again = exp.run("gqa", 0, QUICK, lambda done, total: seen.append((done, total)))
    assert again == results["gqa"]  # the same arm and seed give the same value and extra, bit for bit
    assert seen[-1] == (QUICK["train"]["steps"], QUICK["train"]["steps"])
    assert exp.run("gqa", 1, QUICK, None)[0] != results["gqa"][0]


def test_unknown_arm_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        exp.run("flash", 0, QUICK, None)
