"""Lesson 02 widget: RoPE's frequencies pair by pair, and what YaRN does to each of them.

``rope_explorer()`` returns a VBox with ``.controls`` (RoPE base, rope width, YaRN factor, original
context, beta_fast, beta_slow, pair index), ``.image`` (four panels) and ``.html`` (the numbers).
Every number comes from ``dsv3_edu.rope`` (``yarn_ramp``, ``rope_inv_freq``, ...) through a
``ModelConfig``; ``yarn_pairs`` collects them, ``plot_yarn`` and ``yarn_table`` draw and print them
for a lesson cell, and tests drive the callback by setting ``.value`` on a control.

The panels: (a) the ramp gamma_i (0 = frequency kept, 1 = divided by the factor), (b) each pair's
wavelength before and after YaRN against the original and the extended context, (c) how far the
chosen pair turns as the position grows, with the angles it never saw in training shaded, (d) the
mean of cos(offset * theta_i) over pairs: how similar a key identical to the query stays with distance.
"""

from __future__ import annotations

import math

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..config import ModelConfig
from ..rope import rope_inv_freq, yarn_correction_range, yarn_get_mscale, yarn_ramp
from ..viz import fig_to_png, html_table, text_table
from . import explorer

DEEPSEEK_V3 = dict(base=10000.0, dim=64, factor=40.0, original=4096, beta_fast=32.0, beta_slow=1.0)
DIMS = (8, 16, 32, 64, 128, 256)
ORIGINALS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
GROUP_COLORS = {"kept": "tab:blue", "blended": "tab:purple", "interpolated": "tab:orange"}


