"""Small plotting and formatting helpers shared by the lessons and the widgets.

Every function takes plain numbers and draws on a matplotlib Axes (or returns text), so a
lesson cell and a widget callback draw the same picture.
"""

from __future__ import annotations

import html
import numbers
from collections.abc import Mapping, Sequence
from io import BytesIO

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

GiB = 2**30
MiB = 2**20
KiB = 2**10

# One colour per attention kind (and per model component), the same in every lesson.
COLORS = {
    "mha": "tab:red",
    "gqa": "tab:orange",
    "mqa": "tab:green",
    "mla": "tab:blue",
    "reference": "0.35",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}  # a widget's dtype menu
CONTEXTS = tuple(1024 * 2**i for i in range(8))  # context lengths the widgets offer: 1K .. 128K tokens
SPACE = "\u2423"  # how a space token is shown in labels


def visible_token(label: str) -> str:
    """A token's label as shown in a figure or table: a space becomes SPACE, anything else stays."""
    return SPACE if label == " " else label


def format_bytes(n: float) -> str:
    """Binary units, 3 significant digits: 70272 -> '68.6 KiB', 2**31 -> '2.00 GiB', 500 -> '500 B'."""
    for unit, size in (("TiB", 2**40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{_three_digits(n / size)} {unit}"
    return f"{int(n)} B"


def _three_digits(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 99.95 else f"{v:.1f}" if abs(v) >= 9.995 else f"{v:.2f}"


def format_count(n: float) -> str:
    """Parameter counts: 671026404352 -> '671 B', 37552282624 -> '37.6 B', 217728 -> '218 K'."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{_three_digits(n / size)} {unit}"
    return f"{int(n)}"


def format_seconds(s: float) -> str:
    """0.0123 -> '12.3 ms', 4.5e-6 -> '4.50 us', 2.5 -> '2.50 s' (3 significant digits)."""
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= size:
            return f"{_three_digits(s / size)} {unit}"
    return f"{s * 1e9:.0f} ns"


def fig_to_png(fig: Figure, dpi: int = 80, tight: bool = True) -> bytes:
    """PNG bytes of a figure (for ipywidgets.Image), closing the figure so it is not shown twice.

    ``tight=False`` keeps the figure's own margins: no bbox_inches="tight", which draws the figure twice (half
    the redraw time of a many-panel figure whose margins are already fixed)."""
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return buf.getvalue()


def plot_bytes_vs_context(
    ax: Axes,
    bytes_per_token: Mapping[str, float],
    contexts: Sequence[int],
    unit: int = GiB,
    colors: Mapping[str, str] | None = None,
    styles: Mapping[str, str] | None = None,
) -> Axes:
    """One line per entry: bytes_per_token[label] * context, in ``unit`` (GiB by default), log-log axes."""
    colors = colors or {}
    styles = styles or {}
    for label, per_token in bytes_per_token.items():
        ax.plot(
            contexts,
            [per_token * c / unit for c in contexts],
            styles.get(label, "-"),
            color=colors.get(label),
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(contexts), [_tokens(c) for c in contexts])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"cache size ({_unit_name(unit)})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return ax


def bar_with_references(
    ax: Axes,
    values: Mapping[str, float],
    references: Mapping[str, float] | None = None,
    unit: int = GiB,
    colors: Sequence[str] | None = None,
    log: bool = True,
) -> Axes:
    """Bars for ``values`` (label each with its size) and dashed horizontal lines for ``references``."""
    labels = list(values)
    heights = [values[k] / unit for k in labels]
    bars = ax.bar(labels, heights, color=colors)
    for bar, raw in zip(bars, values.values()):
        ax.annotate(format_bytes(raw), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value / unit, color=COLORS["reference"], linestyle=("--", ":", "-.")[i % 3], linewidth=1,
                   label=f"{label}: {format_bytes(value)}")
    if log:
        ax.set_yscale("log")
        top = max(heights + [v / unit for v in (references or {}).values()])
        ax.set_ylim(top=top * 4)
    ax.set_ylabel(f"cache size ({_unit_name(unit)})")
    if references:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    return ax


def stacked_bars(
    ax: Axes,
    bars: Mapping[str, Mapping[str, float]],
    scale: float = 1e9,
    unit_label: str = "billions of parameters",
    colors: Mapping[str, str] | None = None,
) -> Axes:
    """Stacked bars: ``bars[bar_label][component] = value``; every bar stacks the same components in order."""
    labels = list(bars)
    components = list(next(iter(bars.values()))) if bars else []
    bottoms = [0.0] * len(labels)
    for j, comp in enumerate(components):
        heights = [bars[label].get(comp, 0) / scale for label in labels]
        ax.bar(labels, heights, bottom=bottoms, label=comp,
               color=(colors or {}).get(comp, plt.get_cmap("tab10")(j % 10)))
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, total in enumerate(bottoms):
        ax.annotate(f"{total:.1f}" if total < 100 else f"{total:.0f}", (i, total), ha="center", va="bottom")
    ax.set_ylabel(unit_label)
    ax.legend(fontsize=8, loc="upper right")
    return ax


def escape(value: object) -> str:
    """``str(value)`` made safe to show inside HTML: a token ``<bos>`` shows as <bos>, not as an unknown tag that
    the browser hides. Every widget label, title and table cell that holds text goes through this one function."""
    return html.escape(str(value), quote=False)  # text between tags: quotes need no escaping


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A small HTML table (for ipywidgets.HTML); cells are printed with str() and escaped (:func:`escape`)."""
    head = "".join(f"<th style='padding:2px 8px'>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:2px 8px;text-align:right'>{escape(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table as plain text, right-aligned columns (for print in a lesson)."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def whole_number(name: str, value, lo: int, hi: int) -> int:
    """``value`` as an int if it is a whole number from lo to hi (not a bool), else a ValueError that names it
    and the range: what a widget shows instead of a picture."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is out of range: use a whole number from {lo:,} to {hi:,}")
    return int(value)


def error_html(message: str) -> str:
    """A message a widget shows instead of a traceback."""
    return f"<p style='color:#b00020'><b>Not drawn:</b> {escape(message)}</p>"


def note_html(message: str) -> str:
    """A note a widget shows above its output (a value it had to change, say)."""
    return f"<p style='color:#8a5a00'><b>Note:</b> {escape(message)}</p>"


def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _unit_name(unit: int) -> str:
    return {GiB: "GiB", MiB: "MiB", KiB: "KiB", 1: "bytes"}.get(unit, f"x{unit} bytes")


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
