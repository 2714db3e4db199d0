"""The routing explorer: corpus tokens, routing through Gate, drawings, every control redraws, clear messages."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from widget_helpers import assert_redraws, assert_refused  # noqa: E402

from dsv3_edu.data import load_corpus  # noqa: E402
from dsv3_edu.widgets import l05_moe as R  # noqa: E402

torch.set_num_threads(1)


def test_corpus_tokens_come_from_the_corpus():
    tokens = R.corpus_tokens()
    corpus = load_corpus("validation")
    assert len(tokens.ids) == len(tokens.labels) == len(tokens.domains) == sum(map(len, R.SNIPPETS.values()))
    assert tokens.domains[0] == "prose" and tokens.domains[-1] == "csv"
    assert all(text in corpus[domain] for domain, text in R.SNIPPETS.items())
    assert tokens.labels[:4] == ["T", "o", "m", "\u2423"]
    with pytest.raises(ValueError, match="does not occur"):
        R.corpus_tokens({"prose": "no such line in the corpus, surely"})
    with pytest.raises(ValueError, match="unknown domain"):
        R.corpus_tokens({"poetry": "x"})


def test_embedding_and_router_weights_are_seeded_and_stable():
    ids = torch.tensor([1, 2, 1])
    u = R.embed_tokens(ids)
    assert u.shape == (3, R.HIDDEN_SIZE) and torch.equal(u[0], u[2]) and torch.equal(u, R.embed_tokens(ids))
    w8, w32 = R.router_weight(8), R.router_weight(32)
    assert w8.shape == (8, R.HIDDEN_SIZE) and torch.equal(w8, w32[:8])  # expert i is the same vector for every E
    assert 0.7 < (R.embed_tokens(torch.arange(260)) @ R.router_weight(64).T).std().item() < 1.3  # logits ~ N(0, 1)
    with pytest.raises(ValueError):
        R.router_weight(R.MAX_EXPERTS + 1)


def test_group_selection_agrees_with_gate():
    case = R.routing_case(n_experts=32, top_k=8, n_group=8, topk_group=4, bias_expert=3, bias=-0.2)
    per = case.config.experts_per_group
    assert case.kept.sum(1).eq(4).all()
    in_kept = case.kept.gather(1, case.topk_idx // per)  # (N, K): every chosen expert lies in a kept group
    assert in_kept.all()
    assert R.groups_touched(case.topk_idx, per).max() <= 4
    ref_scores = (case.scores + case.bias).view(-1, 8, 4).topk(2, -1).values.sum(-1)
    torch.testing.assert_close(case.group_scores, ref_scores)
    dense = R.gate_matrix(case.topk_idx, case.topk_weight, 32)
    assert dense.shape == (len(case.tokens.ids), 32) and (dense > 0).sum(1).eq(8).all()
    torch.testing.assert_close(dense.sum(1), torch.full((dense.shape[0],), 2.5))


def test_bias_moves_load_but_never_enters_the_weights():
    up = R.routing_case(bias_expert=5, bias=0.3)
    down = R.routing_case(bias_expert=5, bias=-0.5)
    assert up.loads[5] > up.loads_without_bias[5] and down.loads[5] < down.loads_without_bias[5]
    chosen = up.topk_idx == 5
    rows = chosen.any(1)
    s5 = up.scores[rows, 5]
    w = up.topk_weight[chosen]
    norm = up.scores.gather(1, up.topk_idx)[rows].sum(1)
    torch.testing.assert_close(w, s5 / norm * 2.5)  # unbiased s of expert 5, normalized over the chosen


def test_no_groups_and_single_expert_layouts():
    case = R.routing_case(n_experts=8, top_k=2, n_group=1, topk_group=1)
    assert case.kept.all() and case.group_scores.shape == (len(case.tokens.ids), 1)
    fig = R.plot_routing_case(n_experts=8, top_k=2, n_group=1, topk_group=1)
    assert len(fig.axes) >= 4
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_experts=30, n_group=8), "not divisible by n_group=8"),
    (dict(top_k=12, topk_group=2), "more than the 8 experts"),
    (dict(n_experts=8, n_group=8, top_k=2), "sum of its top-2"),
    (dict(topk_group=9, n_group=8), "more than n_group=8"),
    (dict(n_experts=65), "out of range"),
    (dict(top_k=0), "out of range"),
    (dict(n_group=2.5), "out of range"),
    (dict(bias_expert=32), "numbered 0 to 31"),
    (dict(bias=1.5), "from -1.0 to 1.0"),
])
def test_impossible_layouts_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        R.routing_case(**kwargs)


def test_plots_and_table():
    fig = R.plot_routing_case(bias_expert=5, bias=0.3)
    assert len(fig.axes) == 5  # group scores, heatmap, loads, the colorbar host (its inset is a child), colorbar g
    matplotlib.pyplot.close(fig)
    case = R.routing_case()
    fig = R.plot_token_routing(case.scores[0], case.bias - 0.6, 8, 4, 8, "T", mask_value=0.0)
    assert len(fig.axes) == 1
    matplotlib.pyplot.close(fig)
    text = R.routing_table(bias_expert=5, bias=0.3)
    assert "MaxVio" in text and "expert 5: tokens" in text and "with bias +0.30" in text
    assert "the bias never enters g" in text


def test_every_control_redraws():
    box = R.routing_explorer()
    assert set(box.controls) == {"n_experts", "top_k", "n_group", "topk_group", "bias_expert", "bias"}
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    new_values = {"bias": 0.4, "bias_expert": 7, "top_k": 6, "topk_group": 3, "n_group": 4, "n_experts": 48}
    assert_redraws(box, new_values)
    assert "48 routed experts in 4 groups of 12" in box.html.value and "+0.40 on expert 7" in box.html.value


def test_invalid_combination_shows_a_message_not_a_traceback():
    box = R.routing_explorer()
    image = box.image.value
    assert_refused(box, "n_experts", 30, "not divisible by n_group=8")
    box.controls["n_experts"].value = 16
    assert "Not drawn" not in box.html.value and box.image.value != image
    box.controls["bias_expert"].value = 40  # dependent controls move back into range, with a note
    assert box.controls["bias_expert"].value == 15 and "bias_expert 40 -&gt; 15" in box.html.value
    box.controls["bias_expert"].value = 2
    box.controls["top_k"].value = 12  # 4 kept groups of 2 experts hold 8
    assert box.controls["top_k"].value == 8 and "top_k 12 -&gt; 8" in box.html.value
    assert "Not drawn" not in box.html.value


def test_dependent_sliders_stay_valid_and_say_so():
    from dsv3_edu.widgets.l05_moe import routing_explorer

    box = routing_explorer()  # 32 experts, 8 groups, keep 4, top-8
    box.controls["n_group"].value = 2  # below topk_group = 4: the move lesson 05's prompt suggests
    assert box.controls["topk_group"].value == 2
    assert "topk_group 4 -&gt; 2: a token cannot keep more groups" in box.html.value
    assert "Not drawn" not in box.html.value and "keeps 2 groups" in box.html.value
    box.controls["n_experts"].value = 4  # 2 groups of 2 keep 4 experts: top-8 and expert 5 must move
    assert box.controls["top_k"].value == 4 and box.controls["bias_expert"].value == 3
    assert "top_k 8 -&gt; 4" in box.html.value and "bias_expert 5 -&gt; 3" in box.html.value
    box.controls["bias"].value = 0.5  # nothing to move: no note
    assert "Note:" not in box.html.value
