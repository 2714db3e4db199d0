"""Lesson 10: DeepSeek-V3 at full scale: the FP8 release, bytes of the weights, the KV cache, GPUs.

FP8 block scaling as the release stores it, and the bytes of the weights in each format, are
``dsv3_edu.fp8``; this module draws them.

``deployment(...)`` answers "what fits": weights on n GPUs, and how many tokens of KV cache the rest
holds, for MLA (576 values per token and layer) and for the expanded per-head K/V (40,960).
``deployment_explorer()`` is the widget: ``.controls``, ``.image``, ``.html``, ``.redraw``.

Memory sizes of GPUs are taken as GiB (an "80 GB" H100 has 80 GiB of HBM). ``usable`` is the fraction a
server may fill (vLLM's ``gpu_memory_utilization`` defaults to 0.9); activations, CUDA graphs and
communication buffers also live in it, so the cache numbers are upper bounds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import ipywidgets as W
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..accounting import count_parameters, kv_cache_bytes_per_token
from ..config import ModelConfig
from ..fp8 import WEIGHT_FORMATS, weight_bytes
from ..viz import (
    COLORS,
    CONTEXTS,
    DTYPES,
    GiB,
    fig_to_png,
    format_bytes,
    format_count,
    html_table,
    plot_bytes_vs_context,
    text_table,
    whole_number,
)
from . import explorer
from .l00_welcome import COMPONENT_COLORS, COMPONENTS

CACHE_DTYPES = {k: DTYPES[k] for k in ("bf16", "fp8", "fp32")}
GPU_MEMORY = {"80 GB (A100, H100)": 80, "141 GB (H200)": 141, "192 GB (MI300X, B200)": 192}
MAX_CONTEXT = ModelConfig.deepseek_v3().max_position_embeddings  # 163,840: the full YaRN range
USABLE = 0.9
LIMITS = {"batch": (1, 65536), "n_gpus": (1, 1024)}


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
@dataclass
class Deployment:
    """What fits on ``n_gpus`` GPUs of ``gpu_gib`` GiB: weights, then the KV cache in what is left."""

    context: int
    batch: int
    cache_dtype: str
    gpu_gib: float
    n_gpus: int
    weights: str
    usable: float
    weight_bytes: int  # the main model, plus the MTP module when ``mtp`` (speculative decoding keeps it)
    capacity_bytes: int  # n_gpus x (gpu_gib x usable - headroom): what weights and KV cache may fill
    gpus_for_weights: int  # the fewest GPUs whose usable memory holds the weights alone
    cache_budget: int  # capacity - weights (negative: the weights do not fit)
    mla_per_token: int  # bytes per token over all layers, (d_c + d_h^R) values per layer
    expanded_per_token: int  # bytes per token of per-head K (d_h + d_h^R) and V (d_h), all heads and layers
    max_position_embeddings: int
    mtp: bool = False  # the MTP module is served too: its weights, and its attention layer's cache
    headroom_bytes: int = 0  # per GPU, kept free for activations and buffers (not for weights or cache)

    @property
    def mla_cache(self) -> int:
        return self.mla_per_token * self.context * self.batch

    @property
    def expanded_cache(self) -> int:
        return self.expanded_per_token * self.context * self.batch

    def max_tokens(self, kind: str) -> int:
        """Cached tokens (batch x context, summed over sequences) that fit in the cache budget."""
        per = self.mla_per_token if kind == "mla" else self.expanded_per_token
        return max(self.cache_budget, 0) // per

    def max_batch(self, kind: str) -> int:
        return self.max_tokens(kind) // self.context

    def max_context(self, kind: str) -> int:
        return self.max_tokens(kind) // self.batch

    def fits(self, kind: str) -> bool:
        return self.cache_budget >= (self.mla_cache if kind == "mla" else self.expanded_cache)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(mla_cache=self.mla_cache, expanded_cache=self.expanded_cache)
        return out


def deployment(
    context: int = 131072, batch: int = 16, cache_dtype: str = "bf16", gpu_gib: float = 141, n_gpus: int = 8,
    weights: str = "fp8", usable: float = USABLE, config: ModelConfig | None = None, mtp: bool = False,
    headroom_gib: float = 0.0,
) -> Deployment:
    """Weights of the main model on ``n_gpus`` GPUs, and the KV cache of ``batch`` sequences of ``context``
    tokens in the rest, for MLA and for the expanded per-head K/V. Raises ValueError on bad values.

    ``mtp``: also serve the MTP module(s) for speculative decoding: their weights, and one more attention
    layer per module in the KV cache (the module caches its own latent). ``headroom_gib``: GiB per GPU
    kept free for activations, communication buffers and the like, taken out of the usable memory.
    """
    config = config or ModelConfig.deepseek_v3()
    limit = config.max_position_embeddings
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= limit:
        raise ValueError(f"context={context!r}: use a whole number of tokens from 1 to max_position_embeddings="
                         f"{limit:,} (YaRN stretches the 4K-trained RoPE by 40x)")
    for name, value in (("batch", batch), ("n_gpus", n_gpus)):
        whole_number(name, value, *LIMITS[name])
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype={cache_dtype!r}: choose one of {', '.join(CACHE_DTYPES)}")
    if isinstance(gpu_gib, bool) or not isinstance(gpu_gib, (int, float)) or not gpu_gib > 0:
        raise ValueError(f"gpu_gib={gpu_gib!r}: use the memory of one GPU in GiB, e.g. 80")
    if not 0 < usable <= 1:
        raise ValueError(f"usable={usable!r}: the fraction of GPU memory a server may fill, in (0, 1]")
    if isinstance(headroom_gib, bool) or not isinstance(headroom_gib, (int, float)) or headroom_gib < 0:
        raise ValueError(f"headroom_gib={headroom_gib!r}: use the GiB per GPU to keep free, 0 or more")
    w = weight_bytes(config, weights, include_mtp=mtp)
    headroom = int(headroom_gib * GiB)
    per_gpu = gpu_gib * GiB * usable - headroom
    if per_gpu <= 0:
        raise ValueError(f"headroom_gib={headroom_gib} leaves nothing of a {gpu_gib} GiB GPU at {usable:.0%}")
    capacity = int(n_gpus * per_gpu)
    dtype = CACHE_DTYPES[cache_dtype]
    L = config.num_hidden_layers
    cached_layers = L + (config.num_nextn_predict_layers if mtp else 0)

    def per_token(kind: str) -> int:
        return kv_cache_bytes_per_token(config, kind, dtype) // L * cached_layers

    return Deployment(
        context=context, batch=batch, cache_dtype=cache_dtype, gpu_gib=gpu_gib, n_gpus=n_gpus, weights=weights,
        usable=usable, weight_bytes=w, capacity_bytes=capacity, gpus_for_weights=math.ceil(w / per_gpu),
        cache_budget=capacity - w, mla_per_token=per_token("mla"), expanded_per_token=per_token("mha"),
        max_position_embeddings=limit, mtp=mtp, headroom_bytes=headroom,
    )


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
