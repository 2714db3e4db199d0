"""Lesson 11 widget: how many bytes each rank sends each other rank, with and without the node limit.

``ep_case(world_size, max_ranks, redundant)`` routes the lesson's tokens through the tiny layer of
``dsv3_edu.distributed.toy_layer`` (one process: the routing of the expert-parallel layer is the same
``Gate``) and applies the byte formula ``dsv3_edu.distributed.dispatch_bytes``, which lesson 11 checks
against real processes. ``plot_ep_case`` draws the two byte heatmaps and the load per rank before and
after redundant experts; ``ep_explorer()`` is the widget (``.controls``, ``.image``, ``.html``, ``.redraw``).

Letters: W ranks (standing for nodes), M ranks a token may reach, E routed experts, K per token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import distributed as D
from ..viz import KiB, fig_to_png, html_table, text_table
from . import explorer

N_TOKENS = 256  # the widget's tokens (one shard of N/W per rank)
WORLD_SIZES = (1, 2, 4, 8)  # divisors of the toy layer's 16 experts with >= 2 experts per rank
MAX_REDUNDANT = 16


class EPCase(NamedTuple):
    world_size: int
    max_ranks: int
    redundant: int
    bytes_limited: torch.Tensor  # (W, W) dispatch bytes, rank s -> rank t, node-limited routing
    bytes_unlimited: torch.Tensor  # (W, W) the same without the limit
    ranks_per_token_limited: float  # mean destination ranks per token
    ranks_per_token_unlimited: float
    expert_loads: torch.Tensor  # (E,) token-expert pairs, node-limited routing
    redundancy: D.Redundancy
    top_k: int
    hidden_size: int


def ep_case(world_size: int = 4, max_ranks: int = 2, redundant: int = 4, n_tokens: int = N_TOKENS) -> EPCase:
    """Route ``n_tokens`` tokens with and without the node limit; bytes by the formula; redundancy."""
    if isinstance(redundant, bool) or not isinstance(redundant, (int, np.integer)) or not \
            0 <= redundant <= MAX_REDUNDANT:
        raise ValueError(f"redundant={redundant!r}: use 0 to {MAX_REDUNDANT} extra expert copies")
    world_size, max_ranks, redundant = int(world_size), int(max_ranks), int(redundant)
    limited, x = D.toy_layer(world_size, max_ranks, n_tokens)
    unlimited, _ = D.toy_layer(world_size, None, n_tokens)
    config = D._config_of(limited)
    per = config.n_routed_experts // world_size
    tokens = x.reshape(-1, config.hidden_size)
    with torch.no_grad():
        idx_l, _, _ = limited.gate(tokens)
        idx_u, _, _ = unlimited.gate(tokens)
    reach_l = D.destination_ranks(idx_l, per, world_size).sum(1).float().mean().item()
    reach_u = D.destination_ranks(idx_u, per, world_size).sum(1).float().mean().item()
    loads = torch.bincount(idx_l.flatten(), minlength=config.n_routed_experts)
    return EPCase(world_size, max_ranks, redundant,
                  D.dispatch_bytes(idx_l, world_size, config.hidden_size, per),
                  D.dispatch_bytes(idx_u, world_size, config.hidden_size, per), reach_l, reach_u, loads,
                  D.simulate_redundancy(loads, world_size, redundant), config.num_experts_per_tok,
                  config.hidden_size)


def plot_bytes_heatmaps(matrices: Mapping[str, torch.Tensor], axes: list[Axes] | None = None,
                        suptitle: str = "") -> Figure:
    """One heatmap per (W, W) byte matrix, sender rank down, receiver rank across, in KiB, on a shared
    colour scale; each cell is labelled, and the diagonal (a rank's own tokens) is hatched."""
    items = list(matrices.items())
    if axes is None:
        fig, axes = plt.subplots(1, len(items), figsize=(4.4 * len(items), 3.8), squeeze=False)
        axes = list(axes[0])
    fig = axes[0].figure
    vmax = max(float(m.max()) for _, m in items) / KiB or 1.0
    for ax, (title, m) in zip(axes, items):
        kib = m.double().numpy() / KiB
        Wn = kib.shape[0]
        im = ax.imshow(kib, cmap="viridis", vmin=0, vmax=vmax)
        for s in range(Wn):
            ax.add_patch(plt.Rectangle((s - 0.5, s - 0.5), 1, 1, fill=False, hatch="///", edgecolor="white",
                                       linewidth=0))
            for t in range(Wn):
                if Wn <= 8:
                    ax.text(t, s, f"{kib[s, t]:.1f}", ha="center", va="center", fontsize=7 if Wn > 4 else 9,
                            color="white" if kib[s, t] < 0.6 * vmax else "black")
        ax.set_xticks(range(Wn))
        ax.set_yticks(range(Wn))
        ax.set_xlabel("receiving rank (holds the experts)")
        ax.set_ylabel("sending rank (holds the tokens)")
        between = (m.sum() - m.diagonal().sum()).item() / KiB
        ax.set_title(f"{title}\n{between:.1f} KiB between ranks", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="dispatch bytes (KiB)")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_ep_case(case: EPCase) -> Figure:
    """Bytes with the limit, without it, and token-expert pairs per rank before and after redundancy."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    plot_bytes_heatmaps({f"node-limited, M = {case.max_ranks}": case.bytes_limited,
                         "no limit": case.bytes_unlimited}, axes=list(axes[:2]))
    ax = axes[2]
    r = case.redundancy
    ranks = np.arange(case.world_size)
    ax.bar(ranks - 0.2, r.rank_loads_before.numpy(), width=0.4, label=f"one copy (max {r.max_before:.0f})",
           color="tab:orange")
    ax.bar(ranks + 0.2, r.rank_loads_after.numpy(), width=0.4,
           label=f"+{len(r.copies)} copies (max {r.max_after:.1f})", color="tab:blue")
    ax.axhline(float(r.rank_loads_before.mean()), color="0.3", linestyle="--", linewidth=0.8, label="mean")
    ax.set_xticks(ranks)
    ax.set_xlabel("rank")
    ax.set_ylabel("token-expert pairs computed")
    ax.set_title("load per rank (node-limited routing)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


HEADER = ("quantity", "node-limited", "no limit")


def ep_rows(case: EPCase) -> list[list[str]]:
    N, d = N_TOKENS, case.hidden_size
    lim, unl = case.bytes_limited, case.bytes_unlimited
    bound = lambda reach: N * min(case.top_k, reach) * d * D.BYTES_FP32  # noqa: E731
    r = case.redundancy
    return [
        ["ranks a token reaches (mean)", f"{case.ranks_per_token_limited:.2f} (at most {case.max_ranks})",
         f"{case.ranks_per_token_unlimited:.2f} (at most {min(case.top_k, case.world_size)})"],
        ["dispatch bytes, all ranks", f"{int(lim.sum()):,}", f"{int(unl.sum()):,}"],
        ["  of which between ranks", f"{D.off_diagonal(lim):,}", f"{D.off_diagonal(unl):,}"],
        ["  bound N * min(K, M) * d * 4", f"{bound(case.max_ranks):,}", f"{bound(case.world_size):,}"],
        [f"max rank load, +{len(r.copies)} redundant copies", f"{r.max_before:.0f} -> {r.max_after:.1f}", ""],
    ]


def ep_table(**kwargs) -> str:
    """The widget's table as plain text (for print in a lesson)."""
    return text_table(HEADER, ep_rows(ep_case(**kwargs)))


def render(world_size: int, max_ranks: int, redundant: int) -> tuple[bytes, str]:
    case = ep_case(world_size, max_ranks, redundant)
    head = (f"<b>{case.world_size} ranks of {16 // case.world_size} experts, {N_TOKENS} tokens (d = "
            f"{case.hidden_size}, fp32), K = {case.top_k}; each token may reach M = {case.max_ranks} ranks</b>")
    return fig_to_png(plot_ep_case(case)), head + html_table(HEADER, ep_rows(case))


def ep_explorer(world_size: int = 4, max_ranks: int = 2, redundant: int = 4) -> W.VBox:
    """World size, M and redundant experts; redraws the heatmaps and loads. Impossible combinations
    (M beyond the ranks, too few experts within M ranks for K) show the reason instead."""
    style, layout = {"description_width": "150px"}, W.Layout(width="400px")
    controls = {
        "world_size": W.Dropdown(options=list(WORLD_SIZES), value=world_size, description="ranks (W)",
                                 style=style, layout=layout),
        "max_ranks": W.IntSlider(value=max_ranks, min=1, max=max(WORLD_SIZES), description="max ranks per token (M)",
                                 style=style, layout=layout),
        "redundant": W.IntSlider(value=redundant, min=0, max=MAX_REDUNDANT, description="redundant experts",
                                 style=style, layout=layout),
    }
    return explorer(controls, render)
