"""The diagrams draw, and their labels carry the numbers of the config they were given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from dsv3_edu import diagrams  # noqa: E402
from dsv3_edu.config import ModelConfig  # noqa: E402
from dsv3_edu.moe import Gate  # noqa: E402

# Sizes no default config has, so a hard-coded label cannot pass.
ODD = ModelConfig.tiny(hidden_size=72, num_attention_heads=3, q_lora_rank=20, kv_lora_rank=24, qk_nope_head_dim=14,
                       qk_rope_head_dim=6, v_head_dim=10, n_routed_experts=12, n_group=3, topk_group=2,
                       num_experts_per_tok=3, num_hidden_layers=5, num_nextn_predict_layers=2)


def texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("config", [ODD, ModelConfig.deepseek_v3()], ids=["odd", "v3"])
def test_mla_dataflow_labels_shapes_and_cache(config):
    fig = diagrams.draw_mla_dataflow(config)
    assert isinstance(fig, Figure)
    t = texts(fig)
    nh, dn, dr, dc, dv = (config.num_attention_heads, config.qk_nope_head_dim, config.qk_rope_head_dim,
                          config.kv_lora_rank, config.v_head_dim)
    assert f"({nh} x {dn})" in t and f"({nh} x {dr})" in t and f"({nh} x {dv})" in t
    assert f"({dc})  CACHED" in t and f"({dr}, one for all {nh} heads)  CACHED" in t
    assert f"= {dc} + {dr} = {dc + dr:,} values" in t
    assert f"{nh * (dn + dr + dv):,}" in t
    assert f"({config.q_lora_rank:,})" in t
    assert f"scale 1/sqrt({dn + dr})" in t


def test_mla_dataflow_without_query_latent():
    t = texts(diagrams.draw_mla_dataflow(ODD.replace(q_lora_rank=None)))
    assert "c^Q" not in t and "q^C = W^UQ h" in t


def test_absorption_both_paths_carry_the_sizes():
    t = texts(diagrams.draw_absorption(ODD))
    assert "q~_i = W^UK_i^T q^C_i\n(3 x 24)" in t  # n_h x d_c: the absorbed query lives in the latent
    assert "(3 x S x 14)  rebuilt" in t and "(3 x S x 10)  rebuilt" in t  # the naive path's K^C and V
    assert "cache: c^KV (S x 24)" in t and "cache: k^R (S x 6)" in t
    assert "o~_i = sum_t p_t c^KV_t (3 x 24)" in t


def test_group_routing_matches_the_package_gate():
    # hidden_size = E and an identity router weight: the gate's sigmoid(x W^T) is exactly sigmoid(x).
    config = ODD.replace(hidden_size=12)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        s = torch.rand(12, generator=gen) * 0.98 + 0.01
        b = (torch.rand(12, generator=gen) - 0.7) * 0.5  # mostly negative: where a 0.0 mask would go wrong
        gate = Gate(config)
        with torch.no_grad():
            gate.weight.copy_(torch.eye(12))
            gate.e_score_correction_bias.copy_(b)
        idx, _, scores = gate(torch.logit(s.double()).float()[None])
        torch.testing.assert_close(scores[0], s, rtol=1e-6, atol=1e-6)
        group_scores, kept, chosen = diagrams.group_limited_choice(config, scores[0], b)
        assert chosen.tolist() == idx[0].tolist()
        top2 = (scores[0] + b).view(3, 4).topk(2, dim=-1).values.sum(-1)
        torch.testing.assert_close(group_scores, top2)
        assert all(int(e) // 4 in kept.tolist() for e in chosen)


def test_group_routing_figure_labels():
    fig = diagrams.draw_group_routing(ODD, seed=1)
    t = texts(fig)
    assert "12 routed experts in 3 groups of 4" in t and "keep the 2 groups" in t and "top 3 experts" in t
    assert t.count("kept") == 2 and t.count("dropped") == 1
    assert "selection score s + b (unitless)" in t  # the colorbar's label


def test_group_routing_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="one value per routed expert"):
        diagrams.group_limited_choice(ODD, torch.rand(5), torch.zeros(5))


def test_mtp_chain_labels():
    t = texts(diagrams.draw_mtp_chain(ODD))
    assert "5 decoder layers" in t and "MTP depth 1" in t and "MTP depth 2" in t and "MTP depth 3" not in t
    assert "M_2 = eh_proj\n(72 x 144)" in t and "[enorm(Emb); hnorm(h)]\n(144)" in t
    assert "(260 x 72, shared)" in t and "predicts t_(i+3)" in t
    t0 = texts(diagrams.draw_mtp_chain(ODD.replace(num_nextn_predict_layers=0)))
    assert "MTP depth 1 (not in this config)" in t0
    with pytest.raises(ValueError, match="depths must be >= 0"):
        diagrams.draw_mtp_chain(ODD, depths=-1)
