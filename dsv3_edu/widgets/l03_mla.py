"""Lesson 03 widgets: MLA's attention maps, and its cache against MHA, GQA and MQA.

``attention_explorer(attn, tokens)`` returns a VBox with ``.controls`` (layer, head, query position),
``.image`` (that head's attention map with the query's row marked, and the row as bars) and ``.html``
(the keys the query reads most). ``attention_maps(model, input_ids)`` records the maps of every
layer with ``MLA.record_attn``; ``plot_attention_grid`` draws all layers and heads at once.

``cache_explorer(context, batch, dtype)`` returns a VBox with ``.controls`` (context, batch, dtype),
``.image`` (cache vs context, and the four schemes at the chosen context) and ``.html`` (a table) for
DeepSeek-V3's attention shape: 61 layers, 128 heads, keys 192 wide, values 128 wide, MLA latent 512
plus rope key 64. ``plot_cache`` and ``cache_table`` draw the same picture and table for a lesson cell.

Letters: L layers, H heads, T query positions, S key positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from ..accounting import kv_cache_bytes_per_token, kv_cache_values_per_layer
from ..config import ModelConfig
from ..viz import (
    COLORS,
    CONTEXTS,
    DTYPES,
    GiB,
    bar_with_references,
    escape,
    fig_to_png,
    format_bytes,
    html_table,
    plot_bytes_vs_context,
    text_table,
    visible_token,
    whole_number,
)
from . import explorer

# ----------------------------------------------------------------------------- attention maps


def attention_maps(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Attention probabilities of every main layer for one sequence: (L, H, T, T).

    Runs ``model`` (a ``DeepSeekV3``) once without gradients, MTP off, with ``record_attn`` on in
    every layer's MLA; the flags are restored afterwards.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"attention_maps takes one sequence, (T,) or (1, T) ids; got shape {tuple(input_ids.shape)}")
    attns = [layer.self_attn for layer in model.model.layers]
    flags = [a.record_attn for a in attns]
    try:
        for a in attns:
            a.record_attn = True
        with torch.no_grad():
            model(input_ids, mtp=False)
        return torch.stack([a.last_attn[0].float() for a in attns])  # (L, H, T, T)
    finally:
        for a, flag in zip(attns, flags):
            a.record_attn = flag


def _check_attn(attn: torch.Tensor, tokens: Sequence[str]) -> None:
    if not isinstance(attn, torch.Tensor) or attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        shape = tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__
        raise ValueError(f"attn must be (layers, heads, T, T) as attention_maps returns, got {shape}")
    if len(tokens) != attn.shape[-1]:
        raise ValueError(f"{len(tokens)} token labels for {attn.shape[-1]} positions: give one label per position")


def _check_choice(attn: torch.Tensor, layer: int, head: int, query: int) -> None:
    L, H, T, _ = attn.shape
    for name, value, n in (("layer", layer, L), ("head", head, H), ("query", query, T)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            raise ValueError(f"{name}={value!r} is out of range: this model has {name} 0 to {n - 1}")


def plot_attention_grid(attn: torch.Tensor, title: str = "", cell: float = 2.2,
                        tokens: Sequence[str] | None = None) -> Figure:
    """One heatmap per (layer, head): rows are query positions, columns key positions, one shared colorbar.

    ``tokens`` (T labels) label the outer axes (at most 16 ticks each); without them the ticks are positions.
    """
    if not isinstance(attn, torch.Tensor) or attn.dim() != 4:
        raise ValueError("attn must be (layers, heads, T, T)")
    L, H, T = attn.shape[:3]
    if tokens is not None:
        _check_attn(attn, tokens)
    every = max(1, -(-T // 16))
    ticks = list(range(0, T, every))
    labels = [visible_token(tokens[i]) if tokens is not None else str(i) for i in ticks]
    fig, axes = plt.subplots(L, H, figsize=(cell * H + 1.2, cell * L), squeeze=False)
    image = None
    for i in range(L):
        for j in range(H):
            ax = axes[i, j]
            image = ax.imshow(attn[i, j].numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks(ticks, labels if i == L - 1 else [], fontsize=5, rotation=90)
            ax.set_yticks(ticks, labels if j == 0 else [], fontsize=5)
            if i == 0:
                ax.set_title(f"head {j}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"layer {i}\nquery token", fontsize=9)
            if i == L - 1:
                ax.set_xlabel("key token", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight (probability)")
    return fig


def plot_attention(attn: torch.Tensor, tokens: Sequence[str], layer: int = 0, head: int = 0,
                   query: int | None = None) -> Figure:
    """Left: the (T, T) map of one head, the query's row outlined. Right: that row, one bar per key."""
    _check_attn(attn, tokens)
    T = attn.shape[-1]
    query = T - 1 if query is None else query
    _check_choice(attn, layer, head, query)
    p = attn[layer, head]  # (T, S)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.6]})
    image = left.imshow(p.numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    left.add_patch(plt.Rectangle((-0.5, query - 0.5), T, 1, fill=False, edgecolor="tab:red", linewidth=1.5))
    every = max(1, -(-T // 32))  # at most 32 token labels per axis
    ticks = list(range(0, T, every))
    left.set_xticks(ticks, [f"{i} {visible_token(tokens[i])}" for i in ticks], fontsize=6, rotation=90)
    left.set_yticks(ticks, [f"{visible_token(tokens[i])} {i}" for i in ticks], fontsize=6)
    fig.colorbar(image, ax=left, fraction=0.046, pad=0.02, label="attention weight (probability)")
    left.set_xlabel("key position and token")
    left.set_ylabel("query position and token")
    left.set_title(f"layer {layer}, head {head}", fontsize=10)
    row = p[query, : query + 1].numpy()
    colors = [COLORS["mla"]] * len(row)
    colors[int(row.argmax())] = "tab:red"
    right.bar(range(len(row)), row, color=colors)
    right.set_xticks(range(len(row)), [visible_token(t) for t in tokens[: query + 1]], fontsize=7)
    right.set_xlim(-0.5, T - 0.5)
    right.set_ylim(0, min(1.0, float(row.max()) * 1.15 + 0.02))
    right.set_xlabel(f"key token (positions 0..{query})")
    right.set_ylabel("attention weight (probability)")
    right.set_title(f"query {query} ({visible_token(tokens[query])!r}) reads keys 0..{query}", fontsize=10)
    fig.tight_layout()
    return fig


def attention_row(attn: torch.Tensor, tokens: Sequence[str], layer: int, head: int, query: int,
                  top: int = 5) -> list[list[str]]:
    """The ``top`` keys one query reads most: rows (key position, token, weight)."""
    _check_attn(attn, tokens)
    _check_choice(attn, layer, head, query)
    row = attn[layer, head, query, : query + 1]
    weights, keys = row.topk(min(top, query + 1))
    return [[str(k), repr(visible_token(tokens[k])), f"{w:.3f}"] for k, w in zip(keys.tolist(), weights.tolist())]


def attention_explorer(attn: torch.Tensor, tokens: Sequence[str], layer: int = 0, head: int = 0,
                       query: int | None = None) -> W.VBox:
    """Sliders for layer, head and query position over recorded maps (L, H, T, T); redraws on change."""
    _check_attn(attn, tokens)
    L, H, T, _ = attn.shape
    query = T - 1 if query is None else query
    style = {"description_width": "110px"}
    layout = W.Layout(width="420px")
    controls = {
        "layer": W.IntSlider(value=layer, min=0, max=L - 1, description="layer", style=style, layout=layout),
        "head": W.IntSlider(value=head, min=0, max=H - 1, description="head", style=style, layout=layout),
        "query": W.IntSlider(value=query, min=0, max=T - 1, description="query position", style=style,
                             layout=layout),
    }

    def render(layer: int, head: int, query: int) -> tuple[bytes, str]:
        rows = attention_row(attn, tokens, layer, head, query)
        png = fig_to_png(plot_attention(attn, tokens, layer, head, query))
        return png, (f"<b>layer {layer}, head {head}, query {query} "
                     f"({escape(repr(visible_token(tokens[query])))}): the keys it reads most</b>"
                     + html_table(["key position", "token", "weight"], rows))

    return explorer(controls, render, rows=[["layer", "head"], ["query"]],
                    requested=dict(layer=layer, head=head, query=query))


# ------------------------------------------------------------------------------ cache sizes

MAX_BATCH = 256
GQA_GROUPS = 8
H200_BYTES = 141 * 10**9  # one H200's memory, a scale reference
SCHEMES = {  # label -> (accounting kind, groups)
    "MHA (128 K/V heads)": ("mha", None),
    f"GQA ({GQA_GROUPS} K/V heads)": ("gqa", GQA_GROUPS),
    "MQA (1 K/V head)": ("mqa", None),
    "MLA (latent + rope key)": ("mla", None),
}
SCHEME_COLORS = dict(zip(SCHEMES, (COLORS["mha"], COLORS["gqa"], COLORS["mqa"], COLORS["mla"])))
HEADER = ("attention", "values/token/layer", "bytes/token", "cache", "x MLA")


def _validate(context: int, batch: int, dtype: str) -> None:
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= CONTEXTS[-1]:
        raise ValueError(f"context={context!r} is out of range: use 1 to {CONTEXTS[-1]:,} tokens")
    whole_number("batch", batch, 1, MAX_BATCH)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")


def cache_sizes(context: int = 32768, batch: int = 1, dtype: str = "bf16",
                config: ModelConfig | None = None) -> dict[str, int]:
    """Cache bytes of ``batch`` sequences of ``context`` tokens for each scheme, DeepSeek-V3's shape."""
    _validate(context, batch, dtype)
    config = config or ModelConfig.deepseek_v3()
    return {label: kv_cache_bytes_per_token(config, kind, DTYPES[dtype], groups) * context * batch
            for label, (kind, groups) in SCHEMES.items()}


def cache_rows(context: int = 32768, batch: int = 1, dtype: str = "bf16",
               config: ModelConfig | None = None) -> list[list[str]]:
    """Rows (attention, values per token and layer, bytes per token, cache size, ratio to MLA)."""
    config = config or ModelConfig.deepseek_v3()
    sizes = cache_sizes(context, batch, dtype, config)
    mla = sizes["MLA (latent + rope key)"]
    rows = []
    for label, (kind, groups) in SCHEMES.items():
        rows.append([label, f"{kv_cache_values_per_layer(config, kind, groups):,}",
                     f"{kv_cache_bytes_per_token(config, kind, DTYPES[dtype], groups):,}",
                     format_bytes(sizes[label]), f"{sizes[label] / mla:.1f}"])
    return rows


def cache_table(context: int = 32768, batch: int = 1, dtype: str = "bf16", config: ModelConfig | None = None) -> str:
    """The widget's table as plain text (for print in a lesson)."""
    rows = cache_rows(context, batch, dtype, config)
    layers = (config or ModelConfig.deepseek_v3()).num_hidden_layers
    return f"{layers} layers, {dtype}, context {context:,}, batch {batch}\n" + text_table(HEADER, rows)


def plot_cache(context: int = 32768, batch: int = 1, dtype: str = "bf16", config: ModelConfig | None = None) -> Figure:
    """Left: cache vs context (1K..128K) for the four schemes, the chosen context marked.
    Right: the four caches at the chosen context and batch, one H200's memory as a dashed line."""
    config = config or ModelConfig.deepseek_v3()
    sizes = cache_sizes(context, batch, dtype, config)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    per_position = {label: size / context for label, size in sizes.items()}  # bytes per position, whole batch
    plot_bytes_vs_context(left, per_position, CONTEXTS, colors=SCHEME_COLORS)
    left.axvline(context, color="0.6", linewidth=0.8)
    for label, size in sizes.items():
        left.plot([context], [size / GiB], "o", color=SCHEME_COLORS[label], markersize=4)
    left.axhline(H200_BYTES / GiB, color=COLORS["reference"], linewidth=0.8, linestyle=":")
    left.annotate("one H200: 141 GB", (CONTEXTS[0], H200_BYTES / GiB * 1.2), fontsize=8)
    left.legend(fontsize=8, loc="lower right")
    left.set_title(f"DeepSeek-V3's shape ({config.num_hidden_layers} layers), {dtype}, batch {batch}", fontsize=10)
    bar_with_references(right, {label.split(" (")[0]: size for label, size in sizes.items()},
                        {"one H200 (141 GB)": H200_BYTES}, colors=list(SCHEME_COLORS.values()))
    right.set_title(f"at {context:,} tokens", fontsize=10)
    fig.tight_layout()
    return fig


def cache_explorer(context: int = 32768, batch: int = 1, dtype: str = "bf16") -> W.VBox:
    """Context, batch and dtype controls over DeepSeek-V3's cache for MHA, GQA, MQA and MLA."""
    _validate(context, batch, dtype)
    style = {"description_width": "80px"}
    layout = W.Layout(width="380px")
    options = [(f"{c // 1024}K" if c % 1024 == 0 else str(c), c) for c in sorted(set(CONTEXTS) | {context})]
    controls = {
        "context": W.SelectionSlider(options=options, value=context, description="context", style=style,
                                     layout=layout),
        "batch": W.IntSlider(value=batch, min=1, max=MAX_BATCH, description="batch", style=style, layout=layout),
        "dtype": W.Dropdown(options=list(DTYPES), value=dtype, description="dtype", style=style,
                            layout=W.Layout(width="200px")),
    }

    def render(**values) -> tuple[bytes, str]:
        rows = cache_rows(**values)
        png = fig_to_png(plot_cache(**values))
        return png, (f"<b>DeepSeek-V3's shape, 61 layers, {values['dtype']}, context {values['context']:,}, "
                     f"batch {values['batch']}</b>" + html_table(HEADER, rows))

    return explorer(controls, render, columns=len(controls), requested=dict(batch=batch))
