"""Lesson 04: what one MLA attention step costs on each path, and the time a roofline predicts for it.

Three ways to run MLA's attention against a context of S tokens (per layer; [V2] 2.1.2):

- "expanded": cache per-head K (D+R) and V (V) for every token, as ordinary MHA would;
- "naive": cache the latent [c^KV; k^R] and rebuild K and V from all of it on every call;
- "absorbed": cache the latent and attend in latent space: q~ = W^UK^T q^C, o = W^UV (sum_s p_s c_s).

For T new tokens against S positions (the T are the last T of the S), with P (query, key) pairs:

    expanded:  2 T H C (D+V)  +  2 H P (D+R+V)      expand the T new tokens, attend per head
    naive:     2 S H C (D+V)  +  2 H P (D+R+V)      expand all S tokens, attend per head
    absorbed:  2 T H C (D+V)  +  2 H P (2C+R)       absorb W^UK, W^UV; attend in the 576-wide latent

Only matrix products are counted (as ``torch.utils.flop_counter`` does); softmax is left out. Bytes of a
decode step (T = 1): the cache it reads, W^UK and W^UV (every path needs them: to expand the new token,
to re-expand the cache, or to absorb), and for "naive" the K and V it writes and reads back.

``absorption_explorer()`` returns a VBox with ``.controls`` (context, heads, batch, path, machine),
``.image`` (predicted step time vs context, and the roofline) and ``.html`` (the numbers).
``plot_decode_costs`` and ``decode_cost_table`` draw the same for a lesson cell.

Letters: B batch, T new tokens, S context, H heads, C = d_c, R = d_h^R, D = d_h (nope), V = v_head_dim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as W
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..config import DATA_DIR, ModelConfig
from ..viz import error_html, fig_to_png, format_bytes, html_table, text_table

PATHS = ("expanded", "naive", "absorbed")
PATH_COLORS = {"expanded": "tab:red", "naive": "tab:orange", "absorbed": "tab:blue"}
CONTEXTS = tuple(1024 * 2**i for i in range(8))  # 1K .. 128K tokens
LIMITS = {"heads": (1, 256), "batch": (1, 4096), "context": (1, 2**20)}
BENCH_PATH = DATA_DIR / "bench_mla.json"


# ----------------------------------------------------------------------------------------- machines
@dataclass(frozen=True)
class Machine:
    """Peak memory bandwidth (bytes/s) and matmul speed (FLOP/s), and the bytes per cached value."""

    name: str
    bandwidth: float
    flops: float
    bytes_per_value: int

    @property
    def balance(self) -> float:
        """FLOPs the machine can do per byte it reads: kernels below this intensity wait on memory."""
        return self.flops / self.bandwidth


# NVIDIA's figures for an H800 SXM5 (the GPU DeepSeek-V3 was trained and served on), as FlashMLA's
# write-up quotes them: 3.35 TB/s of HBM3, 990 TFLOP/s of dense BF16 matmul.
H800 = Machine("H800 SXM5 (spec sheet, BF16)", bandwidth=3.35e12, flops=990e12, bytes_per_value=2)


def bench_machine(path: str | Path = BENCH_PATH) -> Machine:
    """The CPU that produced data/bench_mla.json: its measured bandwidth and matmul speed, FP32."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No benchmark results at {path}: run `python -m dsv3_edu.bench mla --json {path}`")
    r = json.loads(path.read_text())
    threads = r["settings"]["threads"]
    return Machine(
        f"this course's CPU (measured, FP32, {threads} thread{'s' if threads != 1 else ''})",
        bandwidth=r["memory_bandwidth_GBps"] * 1e9,
        flops=r["matmul_GFLOPs"] * 1e9,
        bytes_per_value=4,
    )


def machines() -> dict[str, Machine]:
    """The machines the explorer offers: "cpu" (data/bench_mla.json) and "h800" (spec sheet)."""
    return {"cpu": bench_machine(), "h800": H800}


# ----------------------------------------------------------------------------------------- counting
def _dims(config: ModelConfig) -> tuple[int, int, int, int, int]:
    return (config.num_attention_heads, config.kv_lora_rank, config.qk_nope_head_dim, config.qk_rope_head_dim,
            config.v_head_dim)


def _check_path(path: str) -> None:
    if path not in PATHS:
        raise ValueError(f"path={path!r}: choose one of {', '.join(PATHS)}")


def query_key_pairs(T: int, S: int, causal: bool = True, block: int | None = None) -> int:
    """(query, key) pairs attention scores when T new queries are the last T of S positions.

    causal: query i (0-based among the T) sees S - T + i + 1 keys. ``block``: queries go in blocks of
    that many rows and each block is scored against every key up to its last row (masking after the
    product, as dsv3_edu.bench.mla's chunked prefill does), so a few masked pairs are computed too.
    """
    if not 1 <= T <= S:
        raise ValueError(f"T={T}, S={S}: the T new tokens are part of the S positions, so 1 <= T <= S")
    if not causal:
        return T * S
    if block is None:
        return T * (S - T) + T * (T + 1) // 2
    return sum((min(i + block, T) - i) * (S - T + min(i + block, T)) for i in range(0, T, block))