def _check(base, dim, factor, original, beta_fast, beta_slow, pair=None) -> None:
    """Raise ValueError with a plain message for values the drawing cannot use."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"rope dim={dim!r}: RoPE rotates pairs of dimensions, so use an even whole number >= 2")
    if not base > 1:
        raise ValueError(f"base={base!r}: use a base above 1 (theta_i = base^(-2i/R) must fall from pair to pair)")
    if not factor >= 1:
        raise ValueError(f"factor={factor!r}: YaRN stretches the context, so use a factor of at least 1")
    if isinstance(original, bool) or not isinstance(original, int) or original < 2:
        raise ValueError(f"original context={original!r}: use a whole number of tokens (at least 2)")
    if not beta_slow > 0:
        raise ValueError(f"beta_slow={beta_slow!r}: use a positive number of turns (DeepSeek-V3: 1)")
    if not beta_fast > beta_slow:
        raise ValueError(
            f"beta_fast={beta_fast!r} must be larger than beta_slow={beta_slow!r}: pairs that turn more than "
            "beta_fast times are kept, those that turn fewer than beta_slow times are interpolated"
        )
    if pair is not None and (isinstance(pair, bool) or not isinstance(pair, int) or not 0 <= pair < dim // 2):
        raise ValueError(f"pair={pair!r} is out of range: rope dim {dim} has {dim // 2} pairs, 0 to {dim // 2 - 1}")


def yarn_config(base=10000.0, dim=64, factor=40.0, original=4096, beta_fast=32.0, beta_slow=1.0) -> ModelConfig:
    """A (tiny) ModelConfig whose rope settings are these; mscale = mscale_all_dim = 1 as in DeepSeek-V3."""
    _check(base, dim, factor, original, beta_fast, beta_slow)
    scaling = dict(type="yarn", factor=factor, beta_fast=beta_fast, beta_slow=beta_slow, mscale=1.0,
                   mscale_all_dim=1.0, original_max_position_embeddings=original)
    return ModelConfig.tiny(qk_rope_head_dim=dim, rope_theta=float(base), rope_scaling=scaling)


def _short(value: float, _pos=None) -> str:
    """Tick labels: 1, 10, 100, 1K, 10K, 100K, 1M ... and 0.1, 0.01, 1e-04 below 1."""
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def _span(indices: list[int]) -> str:
    if not indices:
        return "none"
    n = len(indices)
    first = str(indices[0]) if n == 1 else f"{indices[0]}-{indices[-1]}"
    return f"{first} ({n} pair{'s' if n != 1 else ''})"


def yarn_pairs(base=10000.0, dim=64, factor=40.0, original=4096, beta_fast=32.0, beta_slow=1.0) -> dict:
    """Per pair i = 0..dim/2-1 (tensors of shape (dim/2,)) and overall numbers.

    theta, theta_yarn: angular frequency (radians per token) before and after YaRN;
    wavelength, wavelength_yarn: tokens per full turn, 2 pi / theta; turns: turns over the original
    context; ramp: 0 kept .. 1 divided by factor; kept / blended / interpolated: pair indices;
    low, high: yarn_correction_range; mscale: 0.1 ln(factor) + 1; softmax_multiplier: mscale^2.
    """
    config = yarn_config(base, dim, factor, original, beta_fast, beta_slow)
    theta = rope_inv_freq(config.replace(rope_scaling=None)).double()
    theta_yarn = rope_inv_freq(config).double()
    ramp = yarn_ramp(config)
    low, high = yarn_correction_range(beta_fast, beta_slow, dim, float(base), original)
    mscale = yarn_get_mscale(factor, 1.0)
    return {
        "theta": theta, "theta_yarn": theta_yarn, "ramp": ramp,
        "wavelength": 2 * math.pi / theta, "wavelength_yarn": 2 * math.pi / theta_yarn,
        "turns": original * theta / (2 * math.pi),
        "kept": (ramp == 0).nonzero().flatten().tolist(),
        "blended": ((ramp > 0) & (ramp < 1)).nonzero().flatten().tolist(),
        "interpolated": (ramp == 1).nonzero().flatten().tolist(),
        "low": low, "high": high, "mscale": mscale, "softmax_multiplier": mscale**2,
        "original": original, "extended": int(round(original * factor)),
    }


def yarn_rows(base=10000.0, dim=64, factor=40.0, original=4096, beta_fast=32.0, beta_slow=1.0, pair=16):
    """(quantity, value) rows for the table under the plot."""
    _check(base, dim, factor, original, beta_fast, beta_slow, pair)
    p = yarn_pairs(base, dim, factor, original, beta_fast, beta_slow)
    group = next(g for g in GROUP_COLORS if pair in p[g])
    return [
        ["context", f"{original:,} -> {p['extended']:,} tokens (factor {factor:g})"],
        ["low, high (yarn_correction_range)", f"{p['low']}, {p['high']}"],
        ["kept (ramp 0)", _span(p["kept"])],
        ["blended (0 < ramp < 1)", _span(p["blended"])],
        ["interpolated (ramp 1)", _span(p["interpolated"])],
        ["mscale = 0.1 ln(factor) + 1", f"{p['mscale']:.4f}"],
        ["softmax scale multiplier mscale^2", f"{p['softmax_multiplier']:.4f}"],
        [f"pair {pair}: theta", f"{p['theta'][pair]:.4g} -> {p['theta_yarn'][pair]:.4g} rad/token"],
        [f"pair {pair}: wavelength", f"{p['wavelength'][pair]:,.1f} -> {p['wavelength_yarn'][pair]:,.1f} tokens"],
        [f"pair {pair}: turns in {original:,} tokens", f"{p['turns'][pair]:.3g}"],
        [f"pair {pair}: ramp", f"{p['ramp'][pair]:.3f} ({group})"],
    ]


HEADER = ("quantity", "value")


def yarn_table(base=10000.0, dim=64, factor=40.0, original=4096, beta_fast=32.0, beta_slow=1.0, pair=16) -> str:
    """The widget's numbers as plain text (for print in a lesson)."""
    rows = yarn_rows(base, dim, factor, original, beta_fast, beta_slow, pair)
    title = f"RoPE dim {dim}, base {base:g}, YaRN factor {factor:g}, beta_fast {beta_fast:g}, beta_slow {beta_slow:g}"
    return title + "\n" + text_table(HEADER, rows)


