"""Lesson 03 widgets: attention maps and the cache explorer redraw on every control, reject bad values clearly."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from dsv3_edu.config import ModelConfig  # noqa: E402
from dsv3_edu.model import DeepSeekV3  # noqa: E402
from dsv3_edu.widgets.l03_mla import (  # noqa: E402
    attention_explorer,
    attention_maps,
    attention_row,
    cache_explorer,
    cache_rows,
    cache_sizes,
    cache_table,
    plot_attention,
    plot_attention_grid,
    plot_cache,
)


@pytest.fixture(scope="module")
def maps():
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.tiny()).eval()
    ids = torch.tensor([[257, 72, 105, 32, 72, 105, 33]])
    return model, ids, attention_maps(model, ids), ["<bos>", "H", "i", " ", "H", "i", "!"]


def test_attention_maps_are_causal_distributions(maps):
    model, ids, attn, _ = maps
    assert attn.shape == (3, 4, 7, 7)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4, 7))
    assert torch.all(attn.triu(diagonal=1) == 0)
    assert all(not layer.self_attn.record_attn for layer in model.model.layers)  # flags restored
    assert torch.equal(attention_maps(model, ids[0]), attn)  # (T,) works too
    with pytest.raises(ValueError, match="one sequence"):
        attention_maps(model, ids.expand(2, -1))


def test_row_table_and_plots(maps):
    _, _, attn, tokens = maps
    rows = attention_row(attn, tokens, layer=1, head=2, query=0)
    assert rows == [["0", "'<bos>'", "1.000"]]
    rows = attention_row(attn, tokens, layer=2, head=3, query=6, top=3)
    assert len(rows) == 3 and float(rows[0][2]) >= float(rows[1][2]) >= float(rows[2][2])
    fig = plot_attention(attn, tokens, layer=0, head=1, query=4)
    assert len(fig.axes) == 3  # the map, its colorbar, the row
    heatmap, colorbar = fig.axes[0], fig.axes[1]
    visible = ["\u2423" if t == " " else t for t in tokens]  # a space is drawn as a visible space
    assert [t.get_text() for t in heatmap.get_xticklabels()] == [f"{i} {t}" for i, t in enumerate(visible)]
    assert "attention weight" in colorbar.get_ylabel()
    matplotlib.pyplot.close(fig)
    fig = plot_attention_grid(attn)
    assert len(fig.axes) == 13  # 12 maps and one shared colorbar
    assert "attention weight" in fig.axes[-1].get_ylabel()
    matplotlib.pyplot.close(fig)
    fig = plot_attention_grid(attn, tokens=tokens)  # token ticks on the outer axes
    last_row_first = fig.axes[-1 - 4]  # maps are laid out row by row; the bottom-left one has both labels
    assert [t.get_text() for t in last_row_first.get_xticklabels()] == visible
    assert [t.get_text() for t in last_row_first.get_yticklabels()] == visible
    assert last_row_first.get_xlabel() == "key token"
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer=3), "layer=3 is out of range: this model has layer 0 to 2"),
    (dict(head=-1), "head=-1 is out of range"), (dict(query=7), "query=7 is out of range"),
])
def test_attention_choices_out_of_range(maps, kwargs, match):
    _, _, attn, tokens = maps
    with pytest.raises(ValueError, match=match):
        plot_attention(attn, tokens, **{"layer": 0, "head": 0, "query": 0, **kwargs})


def test_attention_labels_must_match(maps):
    _, _, attn, tokens = maps
    with pytest.raises(ValueError, match="6 token labels for 7 positions"):
        attention_explorer(attn, tokens[:6])
    with pytest.raises(ValueError, match=r"\(layers, heads, T, T\)"):
        attention_explorer(attn[0], tokens)


def test_attention_explorer_every_control_redraws(maps):
    _, _, attn, tokens = maps
    box = attention_explorer(attn, tokens)
    assert set(box.controls) == {"layer", "head", "query"}
    assert box.controls["query"].value == 6 and box.controls["query"].max == 6
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    for name, value in (("layer", 2), ("head", 3), ("query", 3)):
        before_image, before_html = box.image.value, box.html.value
        box.controls[name].value = value
        assert box.image.value != before_image, name
        assert box.html.value != before_html, name
    assert "layer 2, head 3, query 3" in box.html.value and "Not drawn" not in box.html.value


def test_attention_explorer_bad_value_gives_a_message(maps):
    _, _, attn, tokens = maps
    box = attention_explorer(attn, tokens)
    image = box.image.value
    box.controls["layer"].max = 5  # a control that allows a value the maps do not have
    box.controls["layer"].value = 4
    assert "Not drawn" in box.html.value and "layer=4 is out of range" in box.html.value
    assert box.image.value == image  # the last valid picture stays


def test_cache_numbers():
    sizes = cache_sizes(context=1, batch=1, dtype="bf16")
    assert sizes == {"MHA (128 K/V heads)": 40_960 * 122, "GQA (8 K/V heads)": 8 * 320 * 122,
                     "MQA (1 K/V head)": 320 * 122, "MLA (latent + rope key)": 70_272}
    assert cache_sizes(131072, 1, "bf16")["MLA (latent + rope key)"] == 70_272 * 131072
    assert cache_sizes(1000, 4, "fp8")["MLA (latent + rope key)"] == 35_136 * 4000
    rows = cache_rows(32768, 1, "bf16")
    assert [r[1] for r in rows] == ["40,960", "2,560", "320", "576"]
    assert rows[0][4] == "71.1" and rows[3][4] == "1.0" and rows[3][2] == "70,272"
    text = cache_table(131072, 1, "bf16")
    assert "8.58 GiB" in text and "610 GiB" in text


@pytest.mark.parametrize("kwargs,match", [
    (dict(context=0), "context=0 is out of range"), (dict(context=200_000), "out of range"),
    (dict(batch=0), "batch=0 is out of range"), (dict(batch=2.5), "batch=2.5"), (dict(dtype="int4"), "choose one of"),
])
def test_cache_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cache_sizes(**kwargs)
    with pytest.raises(ValueError, match=match):
        cache_explorer(**kwargs)


def test_cache_plot_has_two_axes():
    fig = plot_cache(8192, 2, "fp8")
    assert len(fig.axes) == 2
    matplotlib.pyplot.close(fig)


def test_cache_explorer_every_control_redraws():
    box = cache_explorer()
    assert set(box.controls) == {"context", "batch", "dtype"}
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    for name, value in (("context", 131072), ("batch", 8), ("dtype", "fp8")):
        before_image, before_html = box.image.value, box.html.value
        box.controls[name].value = value
        assert box.image.value != before_image, name
        assert box.html.value != before_html, name
    assert "131,072" in box.html.value and "batch 8" in box.html.value and "fp8" in box.html.value
    assert "Not drawn" not in box.html.value


def test_attention_explorer_escapes_tokens(maps):
    _, _, attn, tokens = maps
    box = attention_explorer(attn, tokens, query=0)
    assert "'&lt;bos&gt;'" in box.html.value and "<bos>" not in box.html.value  # shown, not a tag
    box.controls["query"].value = 3
    assert "query 3" in box.html.value