def attention_flops(
    config: ModelConfig, T: int, S: int, path: str, batch: int = 1, causal: bool = True, block: int | None = None
) -> int:
    """Matmul FLOPs of one MLA attention call (one layer): T new tokens against S positions (module docstring)."""
    _check_path(path)
    H, C, D, R, V = _dims(config)
    pairs = query_key_pairs(T, S, causal, block)
    expanded_tokens = S if path == "naive" else T
    width = 2 * C + R if path == "absorbed" else D + R + V  # score + value width per (query, key) pair
    return batch * (2 * expanded_tokens * H * C * (D + V) + 2 * H * pairs * width)


def decode_step_bytes(
    config: ModelConfig, context: int, path: str, batch: int = 1, bytes_per_value: int = 2, new_token: bool = True
) -> dict[str, int]:
    """Bytes one decode step moves in one layer: ``cache`` read, ``weights`` (W^UK, W^UV) read,
    ``intermediate`` (naive: K and V written, then read back) and their ``total``.

    ``new_token=False`` leaves out the expanded path's expansion of the new token (and so its reading of
    W^UK, W^UV): only the attention over the cache, as dsv3_edu.bench.mla times that path.
    """
    _check_path(path)
    H, C, D, R, V = _dims(config)
    kv_values = context * H * (D + R + V)  # per-head K and V of every position
    latent_values = context * (C + R)  # [c^KV; k^R] of every position
    reads_weights = new_token or path != "expanded"
    out = {
        "cache": batch * (kv_values if path == "expanded" else latent_values) * bytes_per_value,
        "weights": H * (D + V) * C * bytes_per_value if reads_weights else 0,  # once per step, shared by the batch
        "intermediate": 2 * batch * kv_values * bytes_per_value if path == "naive" else 0,
    }
    out["total"] = sum(out.values())
    return out


@dataclass(frozen=True)
class StepCost:
    """FLOPs and bytes of one decode step in one layer, and what a roofline makes of them."""

    path: str
    flops: int
    bytes: int

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: FLOPs per byte moved."""
        return self.flops / self.bytes

    def seconds(self, machine: Machine) -> float:
        """Roofline time: the slower of moving the bytes and doing the FLOPs (a lower bound)."""
        return max(self.bytes / machine.bandwidth, self.flops / machine.flops)

    def bound(self, machine: Machine) -> str:
        return "memory" if self.intensity < machine.balance else "compute"


def decode_step_cost(
    config: ModelConfig, context: int, path: str, batch: int = 1, bytes_per_value: int = 2, new_token: bool = True
) -> StepCost:
    """One decode step (T = 1) against ``context`` positions, one layer (``new_token``: see decode_step_bytes)."""
    flops = attention_flops(config, 1, context, path, batch)
    if path == "expanded" and not new_token:
        H, C, D, _, V = _dims(config)
        flops -= 2 * batch * H * C * (D + V)
    return StepCost(path, flops, decode_step_bytes(config, context, path, batch, bytes_per_value, new_token)["total"])


# ----------------------------------------------------------------------------------------- drawing
def _validate(context: int, heads: int, batch: int, path: str, machine: str) -> None:
    for name, value in (("context", context), ("heads", heads), ("batch", batch)):
        lo, hi = LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{name}={value!r} is out of range: use a whole number from {lo:,} to {hi:,}")
    _check_path(path)
    if machine not in ("cpu", "h800"):
        raise ValueError(f"machine={machine!r}: choose cpu (data/bench_mla.json) or h800 (spec sheet)")


def _config(heads: int) -> ModelConfig:
    return ModelConfig.deepseek_v3(num_attention_heads=heads)


def format_seconds(s: float) -> str:
    """0.0123 -> '12.3 ms', 4.5e-6 -> '4.50 us', 2.5 -> '2.50 s' (3 significant digits)."""
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= size:
            v = s / size
            return f"{v:.0f} {unit}" if v >= 99.95 else f"{v:.1f} {unit}" if v >= 9.995 else f"{v:.2f} {unit}"
    return f"{s * 1e9:.0f} ns"


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
    image = W.Image(format="png")
    html = W.HTML()

    def redraw(_change=None) -> None:
        values = {name: c.value for name, c in controls.items()}
        try:
            rows = decode_cost_rows(**values)
            png = fig_to_png(plot_decode_costs(**values))
        except (ValueError, FileNotFoundError) as err:
            html.value = error_html(str(err))
            return
        image.value = png
        html.value = f"<b>{_title(values['context'], values['heads'], values['batch'], values['machine'])}</b>" + \
            html_table(HEADER, rows)

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    names = list(controls)
    box = W.VBox([W.HBox([W.VBox([controls[n] for n in names[:3]]), W.VBox([controls[n] for n in names[3:]])]),
                  image, html])
    box.controls, box.image, box.html, box.redraw = controls, image, html, redraw
    return box
