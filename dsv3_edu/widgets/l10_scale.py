"""Lesson 10: DeepSeek-V3 at full scale: the FP8 release, bytes of the weights, the KV cache, GPUs.

FP8 block scaling as the release stores it, and the bytes of the weights in each format, are
``dsv3_edu.fp8``; this module draws them.

``dsv3_edu.accounting.deployment(...)`` answers "what fits": weights on n GPUs, and how many tokens of
KV cache the rest holds, for MLA (576 values per token and layer) and for the expanded per-head K/V
(40,960); this module prints and draws it. ``deployment_explorer()`` is the widget: ``.controls``,
``.image``, ``.html``, ``.redraw``.
"""

from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..accounting import CACHE_DTYPES, USABLE, count_parameters, deployment
from ..config import ModelConfig
from ..fp8 import WEIGHT_FORMATS, weight_bytes
from ..viz import (
    COLORS,
    CONTEXTS,
    GiB,
    fig_to_png,
    format_bytes,
    format_count,
    html_table,
    plot_bytes_vs_context,
    text_table,
)
from . import explorer
from .l00_welcome import COMPONENT_COLORS, COMPONENTS

GPU_MEMORY = {"80 GB (A100, H100)": 80, "141 GB (H200)": 141, "192 GB (MI300X, B200)": 192}
MAX_CONTEXT = ModelConfig.deepseek_v3().max_position_embeddings  # 163,840: the full YaRN range


# ------------------------------------------------------------------------------------ parameters
def parameter_rows(config: ModelConfig | None = None) -> list[list[str]]:
    """Rows (component, parameters, active per token, share of the total) at any size, MTP last."""
    config = config or ModelConfig.deepseek_v3()
    counts = count_parameters(config)
    rows = [
        [label, f"{counts[total]:,}", f"{counts[active]:,}", f"{counts[total] / counts['total']:.2%}"]
        for label, (total, active) in COMPONENTS.items()
    ]
    rows.append(["main model", f"{counts['total']:,}", f"{counts['active']:,}", "100.00%"])
    rows.append(["MTP module(s), unique", f"{counts['mtp']:,}", f"{counts['mtp_active']:,}",
                 f"{counts['mtp'] / counts['total']:.2%}"])
    return rows


