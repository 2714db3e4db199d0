"""DeepSeekMoE router and layer: against per-token loops written here, and against transformers."""

import pytest
import torch

from dsv3_edu.config import ModelConfig
from dsv3_edu.moe import Gate, MoE, SwiGLUMLP, moe_reference_forward, select_groups

torch.set_num_threads(1)


def cfg(**overrides):
    base = dict(hidden_size=16, moe_intermediate_size=8, n_routed_experts=8, num_experts_per_tok=2,
                n_group=4, topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5)
    base.update(overrides)
    return ModelConfig.tiny(**base)


CONFIGS = [
    cfg(),
    cfg(n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, norm_topk_prob=False),
    cfg(n_group=1, topk_group=1, num_experts_per_tok=3),
    cfg(n_routed_experts=12, n_group=3, topk_group=1, num_experts_per_tok=2, n_shared_experts=0),
]


def reference_route(x, weight, bias, c: ModelConfig, mask_value=float("-inf")):
    """One token at a time, plain Python lists: the routing rule of [V3] eqs 13-16 / [OFF] Gate."""
    E, K, G = c.n_routed_experts, c.num_experts_per_tok, c.n_group
    per = E // G
    all_idx, all_w = [], []
    for u in x:
        s = torch.sigmoid(weight.float() @ u.float()).tolist()
        sb = [s[i] + float(bias[i]) for i in range(E)]
        group_score = [sum(sorted(sb[g * per:(g + 1) * per], reverse=True)[:2]) for g in range(G)]
        kept = sorted(range(G), key=lambda g: -group_score[g])[: c.topk_group]
        masked = [sb[i] if i // per in kept else mask_value for i in range(E)]
        chosen = sorted(range(E), key=lambda i: -masked[i])[:K]
        w = [s[i] for i in chosen]
        if c.norm_topk_prob:
            w = [v / sum(w) for v in w]
        all_idx.append(chosen)
        all_w.append([v * c.routed_scaling_factor for v in w])
    return torch.tensor(all_idx), torch.tensor(all_w)


def config_id(c):
    return f"E{c.n_routed_experts}G{c.n_group}M{c.topk_group}K{c.num_experts_per_tok}S{c.n_shared_experts}"


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@pytest.mark.parametrize("bias_kind", ["zero", "negative", "mixed"])
def test_gate_matches_per_token_reference(c, bias_kind):
    torch.manual_seed(0)
    gate = Gate(c)
    torch.nn.init.normal_(gate.weight, std=0.5)
    bias = {"zero": torch.zeros(c.n_routed_experts),
            "negative": -torch.rand(c.n_routed_experts),
            "mixed": torch.randn(c.n_routed_experts) * 0.3}[bias_kind]
    gate.e_score_correction_bias.copy_(bias)
    x = torch.randn(64, c.hidden_size)
    idx, w, scores = gate(x)
    ref_idx, ref_w = reference_route(x, gate.weight, bias, c)
    assert idx.shape == (64, c.num_experts_per_tok) and idx.dtype == torch.long
    assert scores.shape == (64, c.n_routed_experts) and scores.dtype == torch.float32
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores, torch.sigmoid(x @ gate.weight.T))  # unbiased


