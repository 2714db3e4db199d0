"""Lesson 01 widget: how big is the KV cache for MHA, GQA and MQA, next to DeepSeek-V3's MLA?

``kv_cache_explorer()`` returns a VBox with ``.controls`` (sliders and dropdowns), ``.image``
(bar chart at the chosen context + cache vs context) and ``.html`` (a table in GiB). The
drawing lives in ``plot_kv_cache`` and ``kv_cache_table`` so a lesson cell can show the same
picture without a kernel-side widget, and tests can drive the callback by setting ``.value``.
"""

from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from ..accounting import kv_cache_bytes, kv_cache_bytes_per_token, kv_cache_values_per_layer
from ..attention import check_heads
from ..config import ModelConfig
from ..viz import (
    COLORS,
    CONTEXTS,
    DTYPES,
    GiB,
    bar_with_references,
    fig_to_png,
    format_bytes,
    html_table,
    plot_bytes_vs_context,
    text_table,
    whole_number,
)
from . import explorer

HEAD_DIMS = (32, 64, 96, 128, 192, 256)
LIMITS = {"n_heads": (1, 256), "n_kv_heads": (1, 256), "batch": (1, 256), "n_layers": (1, 128)}


def _validate(n_heads, n_kv_heads, head_dim, context, dtype, batch, n_layers) -> None:
    for name, value in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads), ("batch", batch), ("n_layers", n_layers)):
        whole_number(name, value, *LIMITS[name])
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
        raise ValueError(f"head_dim={head_dim!r}: use a positive whole number, e.g. 128")
    if isinstance(context, bool) or not isinstance(context, int) or context <= 0:
        raise ValueError(f"context={context!r}: use a positive number of tokens")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    check_heads(n_heads, n_kv_heads)


def kv_cache_sizes(
    n_heads: int = 32, n_kv_heads: int = 8, head_dim: int = 128, context: int = 8192,
    dtype: str = "bf16", batch: int = 1, n_layers: int = 32,
) -> dict[str, int]:
    """Cache bytes at ``context`` tokens for MHA (n_heads K/V heads), GQA (n_kv_heads) and MQA (1)."""
    _validate(n_heads, n_kv_heads, head_dim, context, dtype, batch, n_layers)
    heads = {"MHA": n_heads, "GQA": n_kv_heads, "MQA": 1}
    return {
        kind: kv_cache_bytes(n_layers, g, head_dim, head_dim, DTYPES[dtype], tokens=context, batch=batch)
        for kind, g in heads.items()
    }


def deepseek_v3_reference(context: int = 8192, dtype: str = "bf16", batch: int = 1) -> dict[str, int]:
    """DeepSeek-V3 (61 layers) at the same context, batch and dtype: its MLA cache (576 values per token
    and layer) and the K/V it would need without the latent (128 heads x (192 + 128) = 40,960)."""
    config = ModelConfig.deepseek_v3()
    return {
        "DeepSeek-V3 MLA": kv_cache_bytes_per_token(config, "mla", DTYPES[dtype]) * context * batch,
        "DeepSeek-V3 expanded K/V": kv_cache_bytes_per_token(config, "mha", DTYPES[dtype]) * context * batch,
    }


def kv_cache_rows(n_heads=32, n_kv_heads=8, head_dim=128, context=8192, dtype="bf16", batch=1, n_layers=32):
    """Rows (attention, K/V heads, values per token and layer, bytes per token, cache size) for the tables."""
    sizes = kv_cache_sizes(n_heads, n_kv_heads, head_dim, context, dtype, batch, n_layers)
    heads = {"MHA": n_heads, "GQA": n_kv_heads, "MQA": 1}
    rows = [
        [kind, heads[kind], f"{2 * heads[kind] * head_dim:,}", f"{sizes[kind] // (context * batch):,}",
         f"{sizes[kind] / GiB:.3f}"]
        for kind in sizes
    ]
    config = ModelConfig.deepseek_v3()
    for (label, size), kind in zip(deepseek_v3_reference(context, dtype, batch).items(), ("mla", "mha")):
        heads_text = "latent" if kind == "mla" else config.num_attention_heads
        rows.append([label, heads_text, f"{kv_cache_values_per_layer(config, kind):,}",
                     f"{size // (context * batch):,}", f"{size / GiB:.3f}"])
    return rows


HEADER = ("attention", "K/V heads", "values/token/layer", "bytes/token", "cache GiB")


def kv_cache_table(n_heads=32, n_kv_heads=8, head_dim=128, context=8192, dtype="bf16", batch=1, n_layers=32) -> str:
    """The widget's table as plain text (for print in a lesson)."""
    rows = kv_cache_rows(n_heads, n_kv_heads, head_dim, context, dtype, batch, n_layers)
    title = f"{n_layers} layers, head_dim {head_dim}, {dtype}, context {context:,}, batch {batch}"
    return title + "\n" + text_table(HEADER, rows)