def plot_yarn(base=10000.0, dim=64, factor=40.0, original=4096, beta_fast=32.0, beta_slow=1.0, pair=16) -> Figure:
    """Four panels: the ramp per pair, wavelengths vs contexts, the chosen pair's turns vs position, and
    the similarity of a key identical to the query vs offset; plain RoPE, YaRN and "interpolate all"."""
    _check(base, dim, factor, original, beta_fast, beta_slow, pair)
    p = yarn_pairs(base, dim, factor, original, beta_fast, beta_slow)
    n_pairs, extended = dim // 2, p["extended"]
    idx = torch.arange(n_pairs)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.2))
    (ax_ramp, ax_wave), (ax_turn, ax_sim) = axes

    # (a) the ramp
    ax_ramp.plot(idx, p["ramp"], "-", color="0.75", linewidth=1, zorder=1)
    for group, color in GROUP_COLORS.items():
        ax_ramp.scatter(p[group], p["ramp"][p[group]], s=28, color=color, zorder=2, label=f"{group}: {_span(p[group])}")
    ax_ramp.scatter([pair], [p["ramp"][pair]], s=110, facecolors="none", edgecolors="black", linewidths=1.5, zorder=3)
    for bound in (p["low"], p["high"]):
        if bound < n_pairs:
            ax_ramp.axvline(bound, color="0.5", linestyle=":", linewidth=1)
    ax_ramp.set_xlabel("pair i (fast -> slow)")
    ax_ramp.set_ylabel("ramp: 0 kept, 1 divided by factor")
    ax_ramp.set_ylim(-0.05, 1.45)
    ax_ramp.set_title(f"(a) YaRN ramp: low={p['low']}, high={p['high']}", fontsize=10)
    ax_ramp.legend(fontsize=8, loc="upper left")

    # (b) wavelengths against the contexts
    ax_wave.semilogy(idx, p["wavelength"], "o", color="0.35", markersize=4, label="trained (plain RoPE)")
    ax_wave.semilogy(idx, p["wavelength_yarn"], "-", color="tab:orange", label="YaRN")
    ax_wave.axhline(original, color="tab:green", linestyle="--", linewidth=1, label=f"original context {original:,}")
    ax_wave.axhline(extended, color="tab:red", linestyle=":", linewidth=1, label=f"extended context {extended:,}")
    ax_wave.axvline(pair, color="black", linewidth=0.8)
    ax_wave.set_xlabel("pair i")
    ax_wave.set_ylabel("wavelength 2 pi / theta_i (tokens)")
    ax_wave.set_title("(b) tokens per full turn of each pair", fontsize=10)
    ax_wave.legend(fontsize=8, loc="upper left")

    # (c) how far the chosen pair turns
    positions = torch.logspace(0, math.log10(extended), 300, dtype=torch.float64)
    trained_turns = p["turns"][pair].item()
    for theta, label, style in ((p["theta"][pair], "plain RoPE", "-"), (p["theta_yarn"][pair], "YaRN", "--"),
                                (p["theta"][pair] / factor, "interpolate all", ":")):
        ax_turn.loglog(positions, positions * theta / (2 * math.pi), style, label=label)
    if trained_turns < 1:
        bottom, top = ax_turn.get_ylim()
        ax_turn.axhspan(trained_turns, top * 10, color="tab:red", alpha=0.08, label="angles never seen in training")
        ax_turn.set_ylim(bottom, top)
    ax_turn.axvline(original, color="tab:green", linestyle="--", linewidth=1)
    ax_turn.set_xlabel("position m")
    ax_turn.set_ylabel("turns m theta_i / (2 pi)")
    ax_turn.set_title(f"(c) pair {pair}: {trained_turns:.3g} turns in {original:,} training tokens", fontsize=10)
    ax_turn.legend(fontsize=8, loc="upper left")

    # (d) similarity of a key identical to the query, vs offset
    offsets = torch.logspace(0, math.log10(extended), 400, dtype=torch.float64)
    for theta, label, style in ((p["theta"], "plain RoPE", "-"), (p["theta_yarn"], "YaRN", "--"),
                                (p["theta"] / factor, "interpolate all", ":")):
        ax_sim.semilogx(offsets, torch.cos(offsets[:, None] * theta).mean(-1), style, linewidth=1, label=label)
    ax_sim.axvline(original, color="tab:green", linestyle="--", linewidth=1)
    ax_sim.set_xlabel("offset n - m (tokens)")
    ax_sim.set_ylabel("mean over pairs of cos(offset * theta_i)")
    ax_sim.set_title("(d) a key identical to the query, seen from further away", fontsize=10)
    ax_sim.legend(fontsize=8, loc="lower left")
    for ax in axes.flat:
        ax.minorticks_off()  # log axes over many decades: minor ticks cost most of the drawing time
        ax.grid(True, alpha=0.3)
    for axis in (ax_wave.yaxis, ax_turn.xaxis, ax_turn.yaxis, ax_sim.xaxis):
        axis.set_major_formatter(FuncFormatter(_short))  # plain text, faster than mathtext powers of ten
    fig.subplots_adjust(left=0.07, right=0.985, top=0.95, bottom=0.075, hspace=0.33, wspace=0.2)
    return fig


