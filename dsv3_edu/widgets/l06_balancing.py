"""Lesson 06: a toy router that collapses, the bias update stepped by hand, and the plots of the kept runs.

- :class:`ToyRouter` is the smallest system that shows routing collapse: sigmoid affinities, top-k,
  and a "learning" rule in which every expert's gate row moves toward the tokens it received (its
  expert trained on them, so the language-model gradient raises its affinity for them). Tokens share
  one direction (hidden states do), so an expert that gets more tokens becomes more attractive to
  all tokens: the rich get richer. With ``balance=True`` the bias update of [LF] Alg. 1 runs after
  every step.
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

from ..config import DATA_DIR
from ..viz import error_html, fig_to_png, html_table, moving_average, text_table

RESULTS_PATH = DATA_DIR / "balance_runs" / "results.json"
RUN_COLORS = {"none": "tab:red", "aux_loss": "tab:orange", "loss_free": "tab:blue", "loss_free_seq": "tab:green"}
RUN_LABELS = {"none": "no balancing", "aux_loss": "aux loss (alpha 0.01)", "loss_free": "loss-free (gamma 1e-3)",
              "loss_free_seq": "loss-free + seq. loss"}
GAMMA_RANGE = (1e-4, 0.3)


class ToyRouter:
    """E experts, top-k of sigmoid(x W^T) + b, and a gate that drifts toward the experts it already uses.

    Each step draws ``tokens`` fresh tokens x = m + noise (a shared direction m of length ``shared``,
    seeded by (seed, step)), routes them, then

        W_i <- (1 - decay) W_i + lr * sum_{t routed to i} x_t / tokens      (rich get richer)
        b_i <- b_i + gamma * sign(mean_j c_j - c_i)                          (only if balance)

    ``loads``, ``biases``, ``maxvio`` hold one entry per step taken.
    """

    def __init__(self, n_experts: int = 8, top_k: int = 2, dim: int = 16, tokens: int = 1024, lr: float = 0.1,
                 decay: float = 0.05, gamma: float = 0.01, balance: bool = True, shared: float = 1.0,
                 init_std: float = 0.3, seed: int = 0):
        if not (isinstance(n_experts, int) and isinstance(top_k, int) and 1 <= top_k < n_experts):
            raise ValueError(f"top_k={top_k!r}, n_experts={n_experts!r}: need 1 <= top_k < n_experts")
        self.n_experts, self.top_k, self.dim, self.tokens = n_experts, top_k, dim, tokens
        self.lr, self.decay, self.balance, self.seed = lr, decay, balance, seed
        self.gamma = gamma
        self.shared = torch.zeros(dim)
        self.shared[0] = shared  # m: the direction every token shares
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(n_experts, dim, generator=g) * init_std  # (E, d) gate rows e_i
        self.bias = torch.zeros(n_experts)  # (E,) b
        self.steps = 0
        self.loads: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.maxvio: list[float] = []

    @property
    def gamma(self) -> float:
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        lo, hi = GAMMA_RANGE
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise ValueError(f"gamma={value!r} is out of range: use a number from {lo:g} to {hi:g} "
                             "(the paper uses 0.001)")
        self._gamma = float(value)

    def tokens_at(self, step: int) -> torch.Tensor:
        """The tokens of step ``step``: (N, d), a function of (seed, step) only."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + step + 1)
        return self.shared + torch.randn(self.tokens, self.dim, generator=g)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_idx (N, K), scores s (N, E)): choose by s + b, as [V3] eq 16."""
        scores = torch.sigmoid(x @ self.weight.T)  # (N, E)
        return (scores + self.bias).topk(self.top_k, dim=-1).indices, scores

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            x = self.tokens_at(self.steps)  # (N, d)
            idx, _ = self.route(x)
            chosen = torch.zeros(self.tokens, self.n_experts).scatter_(1, idx, 1.0)  # (N, E)
            c = chosen.sum(0)  # (E,) tokens per expert
            self.weight = (1 - self.decay) * self.weight + self.lr * chosen.T @ x / self.tokens
            if self.balance:
                self.bias = self.bias + self.gamma * torch.sign(c.mean() - c)
            self.steps += 1
            self.loads.append(c)
            self.biases.append(self.bias.clone())
            self.maxvio.append(float((c.max() - c.mean()) / c.mean()))


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
    image = W.Image(format="png")
    html = W.HTML()
    state = {"router": ToyRouter(gamma=gamma, balance=balance, **router_kwargs)}

    def redraw() -> None:
        router = state["router"]
        image.value = fig_to_png(plot_toy_router(router))
        last = f"{router.maxvio[-1]:.3f}" if router.maxvio else "-"
        html.value = (f"<b>step {router.steps}, MaxVio_batch {last}, gamma {router.gamma:g}, "
                      f"bias update {'on' if router.balance else 'off'}</b>"
                      + html_table(TABLE_HEADER, toy_router_table(router)))

    def set_gamma(change=None) -> None:
        try:
            state["router"].gamma = controls["gamma"].value
        except ValueError as err:
            html.value = error_html(str(err))
            return
        redraw()

    def set_balance(change=None) -> None:
        state["router"].balance = controls["balance"].value
        redraw()

    def on_step(_button=None) -> None:
        n = controls["steps"].value
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
            html.value = error_html(f"steps per click={n!r} is out of range: use 1 to 1000")
            return
        state["router"].step(n)
        redraw()

    def on_reset(_button=None) -> None:
        try:
            state["router"] = ToyRouter(gamma=controls["gamma"].value, balance=controls["balance"].value,
                                        **router_kwargs)
        except ValueError as err:
            html.value = error_html(str(err))
            return
        redraw()

    controls["gamma"].observe(set_gamma, names="value")
    controls["balance"].observe(set_balance, names="value")
    controls["step"].on_click(on_step)
    controls["reset"].on_click(on_reset)
    redraw()
    box = W.VBox([W.HBox([controls["gamma"], controls["steps"], controls["balance"]]),
                  W.HBox([controls["step"], controls["reset"]]), image, html])
    box.controls, box.image, box.html, box.state = controls, image, html, state
    box.step, box.reset, box.redraw = on_step, on_reset, redraw
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


def relative_domain_loads(run: dict[str, Any], layer: int, by: str = "fair_share") -> tuple[torch.Tensor, list[str]]:
    """(E, domains) per-domain loads of one MoE layer, relative to a reference.

    ``by="fair_share"``: load / fair share (1 is balanced, 2 twice the fair share; [V3] Fig. 9). It mixes two
    things: an expert busy on *all* text (global imbalance) is red in every domain.
    ``by="global"``: the expert's share of the domain's tokens / its share of all tokens. 1 means the expert
    takes the same share of this domain as of all text; above 1 it specializes in the domain. A globally
    busy expert that treats every domain alike is 1 everywhere: specialization, with global imbalance
    divided out.
    """
    if by not in ("fair_share", "global"):
        raise ValueError(f"by must be 'fair_share' or 'global', got {by!r}")
    domains = list(run["domain_loads"])
    loads = torch.tensor([run["domain_loads"][d][layer] for d in domains], dtype=torch.float64).T  # (E, D)
    if by == "fair_share":
        return loads / loads.mean(dim=0, keepdim=True), domains
    share = loads / loads.sum(dim=0, keepdim=True)  # (E, D): expert's share of each domain's tokens
    overall = loads.sum(dim=1, keepdim=True) / loads.sum()  # (E, 1): expert's share of all tokens
    return share / overall, domains


def domain_specialization(run: dict[str, Any], layer: int) -> tuple[torch.Tensor, list[str]]:
    """(domains,) how differently each domain is routed from all text: half the L1 distance between the
    domain's distribution over experts and the overall one (0: routed like everything else; 1: disjoint
    experts). It is the fraction of the domain's token-expert pairs that would have to move to other
    experts to look like the average. Global imbalance does not count: it is in both distributions."""
    domains = list(run["domain_loads"])
    loads = torch.tensor([run["domain_loads"][d][layer] for d in domains], dtype=torch.float64).T  # (E, D)
    share = loads / loads.sum(dim=0, keepdim=True)
    overall = loads.sum(dim=1, keepdim=True) / loads.sum()
    return 0.5 * (share - overall).abs().sum(dim=0), domains


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