def plot_parameters(config: ModelConfig | None = None, gpu_gib: tuple[int, ...] = (80, 141, 192)) -> Figure:
    """Left: parameters per component (all, and those one token uses), log scale, with the MTP module.
    Right: bytes of the weights as BF16 and as the FP8 release, against 8-GPU nodes of ``gpu_gib``."""
    config = config or ModelConfig.deepseek_v3()
    counts = count_parameters(config)
    labels = list(COMPONENTS) + ["MTP module (unique)"]
    total = [counts[t] for t, _ in COMPONENTS.values()] + [counts["mtp"]]
    active = [counts[a] for _, a in COMPONENTS.values()] + [counts["mtp_active"]]
    colors = [COMPONENT_COLORS.get(k, "tab:cyan") for k in labels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.5, 1]})
    ys = range(len(labels))[::-1]
    left.barh(list(ys), total, color=colors, alpha=0.35, label="all parameters")
    left.barh(list(ys), active, color=colors, height=0.45, label="active per token")
    for y, t, a in zip(ys, total, active):
        left.annotate(f" {format_count(t)}" + (f" ({format_count(a)} active)" if a != t else ""), (t, y),
                      va="center", fontsize=8)
    left.set_yticks(list(ys), labels)
    left.set_xscale("log")
    left.set_xlim(min(total) / 2, max(total) * 60)
    left.set_xlabel("parameters (log scale)")
    left.set_title(f"{format_count(counts['total'])} parameters, {format_count(counts['active'])} active per "
                   f"token (+ MTP {format_count(counts['mtp'])})", fontsize=10)
    left.legend(fontsize=8, loc="upper right")

    sizes = {"BF16": weight_bytes(config, "bf16"), "FP8 release": weight_bytes(config, "fp8")}
    bars = right.bar(list(sizes), [v / GiB for v in sizes.values()], color=["tab:purple", "tab:blue"])
    for bar, v in zip(bars, sizes.values()):
        right.annotate(format_bytes(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                       va="bottom", fontsize=9)
    for i, mem in enumerate(gpu_gib):
        right.axhline(8 * mem * USABLE, color=COLORS["reference"], linestyle=("--", ":", "-.")[i % 3], linewidth=1,
                      label=f"8 x {mem} GiB x {USABLE:.0%} = {8 * mem * USABLE:,.0f} GiB")
    right.set_ylabel("weights of the main model (GiB)")
    right.set_title("Every expert must be in memory", fontsize=10)
    right.legend(fontsize=8, loc="upper right")
    right.set_ylim(0, max(sizes.values()) / GiB * 1.45)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ deployment
def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 and n >= 1024 else f"{n:,}"


def deployment_rows(**kwargs) -> list[list[str]]:
    """Rows (quantity, MLA, expanded K/V) of the widget's table."""
    dep = deployment(**kwargs)
    budget = f"the {format_bytes(dep.cache_budget)} left" if dep.cache_budget > 0 else "memory (none left)"

    def ctx(kind: str) -> str:
        n = dep.max_context(kind)
        return f"{n:,}" + (" (> max positions)" if n > dep.max_position_embeddings else "")

    return [
        ["cache per token (all layers)", format_bytes(dep.mla_per_token), format_bytes(dep.expanded_per_token)],
        [f"cache at {_tokens(dep.context)} x batch {dep.batch}", format_bytes(dep.mla_cache),
         format_bytes(dep.expanded_cache)],
        [f"fits in {budget}", "yes" if dep.fits("mla") else "no", "yes" if dep.fits("expanded") else "no"],
        ["cached tokens that fit (batch x context)", f"{dep.max_tokens('mla'):,}", f"{dep.max_tokens('expanded'):,}"],
        [f"max batch at {_tokens(dep.context)}", f"{dep.max_batch('mla'):,}", f"{dep.max_batch('expanded'):,}"],
        [f"max context at batch {dep.batch}", ctx("mla"), ctx("expanded")],
    ]


def deployment_summary(**kwargs) -> str:
    dep = deployment(**kwargs)
    headroom = f" - {format_bytes(dep.headroom_bytes)} headroom each" if dep.headroom_bytes else ""
    what = f"weights ({dep.weights}{' + MTP module' if dep.mtp else ''})"
    line = (f"{dep.n_gpus} x ({dep.gpu_gib:g} GiB at {dep.usable:.0%}{headroom}) = {format_bytes(dep.capacity_bytes)} "
            f"usable; {what} {format_bytes(dep.weight_bytes)}, alone need {dep.gpus_for_weights} GPUs; ")
    if not dep.headroom_bytes:
        line = line.replace(f"{dep.n_gpus} x ({dep.gpu_gib:g} GiB at {dep.usable:.0%}) =",
                            f"{dep.n_gpus} x {dep.gpu_gib:g} GiB at {dep.usable:.0%} =")
    if dep.cache_budget > 0:
        return line + f"left for the KV cache ({dep.cache_dtype}): {format_bytes(dep.cache_budget)}"
    return line + f"the weights do not fit: {format_bytes(-dep.cache_budget)} short, no room for any cache"


HEADER = ("", "MLA (latent + rope key)", "expanded K/V (per head)")


def deployment_table(**kwargs) -> str:
    """The widget's numbers as plain text (for print in a lesson)."""
    return deployment_summary(**kwargs) + "\n" + text_table(HEADER, deployment_rows(**kwargs))


def plot_deployment(**kwargs) -> Figure:
    """Left: weights + cache against the usable memory, for MLA and the expanded cache (bars above the
    frame are cut, their totals written). Right: cache vs context at this batch, with the cache budget."""
    dep = deployment(**kwargs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    labels = ["MLA", "expanded K/V"]
    caches = [dep.mla_cache, dep.expanded_cache]
    weights = dep.weight_bytes / GiB
    top = max(dep.capacity_bytes, dep.weight_bytes) / GiB * 1.6
    left.bar(labels, [weights] * 2, color="0.6", label=f"weights ({dep.weights})")
    left.bar(labels, [c / GiB for c in caches], bottom=[weights] * 2,
             color=[COLORS["mla"], COLORS["mha"]], label=f"KV cache ({dep.cache_dtype})")
    for i, c in enumerate(caches):
        total = dep.weight_bytes + c
        fits = c <= dep.cache_budget
        text = f"{format_bytes(total)}\n{'fits' if fits else 'does not fit'}"
        left.annotate(text, (i, min(total / GiB, top * 0.97)), ha="center", va="top" if total / GiB > top else "bottom",
                      fontsize=9, color="black" if fits else "#b00020",
                      bbox=dict(facecolor="white", alpha=0.85, edgecolor="none", pad=1))
    left.axhline(dep.capacity_bytes / GiB, color="black", linestyle="--", linewidth=1,
                 label=f"usable: {dep.n_gpus} x {dep.gpu_gib:g} GiB x {dep.usable:.0%}")
    left.set_ylim(0, top)
    left.set_ylabel("memory (GiB)")
    left.set_title(f"{_tokens(dep.context)} tokens x batch {dep.batch}", fontsize=10)
    left.legend(fontsize=8, loc="upper left")

    contexts = CONTEXTS
    per_token = {"MLA": dep.mla_per_token * dep.batch, "expanded K/V": dep.expanded_per_token * dep.batch}
    plot_bytes_vs_context(right, per_token, contexts, colors={"MLA": COLORS["mla"], "expanded K/V": COLORS["mha"]})
    if dep.cache_budget > 0:
        right.axhline(dep.cache_budget / GiB, color="black", linestyle="--", linewidth=1,
                      label=f"left for the cache: {format_bytes(dep.cache_budget)}")
    right.axvline(dep.context, color="0.6", linewidth=0.8)
    right.legend(fontsize=8, loc="upper left")
    right.set_title(f"KV cache of {dep.batch} sequence{'s' * (dep.batch > 1)}, {dep.cache_dtype}", fontsize=10)
    fig.tight_layout()
    return fig


def deployment_explorer(
    context: int = 131072, batch: int = 16, cache_dtype: str = "bf16", gpu_gib: float = 141, n_gpus: int = 8,
    weights: str = "fp8",
) -> W.VBox:
    """Context, batch, cache dtype, GPU memory, number of GPUs and weight format; redraws on change."""
    style = {"description_width": "120px"}
    layout = W.Layout(width="380px")
    gpu_options = dict(GPU_MEMORY)
    if gpu_gib not in gpu_options.values():
        gpu_options[f"{gpu_gib:g} GiB"] = gpu_gib
    controls = {
        "context": W.SelectionSlider(options=[(_tokens(c), c) for c in sorted(set(CONTEXTS) | {context, MAX_CONTEXT})],
                                     value=context, description="context", style=style, layout=layout),
        "batch": W.IntText(value=batch, description="batch", style=style, layout=layout),
        "cache_dtype": W.Dropdown(options=list(CACHE_DTYPES), value=cache_dtype, description="cache dtype",
                                  style=style, layout=layout),
        "gpu_gib": W.Dropdown(options=list(gpu_options.items()), value=gpu_gib, description="GPU memory",
                              style=style, layout=layout),
        "n_gpus": W.IntSlider(value=n_gpus, min=1, max=32, description="GPUs", style=style, layout=layout),
        "weights": W.Dropdown(options=list(WEIGHT_FORMATS[:2]), value=weights, description="weights",
                              style=style, layout=layout),
    }

    def render(**values) -> tuple[bytes, str]:
        rows = deployment_rows(**values)
        summary = deployment_summary(**values)
        png = fig_to_png(plot_deployment(**values))
        return png, f"<b>{summary}</b>" + html_table(HEADER, rows)

    return explorer(controls, render, columns=2, requested=dict(batch=batch, n_gpus=n_gpus))
