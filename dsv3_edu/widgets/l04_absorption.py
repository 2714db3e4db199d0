"""Lesson 04: what one MLA attention step costs on each path, and the time a roofline predicts for it.

The counting (FLOPs, bytes, roofline) is ``dsv3_edu.costmodel``; this module draws it.
``absorption_explorer()`` returns a VBox with ``.controls`` (context, heads, batch, path, machine),
``.image`` (predicted step time vs context, and the roofline) and ``.html`` (the numbers).
``plot_decode_costs`` and ``decode_cost_table`` draw the same for a lesson cell.
"""

from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..config import ModelConfig
from ..costmodel import PATHS, Machine, check_path, decode_step_cost, machines
from ..viz import CONTEXTS, fig_to_png, format_bytes, format_seconds, html_table, text_table, whole_number
from . import explorer

PATH_COLORS = {"expanded": "tab:red", "naive": "tab:orange", "absorbed": "tab:blue"}
LIMITS = {"heads": (1, 256), "batch": (1, 4096), "context": (1, 2**20)}


# ----------------------------------------------------------------------------------------- drawing
def _validate(context: int, heads: int, batch: int, path: str, machine: str) -> None:
    for name, value in (("context", context), ("heads", heads), ("batch", batch)):
        whole_number(name, value, *LIMITS[name])
    check_path(path)
    if machine not in ("cpu", "h800"):
        raise ValueError(f"machine={machine!r}: choose cpu (data/bench_mla.json) or h800 (spec sheet)")


def _config(heads: int) -> ModelConfig:
    return ModelConfig.deepseek_v3(num_attention_heads=heads)


def decode_cost_rows(context: int = 4096, heads: int = 128, batch: int = 1, path: str = "absorbed",
                     machine: str = "h800") -> list[list[str]]:
    """Rows (path, GFLOP, bytes, FLOP/byte, bound, predicted time, vs chosen path) for one decode step."""
    _validate(context, heads, batch, path, machine)
    m, config = machines()[machine], _config(heads)
    costs = {p: decode_step_cost(config, context, p, batch, m.bytes_per_value) for p in PATHS}
    chosen = costs[path].seconds(m)
    return [
        [("> " if p == path else "") + p, f"{c.flops / 1e9:,.2f}", format_bytes(c.bytes), f"{c.intensity:,.1f}",
         c.bound(m), format_seconds(c.seconds(m)), f"{c.seconds(m) / chosen:.2f}x"]
        for p, c in costs.items()
    ]


HEADER = ("path", "GFLOP", "bytes moved", "FLOP/byte", "bound", "roofline time", "vs chosen")


def _title(context, heads, batch, machine) -> str:
    m = machines()[machine]
    return (f"one decode step, one layer: context {context:,}, {heads} heads, batch {batch}; {m.name}: "
            f"{m.bandwidth / 1e9:,.0f} GB/s, {m.flops / 1e9:,.0f} GFLOP/s, balance {m.balance:,.1f} FLOP/byte")


def decode_cost_table(context: int = 4096, heads: int = 128, batch: int = 1, path: str = "absorbed",
                      machine: str = "h800") -> str:
    """The explorer's table as plain text."""
    rows = decode_cost_rows(context, heads, batch, path, machine)
    return _title(context, heads, batch, machine) + "\n" + text_table(HEADER, rows)


