"""Lesson 06: a toy router that collapses, the bias update stepped by hand, and the plots of the kept runs.

- :class:`dsv3_edu.balance.ToyRouter` (a core class, drawn here) is the smallest system that shows routing
  collapse: sigmoid affinities, top-k, and a gate that drifts toward the experts it already uses.
- :func:`bias_stepper` is the widget: sliders for gamma and steps per click, a "step" and a
  "reset" button; it redraws loads, biases and MaxVio (``.image``) and a table (``.html``).
- ``plot_*`` draw the results of ``python -m dsv3_edu.bench balance`` kept in
  data/balance_runs/results.json: MaxVio curves, per-domain expert loads in the style of [V3]
  Figure 9, and the gamma sweep.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ..balance import GAMMA_RANGE, ToyRouter, relative_domain_loads
from ..config import DATA_DIR
from ..viz import fig_to_png, html_table, moving_average, text_table
from . import explorer

RESULTS_PATH = DATA_DIR / "balance_runs" / "results.json"
RUN_COLORS = {"none": "tab:red", "aux_loss": "tab:orange", "loss_free": "tab:blue", "loss_free_seq": "tab:green"}
RUN_LABELS = {"none": "no balancing", "aux_loss": "aux loss (alpha 0.01)", "loss_free": "loss-free (gamma 1e-3)",
              "loss_free_seq": "loss-free + seq. loss"}


def plot_toy_router(router: ToyRouter) -> Figure:
    """Three panels: tokens per expert at the last step, the biases, MaxVio_batch per step."""
    fig, (ax_load, ax_bias, ax_vio) = plt.subplots(1, 3, figsize=(12, 3.2))
    E = router.n_experts
    experts = range(E)
    fair = router.tokens * router.top_k / E
    loads = router.loads[-1] if router.loads else torch.zeros(E)
    ax_load.bar(experts, loads.tolist(), color=["tab:red" if c > fair else "tab:blue" for c in loads.tolist()])
    ax_load.axhline(fair, color="0.3", linestyle="--", linewidth=1, label="fair share")
    ax_load.set(xlabel="expert", ylabel="tokens routed in the step", title=f"loads at step {router.steps}")
    ax_load.legend(fontsize=8)
    bias = router.bias.tolist()
    ax_bias.bar(experts, bias, color=["tab:green" if b >= 0 else "tab:purple" for b in bias])
    ax_bias.axhline(0, color="0.3", linewidth=0.8)
    ax_bias.set(xlabel="expert", ylabel="bias b_i (added to s, unitless)",
                title=f"bias (gamma {router.gamma:g}{'' if router.balance else ', update off'})")
    if router.maxvio:
        ax_vio.plot(range(1, len(router.maxvio) + 1), router.maxvio, color="tab:blue")
    ax_vio.axhline(0, color="0.3", linewidth=0.8)
    ax_vio.set(xlabel="training step", ylabel="MaxVio_batch (unitless)", title="MaxVio per step",
               ylim=(0, max(1.0, max(router.maxvio, default=0.0) * 1.1)))
    fig.tight_layout()
    return fig


def toy_router_table(router: ToyRouter) -> list[list[str]]:
    """Rows (expert, c_i, sign(mean - c_i), b_i) after the last step."""
    if not router.loads:
        return [[str(i), "-", "-", f"{b:+.4f}"] for i, b in enumerate(router.bias.tolist())]
    c = router.loads[-1]
    signs = torch.sign(c.mean() - c).tolist()
    return [[str(i), f"{int(ci)}", {1.0: "+1 (under)", -1.0: "-1 (over)", 0.0: "0"}[s], f"{b:+.4f}"]
            for i, (ci, s, b) in enumerate(zip(c.tolist(), signs, router.bias.tolist()))]


TABLE_HEADER = ("expert", "c_i", "sign(mean - c_i)", "b_i after")


def bias_stepper(gamma: float = 0.01, steps_per_click: int = 10, balance: bool = True, **router_kwargs) -> W.VBox:
    """Step the bias update by hand on a :class:`ToyRouter`: gamma slider, steps per click, step and reset."""
    style = {"description_width": "120px"}
    controls = {
        "gamma": W.FloatLogSlider(value=gamma, base=10, min=-4, max=math.log10(GAMMA_RANGE[1]), step=0.25,
                                  description="gamma", readout_format=".4f", style=style),
        "steps": W.IntSlider(value=steps_per_click, min=1, max=100, description="steps per click", style=style),
        "balance": W.Checkbox(value=balance, description="bias update on", style=style),
        "step": W.Button(description="step", button_style="primary"),
        "reset": W.Button(description="reset"),
    }
    state = {"router": ToyRouter(gamma=gamma, balance=balance, **router_kwargs)}

    def render(gamma: float, steps: int, balance: bool) -> tuple[bytes, str]:
        router = state["router"]
        router.gamma, router.balance = gamma, balance  # a bad gamma raises ValueError: shown, not drawn
        last = f"{router.maxvio[-1]:.3f}" if router.maxvio else "-"
        return fig_to_png(plot_toy_router(router)), (
            f"<b>step {router.steps}, MaxVio_batch {last}, gamma {router.gamma:g}, "
            f"bias update {'on' if router.balance else 'off'}</b>" + html_table(TABLE_HEADER, toy_router_table(router)))

    def on_step() -> None:
        n = controls["steps"].value
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
            raise ValueError(f"steps per click={n!r} is out of range: use 1 to 1000")
        state["router"].step(n)

    def on_reset() -> None:
        state["router"] = ToyRouter(gamma=controls["gamma"].value, balance=controls["balance"].value,
                                    **router_kwargs)

    box = explorer(controls, render, rows=[["gamma", "steps", "balance"], ["step", "reset"]],
                   buttons={"step": on_step, "reset": on_reset})
    box.state, box.step, box.reset = state, box.actions["step"], box.actions["reset"]
    return box


# ------------------------------------------------------------------------------ kept results


def load_results(path: str | Path = RESULTS_PATH) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m dsv3_edu.bench balance --json {path}`")
    return json.loads(path.read_text())


def results_table(results: dict[str, Any]) -> str:
    """MaxVio_global, mean MaxVio_batch of the last 10% of steps and validation loss, per run."""
    rows = []
    for name, run in [*results["runs"].items(),
                      *((f"loss_free gamma={k}", r) for k, r in results["gamma_sweep"].items() if k != "0.001")]:
        tail = run["maxvio_batch"][-max(1, len(run["maxvio_batch"]) // 10):]
        rows.append([name, f"{run['maxvio_global']:.3f}", f"{sum(tail) / len(tail):.3f}", f"{run['val_loss']:.4f}"])
    return text_table(("run", "MaxVio_global", "MaxVio_batch (last 10%)", "val loss"), rows)


def plot_maxvio_curves(results: dict[str, Any], window: int = 20) -> Figure:
    """MaxVio_batch per step (moving average) of the four runs, log scale; dots: MaxVio_global at the end."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for mode, run in results["runs"].items():
        steps = range(1, len(run["maxvio_batch"]) + 1)
        ax.plot(steps, moving_average(run["maxvio_batch"], window), color=RUN_COLORS[mode], label=RUN_LABELS[mode])
        ax.plot([len(run["maxvio_batch"])], [run["maxvio_global"]], "o", color=RUN_COLORS[mode])
    ax.set_yscale("log")
    ax.axhline(0.1, color="0.5", linestyle=":", linewidth=1)
    ax.set(xlabel="training step", ylabel="MaxVio (unitless, log scale)",
           title=f"MaxVio_batch, moving average over {window} steps (dots: MaxVio_global on validation)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_domain_heatmaps(results: dict[str, Any], modes: tuple[str, ...] = ("aux_loss", "loss_free"),
                         vmax: float = 3.0, by: str = "fair_share") -> Figure:
    """Relative expert load per domain (rows experts, columns domains), one panel per run and MoE layer;
    white is the reference (``by``: see :func:`relative_domain_loads`), red above it, blue below (values
    above ``vmax`` are clipped)."""
    n_layers = len(results["runs"][modes[0]]["domain_loads"][next(iter(results["runs"][modes[0]]["domain_loads"]))])
    fig, axes = plt.subplots(1, len(modes) * n_layers, figsize=(2.6 * len(modes) * n_layers, 4.6), squeeze=False)
    image = None
    for m, mode in enumerate(modes):
        run = results["runs"][mode]
        for layer in range(n_layers):
            ax = axes[0, m * n_layers + layer]
            rel, domains = relative_domain_loads(run, layer, by=by)
            image = ax.imshow(rel.numpy(), cmap="RdBu_r", norm=TwoSlopeNorm(vmin=0, vcenter=1, vmax=vmax),
                              aspect="auto")  # white = fair share
            ax.set_xticks(range(len(domains)), domains, rotation=45, fontsize=8)
            ax.set_xlabel("domain", fontsize=8)
            ax.set_yticks(range(rel.shape[0]), [str(i) for i in range(rel.shape[0])], fontsize=7)
            ax.set_title(f"{RUN_LABELS[mode].split(' (')[0]}\nlayer {layer}", fontsize=9)
            if m == 0 and layer == 0:
                ax.set_ylabel("expert")
    label = ("load / fair share (1 = fair share)" if by == "fair_share"
             else "share of the domain / share of all text\n(1 = no specialization)")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    return fig


