"""Lesson 00's parameter explorer: total vs active redraws; invalid configs give a message."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from dsv3_edu.config import ModelConfig  # noqa: E402
from dsv3_edu.widgets.l00_welcome import parameter_budget, parameter_explorer, parameter_rows  # noqa: E402


def test_budget_sums_to_the_counts():
    budget = parameter_budget(ModelConfig.deepseek_v3())
    assert sum(budget["total"].values()) == 671_026_404_352
    assert sum(budget["active per token"].values()) == 37_552_282_624
    rows = parameter_rows(ModelConfig.deepseek_v3())
    assert rows[-2] == ["main model", "671,026,404,352", "37,552,282,624"]
    assert rows[-1][0].startswith("MTP") and rows[-1][1] == "11,610,067,968"


def test_controls_redraw():
    box = parameter_explorer()
    assert box.image.value[:4] == b"\x89PNG" and "37,552,282,624" in box.html.value
    for name, value in {"num_experts_per_tok": 16, "n_shared_experts": 2, "n_routed_experts": 512,
                        "num_hidden_layers": 30}.items():
        before_image, before_html = box.image.value, box.html.value
        box.controls[name].value = value
        assert box.html.value != before_html and box.image.value != before_image, name
        assert "Not drawn" not in box.html.value


def test_preset_switch_loads_its_values():
    box = parameter_explorer()
    box.controls["preset"].value = "tiny"
    assert box.controls["n_routed_experts"].value == 8 and box.controls["num_experts_per_tok"].value == 2
    assert "217,728" in box.html.value
    box.controls["num_hidden_layers"].value = 1  # fewer layers than before: first_k_dense_replace follows
    assert "Not drawn" not in box.html.value


def test_invalid_config_gives_a_message():
    box = parameter_explorer()
    image = box.image.value
    box.controls["n_routed_experts"].value = 8  # 8 groups of 1 expert: a group score needs its top-2
    assert "Not drawn" in box.html.value and "n_group" in box.html.value
    assert box.image.value == image
    with pytest.raises(ValueError, match="preset"):
        parameter_explorer("gpt2")


def test_experts_per_token_stay_within_the_kept_groups():
    from dsv3_edu.widgets.l00_welcome import parameter_explorer

    box = parameter_explorer("deepseek_v3")  # 256 experts in 8 groups, keep 4, top-8
    box.controls["n_routed_experts"].value = 16  # 2 per group: 4 kept groups hold 8 experts, top-8 fits
    assert box.controls["num_experts_per_tok"].value == 8 and "Note:" not in box.html.value
    box.controls["num_experts_per_tok"].value = 12
    assert box.controls["num_experts_per_tok"].value == 8 and "num_experts_per_tok 12 -&gt; 8" in box.html.value
    box.controls["preset"].value = "tiny"  # the preset's own values, drawn
    assert box.controls["n_routed_experts"].value == 8 and "Not drawn" not in box.html.value