def test_negative_bias_needs_minus_inf_mask():
    """Trap 2: filling dropped groups with 0.0 lets them win once every biased score is negative."""
    c = cfg()
    torch.manual_seed(1)
    gate = Gate(c)
    torch.nn.init.normal_(gate.weight, std=0.5)
    gate.e_score_correction_bias.fill_(-1.0)  # s + b in (-1, 0) for every expert
    x = torch.randn(32, c.hidden_size)
    idx, _, _ = gate(x)
    ref_idx, _ = reference_route(x, gate.weight, gate.e_score_correction_bias, c)
    zero_idx, _ = reference_route(x, gate.weight, gate.e_score_correction_bias, c, mask_value=0.0)
    assert torch.equal(idx, ref_idx)
    assert not torch.equal(idx, zero_idx)
    # with -inf every chosen expert is in a kept group: at most topk_group distinct groups per token
    per = c.n_routed_experts // c.n_group
    assert all(len({int(i) // per for i in row}) <= c.topk_group for row in idx)


def test_bias_selects_but_never_weighs():
    c = cfg()
    torch.manual_seed(2)
    gate = Gate(c)
    torch.nn.init.normal_(gate.weight, std=0.5)
    x = torch.randn(40, c.hidden_size)
    idx0, w0, s0 = gate(x)
    # A uniform shift changes no ranking, so the same experts and exactly the same weights.
    gate.e_score_correction_bias.fill_(-0.37)
    idx1, w1, s1 = gate(x)
    assert torch.equal(idx0, idx1) and torch.equal(w0, w1) and torch.equal(s0, s1)
    # A large bias forces expert 5 into every token's choice; its weight still comes from s.
    gate.e_score_correction_bias.zero_()
    gate.e_score_correction_bias[5] = 10.0
    idx2, w2, s2 = gate(x)
    assert (idx2 == 5).any(dim=1).all() and not torch.equal(idx2, idx0)
    chosen = s2.gather(1, idx2)
    torch.testing.assert_close(w2, chosen / chosen.sum(1, keepdim=True) * c.routed_scaling_factor)
    biased = chosen + gate.e_score_correction_bias[idx2]
    assert not torch.allclose(w2, biased / biased.sum(1, keepdim=True) * c.routed_scaling_factor)


def test_bias_is_a_float32_buffer_not_a_parameter():
    moe = MoE(cfg())
    names = {n for n, _ in moe.named_parameters()}
    assert "gate.e_score_correction_bias" not in names and "gate.weight" in names
    sd = moe.state_dict()
    assert sd["gate.e_score_correction_bias"].dtype == torch.float32
    assert torch.equal(sd["gate.e_score_correction_bias"], torch.zeros(8))
    assert "tokens_per_expert" not in sd  # bookkeeping, not a weight
    expected = {"gate.weight", "gate.e_score_correction_bias"}
    expected |= {f"experts.{j}.{p}.weight" for j in range(8) for p in ("gate_proj", "up_proj", "down_proj")}
    expected |= {f"shared_experts.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}
    assert set(sd) == expected
    assert MoE(cfg(n_shared_experts=0)).shared_experts is None
    assert moe.shared_experts.gate_proj.weight.shape == (8, 16)  # moe_intermediate_size * n_shared_experts
    assert MoE(cfg(n_shared_experts=2)).shared_experts.gate_proj.weight.shape == (16, 16)


def test_mlp_is_swiglu():
    torch.manual_seed(3)
    mlp = SwiGLUMLP(6, 10)
    x = torch.randn(3, 6)
    hidden = torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    expected = hidden @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_vectorized_dispatch_equals_token_loop(c):
    torch.manual_seed(4)
    moe = MoE(c)
    torch.nn.init.normal_(moe.gate.weight, std=0.5)
    moe.gate.e_score_correction_bias.copy_(torch.randn(c.n_routed_experts) * 0.2)
    x = torch.randn(3, 7, c.hidden_size)
    with torch.no_grad():
        out = moe(x)
    torch.testing.assert_close(out, moe_reference_forward(moe, x), rtol=1e-5, atol=1e-5)


def test_routing_record_and_token_counts():
    c = cfg()
    torch.manual_seed(5)
    moe = MoE(c)
    x = torch.randn(2, 5, c.hidden_size)
    moe.eval()
    moe(x)
    r = moe.last_routing
    assert r.topk_idx.shape == (2, 5, 2) and r.topk_weight.shape == (2, 5, 2) and r.scores.shape == (2, 5, 8)
    assert not r.scores.requires_grad
    assert moe.tokens_per_expert.sum() == 0  # eval mode counts nothing
    moe.train()
    moe(x)
    moe(x)
    assert moe.last_routing.scores.requires_grad  # kept on the graph for the sequence-wise loss
    assert not moe.last_routing.topk_weight.requires_grad
    counts = torch.bincount(moe.last_routing.topk_idx.flatten(), minlength=8)
    assert torch.equal(moe.tokens_per_expert, 2 * counts)  # accumulated over both forwards
    with torch.no_grad():
        moe(x)
    assert not moe.last_routing.scores.requires_grad


def test_gradients_reach_router_and_experts_not_bias():
    c = cfg()
    torch.manual_seed(6)
    moe = MoE(c)
    x = torch.randn(2, 6, c.hidden_size, requires_grad=True)
    moe(x).square().sum().backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert moe.gate.e_score_correction_bias.grad is None
    used = set(moe.last_routing.topk_idx.flatten().tolist())
    for j in used:
        assert moe.experts[j].up_proj.weight.grad.abs().sum() > 0
    assert x.grad is not None


def test_bad_inputs_raise():
    c = cfg()
    moe = MoE(c)
    with pytest.raises(ValueError, match="hidden_size"):
        moe.gate(torch.randn(4, 15))
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        moe(torch.randn(4, 16))
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        moe(torch.randn(1, 4, 17))
    moe.gate.e_score_correction_bias = torch.zeros(7)
    with pytest.raises(ValueError, match="one value per routed expert"):
        moe(torch.randn(1, 4, 16))


def test_matches_transformers_deepseek_v3_moe():
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    c = cfg(n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=2)
    hf_config = transformers.DeepseekV3Config(
        hidden_size=c.hidden_size, moe_intermediate_size=c.moe_intermediate_size,
        n_routed_experts=c.n_routed_experts, num_experts_per_tok=c.num_experts_per_tok, n_group=c.n_group,
        topk_group=c.topk_group, n_shared_experts=c.n_shared_experts,
        routed_scaling_factor=c.routed_scaling_factor, norm_topk_prob=True, hidden_act="silu",
    )
    torch.manual_seed(7)
    ours = MoE(c)
    torch.nn.init.normal_(ours.gate.weight, std=0.5)
    ours.gate.e_score_correction_bias.copy_(-torch.rand(c.n_routed_experts))  # negative: trap 2 territory
    hf = DeepseekV3MoE(hf_config)
    sd = ours.state_dict()
    hf_sd = {k: v for k, v in sd.items() if not k.startswith("experts.")}  # same names as the checkpoint
    # transformers stores the experts fused: gate_up_proj (E, 2I, d) = [gate; up], down_proj (E, d, I)
    hf_sd["experts.gate_up_proj"] = torch.stack(
        [torch.cat([sd[f"experts.{j}.gate_proj.weight"], sd[f"experts.{j}.up_proj.weight"]]) for j in range(16)])
    hf_sd["experts.down_proj"] = torch.stack([sd[f"experts.{j}.down_proj.weight"] for j in range(16)])
    hf.load_state_dict(hf_sd, strict=True)
    x = torch.randn(3, 11, c.hidden_size)
    with torch.no_grad():
        _, hf_w, hf_idx = hf.gate(x)
        idx, w, _ = ours.gate(x)
        torch.testing.assert_close(idx.sort(1).values, hf_idx.sort(1).values, rtol=0, atol=0)
        torch.testing.assert_close(w.gather(1, idx.argsort(1)), hf_w.gather(1, hf_idx.argsort(1)))
        torch.testing.assert_close(ours(x), hf(x), rtol=1e-5, atol=1e-5)


def test_select_groups_by_hand():
    # 8 experts in 4 groups of 2; group scores (top-2 sums): 0.40, -0.80, 0.00, -0.80 -> keep groups 0 and 2
    biased = torch.tensor([[0.25, 0.15, -0.45, -0.35, 0.05, -0.05, -0.55, -0.25]])
    sel = select_groups(biased, n_group=4, topk_group=2)
    torch.testing.assert_close(sel.group_scores, torch.tensor([[0.40, -0.80, 0.00, -0.80]]))
    assert sel.kept.tolist() == [[True, False, True, False]]
    inf = float("-inf")
    torch.testing.assert_close(sel.scores, torch.tensor([[0.25, 0.15, inf, inf, 0.05, -0.05, inf, inf]]))
    # the group score is the sum of the top-2, not the max: one star expert loses to two good ones
    two = select_groups(torch.tensor([[0.95, 0.10, 0.0, 0.60, 0.55, 0.0]]), n_group=2, topk_group=1)
    assert two.kept.tolist() == [[False, True]]


def test_gate_routes_only_inside_the_selected_groups():
    torch.manual_seed(0)
    config = ModelConfig.tiny(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4)
    gate = Gate(config)
    gate.e_score_correction_bias.normal_(0, 0.5)
    x = torch.randn(50, config.hidden_size)
    topk_idx, _, scores = gate(x)
    kept = select_groups(scores + gate.e_score_correction_bias, 4, 2).kept  # (N, G)
    assert kept.gather(1, topk_idx // 4).all()
