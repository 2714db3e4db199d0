"""Every explorer says when a control could not start at the value asked for (issue: n_heads=1000 became 256
without a word), and says nothing when it could."""

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from dsv3_edu.widgets.l01_attention import kv_cache_explorer  # noqa: E402
from dsv3_edu.widgets.l02_rope import rope_explorer  # noqa: E402
from dsv3_edu.widgets.l03_mla import attention_explorer, cache_explorer  # noqa: E402
from dsv3_edu.widgets.l04_absorption import absorption_explorer  # noqa: E402
from dsv3_edu.widgets.l05_moe import routing_explorer  # noqa: E402
from dsv3_edu.widgets.l10_scale import deployment_explorer  # noqa: E402


def test_defaults_are_not_clamped():
    attn = torch.softmax(torch.randn(2, 2, 4, 4), -1)
    for box in (kv_cache_explorer(), rope_explorer(), cache_explorer(), absorption_explorer(), routing_explorer(),
                deployment_explorer(), attention_explorer(attn, list("abcd"))):
        assert box.clamped == {} and "Note:" not in box.html.value


def test_a_clamped_value_is_named_with_the_value_used():
    box = kv_cache_explorer(n_heads=1000, n_kv_heads=8)
    assert box.clamped == {"n_heads": (1000, 256)}
    assert "n_heads=1000 is outside the control's range, so it starts at 256" in box.html.value
    assert "<table>" in box.html.value  # still drawn, at the value shown
    box.controls["batch"].value = 2  # the next drawing replaces the note
    assert "Note:" not in box.html.value
    box = attention_explorer(torch.softmax(torch.randn(2, 2, 4, 4), -1), list("abcd"), head=9)
    assert box.clamped == {"head": (9, 1)} and "head=9" in box.html.value
    assert routing_explorer(bias=5.0).clamped == {"bias": (5.0, 1.0)}
