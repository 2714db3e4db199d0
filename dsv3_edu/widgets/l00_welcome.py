"""Lesson 00 widget: total vs active parameters, per component, for a config you can change.

``parameter_explorer()`` returns a VBox with ``.controls`` (preset, routed experts, experts per
token, shared experts, layers), ``.image`` (stacked bars: total vs active per token) and ``.html``
(the numbers). ``plot_parameter_budget(config)`` draws the same picture for a lesson cell.
"""

from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..accounting import count_parameters
from ..config import ModelConfig
from ..viz import fig_to_png, format_count, html_table, stacked_bars
from . import explorer

PRESETS = {"deepseek_v3": ModelConfig.deepseek_v3, "tiny": ModelConfig.tiny}
# Component label -> keys of count_parameters (total, active per token).
COMPONENTS = {
    "embedding": ("embedding", "embedding"),
    "attention (MLA)": ("attention", "attention"),
    "dense FFN": ("dense_ffn", "dense_ffn"),
    "router": ("moe_gate", "moe_gate"),
    "shared experts": ("moe_shared", "moe_shared"),
    "routed experts": ("moe_routed", "moe_routed_active"),
    "norms": ("norms", "norms"),
    "output head": ("head", "head"),
}
COMPONENT_COLORS = {
    "embedding": "tab:gray", "attention (MLA)": "tab:blue", "dense FFN": "tab:purple", "router": "tab:olive",
    "shared experts": "tab:green", "routed experts": "tab:orange", "norms": "tab:pink", "output head": "tab:brown",
}


def parameter_budget(config: ModelConfig) -> dict[str, dict[str, int]]:
    """{"total": {component: n}, "active per token": {component: n}} from ``count_parameters``."""
    counts = count_parameters(config)
    return {
        "total": {label: counts[total] for label, (total, _) in COMPONENTS.items()},
        "active per token": {label: counts[active] for label, (_, active) in COMPONENTS.items()},
    }


def plot_parameter_budget(config: ModelConfig, title: str | None = None) -> Figure:
    """Left: every parameter vs the ones one token uses, stacked by component.
    Right: the active ones alone, per component, on their own scale."""
    counts = count_parameters(config)
    scale, unit = next((s, u) for s, u in ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands"), (1, "count"))
                       if counts["total"] >= s)
    budget = parameter_budget(config)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.3]})
    stacked_bars(left, budget, scale=scale, unit_label=f"parameters ({unit})", colors=COMPONENT_COLORS)
    left.legend().remove()
    left.set_title(title or f"{format_count(counts['total'])} parameters, {format_count(counts['active'])} active "
                   f"per token ({counts['active'] / counts['total']:.1%})", fontsize=10)
    labels = list(COMPONENTS)[::-1]
    active = [budget["active per token"][k] / scale for k in labels]
    right.barh(labels, active, color=[COMPONENT_COLORS[k] for k in labels])
    for i, (label, value) in enumerate(zip(labels, active)):
        right.annotate(f" {format_count(budget['active per token'][label])}", (value, i), va="center", fontsize=8)
    right.set_xlim(0, max(active) * 1.25)
    right.set_xlabel(f"active parameters per token ({unit})")
    right.set_title("zoom: the active parameters by component", fontsize=10)
    fig.tight_layout()
    return fig


def parameter_rows(config: ModelConfig) -> list[list[str]]:
    budget = parameter_budget(config)
    rows = [[label, f"{budget['total'][label]:,}", f"{budget['active per token'][label]:,}"] for label in COMPONENTS]
    counts = count_parameters(config)
    rows.append(["main model", f"{counts['total']:,}", f"{counts['active']:,}"])
    rows.append(["MTP modules (unique)", f"{counts['mtp']:,}", f"{counts['mtp_active']:,}"])
    return rows


def parameter_explorer(preset: str = "deepseek_v3") -> W.VBox:
    """Change the preset, the number of routed experts, experts per token, shared experts and layers;
    see total vs active parameters redrawn."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: choose one of {list(PRESETS)}")
    base = PRESETS[preset]()
    style = {"description_width": "150px"}
    layout = W.Layout(width="420px")
    controls = {
        "preset": W.Dropdown(options=list(PRESETS), value=preset, description="preset", style=style, layout=layout),
        "n_routed_experts": W.IntSlider(value=base.n_routed_experts, min=8, max=512, step=8,
                                        description="routed experts N_r", style=style, layout=layout),
        "num_experts_per_tok": W.IntSlider(value=base.num_experts_per_tok, min=1, max=32,
                                           description="experts per token K_r", style=style, layout=layout),
        "n_shared_experts": W.IntSlider(value=base.n_shared_experts, min=0, max=4,
                                        description="shared experts N_s", style=style, layout=layout),
        "num_hidden_layers": W.IntSlider(value=base.num_hidden_layers, min=1, max=128,
                                         description="layers", style=style, layout=layout),
    }

    def render(preset: str, **values) -> tuple[bytes, str]:
        config = PRESETS[preset]()
        # Keep first_k_dense_replace valid when the layer count drops below it.
        values["first_k_dense_replace"] = min(config.first_k_dense_replace, values["num_hidden_layers"])
        config = config.replace(**values)
        return (fig_to_png(plot_parameter_budget(config)),
                html_table(("component", "total", "active per token"), parameter_rows(config)))

    def load_preset(change) -> None:
        config = PRESETS[change["new"]]()
        for name in ("n_routed_experts", "num_experts_per_tok", "n_shared_experts", "num_hidden_layers"):
            controls[name].value = getattr(config, name)

    def adjust(preset: str, n_routed_experts: int, num_experts_per_tok: int, **_) -> dict[str, tuple[int, str]]:
        config = PRESETS[preset]()
        per_group = n_routed_experts // config.n_group if n_routed_experts % config.n_group == 0 else 0
        per_group = per_group if per_group >= 2 else 0  # 1 per group: ModelConfig explains
        most = min(n_routed_experts, config.topk_group * per_group) if per_group else n_routed_experts
        if num_experts_per_tok > most:
            return {"num_experts_per_tok": (most, f"a token picks among the {most} experts of its "
                                                  f"{config.topk_group} kept groups" if per_group else
                                                  f"there are only {most} routed experts")}
        return {}

    return explorer(controls, render, layout="side", before={"preset": load_preset}, adjust=adjust)