def plot_gamma_sweep(results: dict[str, Any], window: int = 20, layer: int = 0) -> Figure:
    """Left: MaxVio_batch (moving average) for each gamma. Right: every bias of one layer, per gamma."""
    sweep = results["gamma_sweep"]
    colors = {"0.0001": "tab:gray", "0.001": "tab:blue", "0.01": "tab:purple"}
    fig, axes = plt.subplots(1, 1 + len(sweep), figsize=(4 + 3.2 * len(sweep), 3.4))
    for key, run in sweep.items():
        axes[0].plot(range(1, len(run["maxvio_batch"]) + 1), moving_average(run["maxvio_batch"], window),
                     color=colors.get(key), label=f"gamma {key}")
    axes[0].set_yscale("log")
    axes[0].set(xlabel="training step", ylabel="MaxVio_batch (unitless, log scale)", title="speed of balancing")
    axes[0].legend(fontsize=8)
    for ax, (key, run) in zip(axes[1:], sweep.items()):
        bias = torch.tensor(run["bias"])[:, layer]  # (steps/BIAS_EVERY, E)
        ax.plot(run["bias_steps"], bias.numpy(), linewidth=0.8)
        ax.set(xlabel="training step", title=f"gamma {key}: b_i, layer {layer}")
    axes[1].set_ylabel("bias b_i (added to s, unitless)")
    fig.tight_layout()
    return fig
