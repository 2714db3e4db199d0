"""Lesson 10 widgets: what fits on GPUs, and the explorer widget."""


import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from widget_helpers import assert_redraws  # noqa: E402

from dsv3_edu import ModelConfig  # noqa: E402
from dsv3_edu.accounting import deployment  # noqa: E402
from dsv3_edu.viz import GiB  # noqa: E402
from dsv3_edu.widgets.l10_scale import (  # noqa: E402
    deployment_explorer,
    deployment_rows,
    deployment_table,
    parameter_rows,
    plot_deployment,
    plot_parameters,
)

V3 = ModelConfig.deepseek_v3()


def test_deployment_numbers():
    dep = deployment(context=131072, batch=16, cache_dtype="bf16", gpu_gib=141, n_gpus=8, weights="fp8")
    assert dep.mla_per_token == 70_272 and dep.expanded_per_token == 40_960 * 61 * 2
    assert dep.capacity_bytes == int(8 * 141 * GiB * 0.9)
    assert dep.gpus_for_weights == 5 and dep.cache_budget == dep.capacity_bytes - dep.weight_bytes
    assert dep.fits("mla") and not dep.fits("expanded")
    assert dep.max_tokens("mla") == dep.cache_budget // 70_272
    assert dep.max_batch("mla") == dep.max_tokens("mla") // 131072 == 45
    assert dep.max_context("expanded") == dep.max_tokens("expanded") // 16
    h100 = deployment(gpu_gib=80, n_gpus=8)
    assert h100.cache_budget < 0 and h100.gpus_for_weights == 9 and h100.max_tokens("mla") == 0
    assert deployment(cache_dtype="fp8").mla_per_token == 35_136
    assert deployment(weights="bf16", n_gpus=8).cache_budget < 0  # 1.22 TiB of BF16 weights: not on one node
    assert deployment(weights="bf16", n_gpus=16).cache_budget > 0
    assert "mla_cache" in dep.to_dict()


@pytest.mark.parametrize("kwargs,match", [
    (dict(context=200_000), "max_position_embeddings=163,840"), (dict(context=0), "from 1"),
    (dict(batch=0), "batch=0 is out of range"), (dict(n_gpus=2.5), "n_gpus"), (dict(cache_dtype="int4"), "bf16"),
    (dict(gpu_gib=-1), "gpu_gib"), (dict(weights="fp4"), "choose one of"), (dict(usable=1.5), "usable"),
])
def test_invalid_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deployment(**kwargs)


def test_tables_and_plots():
    text = deployment_table(context=131072, batch=16)
    assert "alone need 5 GPUs" in text and "68.6 KiB" in text and "4.77 MiB" in text and "(> max positions)" in text
    rows = deployment_rows(gpu_gib=80)
    assert rows[2] == ["fits in memory (none left)", "no", "no"]
    assert "do not fit" in deployment_table(gpu_gib=80)
    rows = parameter_rows(V3)
    assert rows[-2] == ["main model", "671,026,404,352", "37,552,282,624", "100.00%"]
    assert rows[-1][1] == "11,610,067,968"
    for fig in (plot_parameters(V3), plot_deployment(), plot_deployment(gpu_gib=80)):
        assert len(fig.axes) == 2
        matplotlib.pyplot.close(fig)


def test_every_control_redraws():
    box = deployment_explorer()
    assert set(box.controls) == {"context", "batch", "cache_dtype", "gpu_gib", "n_gpus", "weights"}
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    new_values = {"context": 32768, "batch": 64, "cache_dtype": "fp8", "gpu_gib": 192, "n_gpus": 16,
                  "weights": "bf16"}
    assert_redraws(box, new_values)
    assert "16 x 192 GiB" in box.html.value and "weights (bf16)" in box.html.value and "32K" in box.html.value


def test_invalid_batch_shows_a_message_not_a_traceback():
    box = deployment_explorer()
    image = box.image.value
    box.controls["batch"].value = 0
    assert "Not drawn" in box.html.value and "batch=0 is out of range" in box.html.value
    assert box.image.value == image
    box.controls["batch"].value = 4
    assert "Not drawn" not in box.html.value and "batch 4" in box.html.value