def rope_explorer(base=10000.0, dim=64, factor=40.0, original=4096, beta_fast=32.0, beta_slow=1.0,
                  pair=16) -> W.VBox:
    """Sliders for the RoPE base, rope width, YaRN factor, original context, beta_fast, beta_slow and the
    pair to follow; redraws the four panels and the table on every change."""
    style = {"description_width": "120px"}
    layout = W.Layout(width="380px")
    controls = {
        "base": W.FloatLogSlider(value=base, base=10, min=1, max=7, step=0.1, description="RoPE base",
                                 readout_format=".3g", style=style, layout=layout),
        "dim": W.Dropdown(options=sorted(set(DIMS) | {dim}), value=dim, description="rope dim R",
                          style=style, layout=layout),
        "factor": W.FloatSlider(value=factor, min=1, max=128, step=1, description="YaRN factor s",
                                style=style, layout=layout),
        "original": W.Dropdown(options=[(f"{c:,}", c) for c in sorted(set(ORIGINALS) | {original})], value=original,
                               description="original context", style=style, layout=layout),
        "beta_fast": W.FloatSlider(value=beta_fast, min=1, max=128, step=1, description="beta_fast",
                                   style=style, layout=layout),
        "beta_slow": W.FloatSlider(value=beta_slow, min=0.25, max=32, step=0.25, description="beta_slow",
                                   style=style, layout=layout),
        "pair": W.IntSlider(value=pair, min=0, max=max(DIMS) // 2 - 1, description="pair i",
                            style=style, layout=layout),
    }

    def render(**values) -> tuple[bytes, str]:
        rows = yarn_rows(**values)
        png = fig_to_png(plot_yarn(**values), tight=False)  # plot_yarn fixes its margins
        return png, (
            f"<b>RoPE dim {values['dim']}, base {values['base']:g}, YaRN factor {values['factor']:g}, "
            f"beta_fast {values['beta_fast']:g}, beta_slow {values['beta_slow']:g}</b>" + html_table(HEADER, rows)
        )

    requested = dict(base=base, dim=dim, factor=factor, original=original, beta_fast=beta_fast,
                     beta_slow=beta_slow, pair=pair)
    def adjust(dim: int, pair: int, **_) -> dict[str, tuple[int, str]]:
        if pair > dim // 2 - 1:  # (beta_fast <= beta_slow stays an error message: either slider could move)
            return {"pair": (dim // 2 - 1, f"rope dim {dim} has pairs 0 to {dim // 2 - 1}")}
        return {}

    return explorer(controls, render, columns=2, requested=requested, adjust=adjust)
