"""The RoPE/YaRN explorer: numbers agree with dsv3_edu.rope, every control redraws, bad values give a message."""

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from widget_helpers import assert_redraws  # noqa: E402

from dsv3_edu.config import ModelConfig  # noqa: E402
from dsv3_edu.rope import rope_inv_freq, softmax_scale, yarn_ramp  # noqa: E402
from dsv3_edu.widgets.l02_rope import DEEPSEEK_V3, plot_yarn, rope_explorer, yarn_pairs, yarn_table  # noqa: E402


def test_released_config_numbers():
    p = yarn_pairs(**DEEPSEEK_V3)
    released = ModelConfig.deepseek_v3()
    assert (p["low"], p["high"]) == (10, 23)
    assert p["kept"] == list(range(11)) and p["blended"] == list(range(11, 23))
    assert p["interpolated"] == list(range(23, 32))
    torch.testing.assert_close(p["ramp"], yarn_ramp(released))
    torch.testing.assert_close(p["theta_yarn"].float(), rope_inv_freq(released))
    assert p["extended"] == released.max_position_embeddings == 163840
    assert p["softmax_multiplier"] == pytest.approx(softmax_scale(released) * math.sqrt(192))
    assert p["turns"][10] > 32 > p["turns"][11] and p["turns"][22] > 1 > p["turns"][23]
    assert p["wavelength"][0] == pytest.approx(2 * math.pi)


def test_table_text():
    text = yarn_table(**DEEPSEEK_V3, pair=31)
    for piece in ("4,096 -> 163,840", "10, 23", "0-10 (11 pairs)", "11-22 (12 pairs)", "23-31 (9 pairs)",
                  "1.3689", "1.8739", "0.0869", "1.000 (interpolated)"):
        assert piece in text, piece


def test_plot_has_four_axes():
    fig = plot_yarn(**DEEPSEEK_V3, pair=0)
    assert len(fig.axes) == 4
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=7), "even whole number"), (dict(base=1.0), "base above 1"), (dict(factor=0.5), "at least 1"),
    (dict(beta_fast=1.0, beta_slow=2.0), "must be larger than beta_slow"), (dict(beta_slow=0), "positive"),
    (dict(pair=32), "rope dim 64 has 32 pairs, 0 to 31"), (dict(original=1), "original context"),
])
def test_invalid_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        yarn_table(**{**DEEPSEEK_V3, "pair": 0, **kwargs})


def test_every_control_redraws_and_bad_values_show_a_message():
    box = rope_explorer(pair=16)
    assert set(box.controls) == {"base", "dim", "factor", "original", "beta_fast", "beta_slow", "pair"}
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    new_values = {"pair": 31, "factor": 8.0, "base": 1e5, "dim": 128, "original": 8192, "beta_fast": 16.0,
                  "beta_slow": 2.0}
    assert_redraws(box, new_values)
    assert "8,192 -&gt; 65,536" in box.html.value  # escaped: the browser shows ->
    image = box.image.value
    box.controls["dim"].value = 16  # pair 31 does not exist in 8 pairs: moved to 7, and said so
    assert box.controls["pair"].value == 7 and "pair 31 -&gt; 7: rope dim 16 has pairs 0 to 7" in box.html.value
    assert "Not drawn" not in box.html.value and box.image.value != image
    image = box.image.value
    box.controls["pair"].value = 3
    assert "Note:" not in box.html.value and box.image.value != image
    box.controls["beta_fast"].value = 1.0  # below beta_slow = 2
    assert "must be larger than beta_slow" in box.html.value
