"""Lesson 11 widget: byte heatmaps from the formula, the node limit, redundancy; every control redraws."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from dsv3_edu import distributed as D  # noqa: E402
from dsv3_edu.widgets import l11_distributed as L  # noqa: E402

torch.set_num_threads(1)


def test_case_applies_the_limit_and_the_formula():
    case = L.ep_case(world_size=4, max_ranks=2, redundant=4)
    N, d = L.N_TOKENS, case.hidden_size
    assert case.bytes_limited.shape == (4, 4)
    assert 1 <= case.ranks_per_token_limited <= 2 < case.ranks_per_token_unlimited <= 4
    # bytes = tokens reached x d x 4: the mean reach says the same as the byte matrix
    assert int(case.bytes_limited.sum()) == round(case.ranks_per_token_limited * N) * d * 4
    assert int(case.bytes_limited.sum()) <= N * 2 * d * 4
    assert D.off_diagonal(case.bytes_limited) < D.off_diagonal(case.bytes_unlimited)
    assert int(case.expert_loads.sum()) == N * case.top_k
    assert case.redundancy.max_after < case.redundancy.max_before
    one = L.ep_case(world_size=1, max_ranks=1, redundant=0)
    assert D.off_diagonal(one.bytes_limited) == 0 and one.ranks_per_token_limited == 1.0


def test_table_and_figure():
    text = L.ep_table(world_size=8, max_ranks=2, redundant=8)
    assert "ranks a token reaches" in text and "(at most 2)" in text
    fig = L.plot_ep_case(L.ep_case(2, 1, 0))
    assert len(fig.axes) == 5  # two heatmaps with colour bars, one bar chart
    assert fig.axes[0].get_xlabel().startswith("receiving rank")


def test_every_control_redraws_and_bad_combinations_explain():
    box = L.ep_explorer()
    assert box.image.value and "M = 2" in box.html.value
    before_png = box.image.value
    box.controls["world_size"].value = 8
    assert box.image.value != before_png and "8 ranks" in box.html.value
    html = box.html.value
    box.controls["max_ranks"].value = 4
    assert box.html.value != html and "M = 4" in box.html.value
    html = box.html.value
    box.controls["redundant"].value = 0
    assert box.html.value != html and "+0 redundant" in box.html.value
    png = box.image.value
    box.controls["max_ranks"].value = 1  # 2 experts per rank cannot hold K = 4
    assert "fewer than the K=4" in box.html.value and box.image.value == png
    box.controls["world_size"].value = 2
    box.controls["max_ranks"].value = 5
    assert "a token may reach 1 to 2 ranks" in box.html.value


def test_bad_redundancy_value():
    with pytest.raises(ValueError, match="extra expert copies"):
        L.ep_case(4, 2, redundant=99)
