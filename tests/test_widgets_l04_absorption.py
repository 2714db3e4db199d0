"""The absorption explorer: every control redraws, invalid values give a message."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from widget_helpers import assert_redraws, assert_refused  # noqa: E402

from dsv3_edu.viz import format_seconds  # noqa: E402
from dsv3_edu.widgets.l04_absorption import (  # noqa: E402
    absorption_explorer,
    decode_cost_rows,
    decode_cost_table,
    plot_decode_costs,
)


def test_format_seconds():
    assert format_seconds(0.0123) == "12.3 ms" and format_seconds(4.5e-6) == "4.50 us"
    assert format_seconds(2.5) == "2.50 s" and format_seconds(3e-9) == "3 ns"


def test_table_and_plot():
    rows = decode_cost_rows(8192, 128, 1, "absorbed", "h800")
    assert [r[0] for r in rows] == ["expanded", "naive", "> absorbed"]
    assert rows[2][-1] == "1.00x" and rows[0][4] == "memory"
    text = decode_cost_table(8192, 128, 1, "naive", "cpu")
    assert "> naive" in text and "compute" in text and "balance" in text
    fig = plot_decode_costs(8192, 128, 1, "absorbed", "cpu")
    assert len(fig.axes) == 2
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("kwargs,match", [
    (dict(heads=0), "heads=0 is out of range"), (dict(batch=5000), "batch=5000 is out of range"),
    (dict(context=0), "context=0"), (dict(path="flash"), "choose one of"), (dict(machine="tpu"), "machine"),
    (dict(batch=1.5), "batch=1.5"),
])
def test_invalid_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        decode_cost_rows(**kwargs)


def test_every_control_redraws():
    box = absorption_explorer()
    assert set(box.controls) == {"context", "heads", "batch", "path", "machine"}
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    assert_redraws(box, {"context": 32768, "heads": 16, "batch": 8, "path": "naive", "machine": "cpu"})
    assert "32,768" in box.html.value and "16 heads" in box.html.value and "batch 8" in box.html.value
    assert "&gt; naive" in box.html.value or "> naive" in box.html.value


def test_invalid_batch_shows_a_message_not_a_traceback():
    box = absorption_explorer()
    image = box.image.value
    assert_refused(box, "batch", 0, "batch=0 is out of range")
    box.controls["batch"].value = 4
    assert "Not drawn" not in box.html.value and box.image.value != image