def draw_roofline(ax: Axes, machine: Machine, points: dict[str, tuple[float, float]],
                  highlight: str | None = None, intensities: tuple[float, float] = (0.1, 1e4)) -> Axes:
    """The roof min(peak, bandwidth x intensity) on log-log axes, and points (intensity, FLOP/s) in a legend.

    A label's first word picks the colour (a path name); labels containing "measured" are drawn hollow.
    """
    lo, hi = intensities
    xs = [lo, machine.balance, hi]
    ax.plot(xs, [min(machine.flops, machine.bandwidth * x) for x in xs], color="0.3", linewidth=1.2)
    ax.axvline(machine.balance, color="0.6", linestyle=":", linewidth=0.8)
    ax.annotate(f"balance {machine.balance:,.0f} FLOP/B", (machine.balance, machine.flops * 1.15), fontsize=7,
                ha="center")
    for label, (x, y) in points.items():
        big = label == highlight
        color = PATH_COLORS.get(label.split()[0], "0.2")
        face = "none" if "measured" in label else color  # hollow: a measured point, filled: the roofline's
        ax.plot([x], [y], "o", color=color, markersize=10 if big else 6, markeredgecolor="k" if big else color,
                markerfacecolor=face, linestyle="none", label=f"{label} ({x:,.1f} FLOP/B)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(machine.flops / 3e3, machine.flops * 3)
    ax.minorticks_off()  # log axes label many minor ticks; measuring them makes drawing slow
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("attainable FLOP/s")
    ax.grid(True, which="major", alpha=0.3)
    return ax


def plot_decode_costs(context: int = 4096, heads: int = 128, batch: int = 1, path: str = "absorbed",
                      machine: str = "h800") -> Figure:
    """Left: roofline time of one decode step (one layer) vs context, per path, the chosen one bold.
    Right: the roofline with the three paths at the chosen context."""
    _validate(context, heads, batch, path, machine)
    m, config = machines()[machine], _config(heads)
    contexts = sorted(set(CONTEXTS) | {context})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.9))
    for p in PATHS:
        times = [decode_step_cost(config, s, p, batch, m.bytes_per_value).seconds(m) * 1e3 for s in contexts]
        left.plot(contexts, times, "-", color=PATH_COLORS[p], label=p, linewidth=3 if p == path else 1.2,
                  alpha=1 if p == path else 0.6)
    left.axvline(context, color="0.6", linewidth=0.8)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xticks(list(CONTEXTS), [f"{c // 1024}K" for c in CONTEXTS])
    left.minorticks_off()
    left.set_xlabel("context length (tokens)")
    left.set_ylabel("predicted time per step (ms)")
    left.set_title(f"{heads} heads, batch {batch}, {m.name}", fontsize=9)
    left.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=8, loc="upper left")
    costs = {p: decode_step_cost(config, context, p, batch, m.bytes_per_value) for p in PATHS}
    points = {p: (c.intensity, c.flops / c.seconds(m)) for p, c in costs.items()}
    draw_roofline(right, m, points, highlight=path)
    right.set_title(f"roofline at {context:,} tokens: {path} is {costs[path].bound(m)}-bound", fontsize=9)
    fig.tight_layout()
    return fig


def absorption_explorer(context: int = 4096, heads: int = 128, batch: int = 1, path: str = "absorbed",
                        machine: str = "h800") -> W.VBox:
    """Controls for context, heads, batch, path and machine; redraws the step's FLOPs, bytes and time."""
    style = {"description_width": "90px"}
    layout = W.Layout(width="340px")
    controls = {
        "context": W.SelectionSlider(options=[(f"{c // 1024}K" if c % 1024 == 0 else str(c), c)
                                              for c in sorted(set(CONTEXTS) | {context})],
                                     value=context, description="context", style=style, layout=layout),
        "heads": W.IntSlider(value=heads, min=LIMITS["heads"][0], max=LIMITS["heads"][1], description="heads",
                             style=style, layout=layout),
        "batch": W.IntText(value=batch, description="batch", style=style, layout=layout),
        "path": W.Dropdown(options=list(PATHS), value=path, description="path", style=style, layout=layout),
        "machine": W.Dropdown(options=[("H800 (spec, BF16)", "h800"), ("this CPU (bench, FP32)", "cpu")],
                              value=machine, description="machine", style=style, layout=layout),
    }

    def render(**values) -> tuple[bytes, str]:
        rows = decode_cost_rows(**values)
        png = fig_to_png(plot_decode_costs(**values))
        title = _title(values["context"], values["heads"], values["batch"], values["machine"])
        return png, f"<b>{title}</b>" + html_table(HEADER, rows)

    return explorer(controls, render, columns=2, errors=(ValueError, FileNotFoundError),
                    requested=dict(heads=heads, batch=batch))