def plot_kv_cache(
    n_heads: int = 32, n_kv_heads: int = 8, head_dim: int = 128, context: int = 8192,
    dtype: str = "bf16", batch: int = 1, n_layers: int = 32,
) -> Figure:
    """Left: cache size at ``context`` for MHA/GQA/MQA with DeepSeek-V3's MLA and expanded K/V as dashed
    lines. Right: cache size vs context (1K..128K), the chosen context marked."""
    sizes = kv_cache_sizes(n_heads, n_kv_heads, head_dim, context, dtype, batch, n_layers)
    refs = deepseek_v3_reference(context, dtype, batch)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = {"MHA": f"MHA ({n_heads})", "GQA": f"GQA ({n_kv_heads})", "MQA": "MQA (1)"}
    bar_with_references(
        left, {labels[k]: v for k, v in sizes.items()}, refs,
        colors=[COLORS["mha"], COLORS["gqa"], COLORS["mqa"]],
    )
    left.set_title(f"KV cache at {context:,} tokens, batch {batch}, {dtype}", fontsize=10)
    per_token = {labels[k]: v / context for k, v in sizes.items()}  # bytes per position (whole batch)
    per_token.update({k: v / context for k, v in refs.items()})
    plot_bytes_vs_context(
        right, per_token, CONTEXTS,
        colors={labels["MHA"]: COLORS["mha"], labels["GQA"]: COLORS["gqa"], labels["MQA"]: COLORS["mqa"],
                "DeepSeek-V3 MLA": COLORS["mla"], "DeepSeek-V3 expanded K/V": COLORS["reference"]},
        styles={"DeepSeek-V3 MLA": "--", "DeepSeek-V3 expanded K/V": ":"},
    )
    right.axvline(context, color="0.6", linewidth=0.8)
    right.set_title(f"{n_layers} layers, head_dim {head_dim}", fontsize=10)
    fig.tight_layout()
    return fig


def kv_cache_explorer(
    n_heads: int = 32, n_kv_heads: int = 8, head_dim: int = 128, context: int = 8192,
    dtype: str = "bf16", batch: int = 1, n_layers: int = 32,
) -> W.VBox:
    """Sliders for heads, K/V heads (groups), head dim, context, dtype, batch and layers; redraws on change."""
    style = {"description_width": "110px"}
    layout = W.Layout(width="360px")
    controls = {
        "n_heads": W.IntSlider(value=n_heads, min=1, max=LIMITS["n_heads"][1], description="query heads",
                               style=style, layout=layout),
        "n_kv_heads": W.IntSlider(value=n_kv_heads, min=1, max=LIMITS["n_kv_heads"][1],
                                  description="K/V heads (GQA)", style=style, layout=layout),
        "head_dim": W.Dropdown(options=sorted(set(HEAD_DIMS) | {head_dim}), value=head_dim, description="head dim",
                               style=style, layout=layout),
        "context": W.SelectionSlider(options=[(f"{c // 1024}K", c) for c in sorted(set(CONTEXTS) | {context})],
                                     value=context, description="context", style=style, layout=layout),
        "dtype": W.Dropdown(options=list(DTYPES), value=dtype, description="dtype", style=style, layout=layout),
        "batch": W.IntSlider(value=batch, min=1, max=LIMITS["batch"][1], description="batch", style=style,
                             layout=layout),
        "n_layers": W.IntSlider(value=n_layers, min=1, max=LIMITS["n_layers"][1], description="layers",
                                style=style, layout=layout),
    }

    def render(**values) -> tuple[bytes, str]:
        rows = kv_cache_rows(**values)
        png = fig_to_png(plot_kv_cache(**values))
        return png, (
            f"<b>{values['n_layers']} layers, head_dim {values['head_dim']}, {values['dtype']} "
            f"({format_bytes(torch.empty((), dtype=DTYPES[values['dtype']]).element_size())} per value), "
            f"context {values['context']:,}, batch {values['batch']}</b>" + html_table(HEADER, rows)
        )

    requested = dict(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, batch=batch, n_layers=n_layers)

    def adjust(n_heads: int, n_kv_heads: int, **_) -> dict[str, tuple[int, str]]:
        if n_kv_heads > n_heads:  # (K/V heads that do not divide the query heads stay an error message)
            return {"n_kv_heads": (n_heads, "there cannot be more K/V heads than query heads")}
        return {}

    return explorer(controls, render, columns=2, requested=requested, adjust=adjust)
