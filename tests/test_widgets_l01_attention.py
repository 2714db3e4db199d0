"""The KV-cache explorer: every control redraws, invalid combinations give a message, numbers are right."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from widget_helpers import assert_redraws  # noqa: E402

from dsv3_edu.accounting import kv_cache_bytes  # noqa: E402
from dsv3_edu.widgets.l01_attention import (  # noqa: E402
    deepseek_v3_reference,
    kv_cache_explorer,
    kv_cache_rows,
    kv_cache_sizes,
    kv_cache_table,
    plot_kv_cache,
)


def test_sizes_follow_the_formula():
    sizes = kv_cache_sizes(n_heads=32, n_kv_heads=8, head_dim=128, context=8192, dtype="bf16", batch=2, n_layers=32)
    assert sizes == {
        "MHA": kv_cache_bytes(32, 32, 128, 128, torch.bfloat16, 8192, 2),
        "GQA": kv_cache_bytes(32, 8, 128, 128, torch.bfloat16, 8192, 2),
        "MQA": kv_cache_bytes(32, 1, 128, 128, torch.bfloat16, 8192, 2),
    }
    assert sizes["GQA"] == 2 * 2**30  # 2 GiB
    ref = deepseek_v3_reference(context=1000, dtype="bf16", batch=3)
    assert ref["DeepSeek-V3 MLA"] == 70_272 * 1000 * 3
    assert ref["DeepSeek-V3 expanded K/V"] == 40_960 * 61 * 2 * 1000 * 3
    assert deepseek_v3_reference(1, "fp8")["DeepSeek-V3 MLA"] == 35_136


def test_table_text():
    text = kv_cache_table(32, 8, 128, 8192, "bf16", 1, 32)
    assert "GQA" in text and "4.000" in text and "1.000" in text and "0.125" in text and "70,272" in text
    rows = kv_cache_rows(32, 8, 128, 8192, "bf16", 1, 32)
    assert [r[0] for r in rows] == ["MHA", "GQA", "MQA", "DeepSeek-V3 MLA", "DeepSeek-V3 expanded K/V"]
    assert rows[3][2] == "576" and rows[4][2] == "40,960" and rows[0][2] == "8,192"


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_kv_heads=5), "does not divide"), (dict(n_kv_heads=64), "more than n_heads"),
    (dict(n_heads=0), "out of range"), (dict(batch=1000), "out of range"), (dict(n_layers=1.5), "out of range"),
    (dict(dtype="int4"), "choose one of"), (dict(context=0), "positive number of tokens"),
    (dict(head_dim=-8), "head_dim"),
])
def test_invalid_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kv_cache_sizes(**kwargs)


def test_plot_has_two_axes():
    fig = plot_kv_cache()
    assert len(fig.axes) == 2
    matplotlib.pyplot.close(fig)


def test_every_control_redraws():
    box = kv_cache_explorer()
    assert set(box.controls) == {"n_heads", "n_kv_heads", "head_dim", "context", "dtype", "batch", "n_layers"}
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    new_values = {"n_heads": 64, "n_kv_heads": 4, "head_dim": 64, "context": 32768, "dtype": "fp32",
                  "batch": 4, "n_layers": 80}
    assert_redraws(box, new_values)
    assert "80 layers" in box.html.value and "fp32" in box.html.value and "32,768" in box.html.value


def test_invalid_combination_shows_a_message_not_a_traceback():
    box = kv_cache_explorer(n_heads=32, n_kv_heads=8)
    image = box.image.value
    box.controls["n_kv_heads"].value = 6
    assert "Not drawn" in box.html.value and "does not divide n_heads=32" in box.html.value
    assert "[1, 2, 4, 8, 16, 32]" in box.html.value
    assert box.image.value == image  # the last valid picture stays
    box.controls["n_kv_heads"].value = 40  # moved back to n_heads, with a note
    assert box.controls["n_kv_heads"].value == 32 and "n_kv_heads 40 -&gt; 32" in box.html.value
    box.controls["n_kv_heads"].value = 16
    assert "Not drawn" not in box.html.value and box.image.value != image


def test_kv_heads_follow_query_heads_down():
    from dsv3_edu.widgets.l01_attention import kv_cache_explorer

    box = kv_cache_explorer(n_heads=32, n_kv_heads=8)
    box.controls["n_heads"].value = 4
    assert box.controls["n_kv_heads"].value == 4 and "n_kv_heads 8 -&gt; 4" in box.html.value
    assert "Not drawn" not in box.html.value
