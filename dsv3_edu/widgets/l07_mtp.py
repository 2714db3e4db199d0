"""Lesson 07 widget: what MTP depth k sees and predicts at one position of a real sentence.

Depth k at position i ([V3] eqs 21-23) combines h^{k-1}_i (which has seen t_0..t_i and, through the
earlier depths, t_{i+1}..t_{i+k-1}) with Emb(t_{i+k}), and predicts t_{i+k+1}. ``mtp_explorer(model)``
returns a VBox with ``.controls`` ("text", "position", "depth"), ``.image`` (the chain at that position
as a grid of tokens, and the top-3 predictions of the main model and of every depth up to k) and
``.html`` (the same as a table). The drawing lives in :func:`plot_mtp_view` and :func:`mtp_chain_table`
so a lesson cell shows the same picture without a widget, and tests drive the callback by setting
``.value``. Tokens are the bytes of dsv3_edu's ByteTokenizer, one character each.
"""

from __future__ import annotations

from dataclasses import dataclass

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..config import ModelConfig
from ..data import DOMAINS, ByteTokenizer, documents, load_corpus
from ..layers import eval_mode
from ..model import DeepSeekV3
from ..viz import escape, fig_to_png, html_table, text_table, visible_token
from . import explorer

# Cell kinds of the grid, in colour order.
KINDS = ("not visible", "context in h_i", "via the chain", "Emb input", "target")
KIND_COLORS = ("0.94", "#c6dbef", "#c7e9c0", "#41ab5d", "#fd8d3c")
TOPK = 3


def sample_texts(max_bytes: int = 56) -> dict[str, str]:
    """The start of the first held-out document of every domain, cut at a sentence or line end."""
    corpus = load_corpus("validation")
    out = {}
    for domain in DOMAINS:
        doc = documents(corpus[domain])[0]
        cut = max((j + 1 for j, c in enumerate(doc[:max_bytes]) if c in ".\n"), default=max_bytes)
        out[domain] = doc[:cut].rstrip("\n")
    return out


def token_labels(ids: list[int]) -> list[str]:
    """One short printable label per byte token: 'a', '␣' for a space, '\\n' for a newline."""
    return [visible_token(t) for t in ByteTokenizer().decode_tokens(ids)]


def _check(n_tokens: int, position: int, depth: int, max_depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= max_depth:
        raise ValueError(f"depth={depth!r}: this model has MTP depths 1..{max_depth}")
    last = n_tokens - depth - 2
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= last:
        raise ValueError(
            f"position={position!r} with depth {depth}: depth {depth} at position i predicts t_(i+{depth + 1}), "
            f"and this text has {n_tokens} tokens (t_0..t_{n_tokens - 1}). Pick a position from 0 to {last}."
        )


# ---------------------------------------------------------------------------------------- tables


def mtp_alignment_rows(ids: list[int], depths: int = 2) -> list[list[str]]:
    """One row per position i: i, t_i, what the main model predicts, and for each depth k what it is fed
    (h^{k-1}_i and Emb(t_{i+k})) and what it predicts (t_{i+k+1}); '-' where the text has no such token."""
    labels = token_labels(ids)
    T = len(ids)

    def tok(j: int) -> str:
        return f"'{labels[j]}'" if j < T else "-"

    rows = []
    for i in range(T):
        row = [str(i), tok(i), tok(i + 1)]
        for k in range(1, depths + 1):
            row += [f"h^{k - 1}_{i} + Emb({tok(i + k)})" if i + k < T else "-", tok(i + k + 1)]
        rows.append(row)
    return rows


def mtp_alignment_header(depths: int = 2) -> list[str]:
    header = ["i", "t_i", "main predicts t_(i+1)"]
    for k in range(1, depths + 1):
        header += [f"depth {k} is fed", f"depth {k} predicts t_(i+{k + 1})"]
    return header


def mtp_alignment_table(text: str, depths: int = 2) -> str:
    """What the main model and MTP depths 1..depths see and predict at every position of ``text`` (plain text)."""
    ids = ByteTokenizer().encode(text)
    return text_table(mtp_alignment_header(depths), mtp_alignment_rows(ids, depths))


# ----------------------------------------------------------------------------------- predictions


@dataclass
class ChainRow:
    """One link of the chain at position i: the main model (depth 0) or MTP depth k."""

    depth: int
    sees: str
    target_position: int
    target: int
    top_ids: list[int]
    top_probs: list[float]

    @property
    def name(self) -> str:
        return "main" if self.depth == 0 else f"depth {self.depth}"

    @property
    def correct(self) -> bool:
        return bool(self.top_ids) and self.top_ids[0] == self.target


@torch.no_grad()
def mtp_forward_all(model: DeepSeekV3, ids: list[int]) -> list[torch.Tensor]:
    """Probabilities of the main model (T, V) and of every MTP depth k (T-k, V) on one sequence."""
    with eval_mode(model):
        out = model(torch.tensor([ids]))
    return [out.logits[0].float().softmax(-1)] + [lg[0].float().softmax(-1) for lg in out.mtp_logits]


def mtp_chain(
    model: DeepSeekV3, ids: list[int], position: int, depth: int, probs: list[torch.Tensor] | None = None,
) -> list[ChainRow]:
    """The main model at ``position`` and MTP depths 1..``depth`` there: what each is fed, its target and
    its top-3 predictions. ``probs``: the output of :func:`mtp_forward_all` (computed if not given)."""
    _check(len(ids), position, depth, len(model.mtp))
    probs = mtp_forward_all(model, ids) if probs is None else probs
    labels = token_labels(ids)
    i = position
    rows = []
    for k in range(depth + 1):
        p = probs[k][i]
        top = p.topk(TOPK)
        sees = f"t_0..t_{i}" if k == 0 else f"h^{k - 1}_{i} + Emb('{labels[i + k]}')"
        rows.append(ChainRow(k, sees, i + k + 1, ids[i + k + 1], top.indices.tolist(),
                             [float(v) for v in top.values]))
    return rows


def _chain_cells(rows: list[ChainRow]) -> list[list[str]]:
    out = []
    for r in rows:
        tops = ", ".join(f"'{lab}' {p:.2f}" for lab, p in zip(token_labels(r.top_ids), r.top_probs))
        out.append([r.name, r.sees, f"t_{r.target_position} = '{token_labels([r.target])[0]}'", tops,
                    "yes" if r.correct else "no"])
    return out


CHAIN_HEADER = ("who", "is fed", "predicts", f"top-{TOPK} (probability)", "top-1 right?")


def mtp_chain_table(model: DeepSeekV3, text: str, position: int, depth: int) -> str:
    """The chain at ``position`` as plain text (for print in a lesson)."""
    ids = ByteTokenizer().encode(text)
    return text_table(CHAIN_HEADER, _chain_cells(mtp_chain(model, ids, position, depth)))


# ----------------------------------------------------------------------------------------- figure


def plot_mtp_view(ids: list[int], position: int, depth: int, rows: list[ChainRow] | None = None,
                  window: int = 10) -> Figure:
    """Left: the tokens around ``position``, one grid row per link of the chain (main, depth 1..k), coloured by
    what that link has seen (its context in h_i, tokens that reached it through earlier depths, its own
    embedding input) and what it must predict. Right (when ``rows`` are given): top-3 predictions per link."""
    _check(len(ids), position, depth, max(depth, 1))
    labels = token_labels(ids)
    i = position
    lo, hi = max(0, i - window), min(len(ids) - 1, i + depth + 3)
    cols = list(range(lo, hi + 1))
    grid = []
    for k in range(depth + 1):
        line = []
        for j in cols:
            if j <= i:
                kind = 1
            elif j < i + k:
                kind = 2
            elif j == i + k:
                kind = 3
            elif j == i + k + 1:
                kind = 4
            else:
                kind = 0
            line.append(kind)
        grid.append(line)
    names = ["main"] + [f"depth {k}" for k in range(1, depth + 1)]
    fig, axes = plt.subplots(1, 2 if rows else 1, figsize=(12 if rows else 8, 1.3 + 0.55 * (depth + 1)),
                             gridspec_kw={"width_ratios": [3, 2]} if rows else None, squeeze=False)
    ax = axes[0, 0]
    ax.imshow(grid, cmap=ListedColormap(KIND_COLORS), vmin=-0.5, vmax=len(KINDS) - 0.5, aspect="auto")
    for r in range(depth + 1):
        for c, j in enumerate(cols):
            ax.text(c, r, labels[j], ha="center", va="center", fontsize=9, family="monospace")
    ax.set_xticks(range(len(cols)), [str(j) for j in cols], fontsize=7)
    ax.set_yticks(range(depth + 1), names)
    ax.set_xticks([c - 0.5 for c in range(len(cols) + 1)], minor=True)
    ax.set_yticks([r - 0.5 for r in range(depth + 2)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("position")
    ax.set_title(f"position i = {i}: who sees what, and predicts which token", fontsize=10)
    ax.legend(handles=[Patch(color=c, label=k) for c, k in zip(KIND_COLORS[1:], KINDS[1:])], fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.32 - 0.05 * (2 - depth)), ncol=4, frameon=False)
    if rows:
        bx = axes[0, 1]
        y, yticks, ylabels = 0, [], []
        for r in reversed(rows):
            for tid, p in reversed(list(zip(r.top_ids, r.top_probs))):
                bx.barh(y, p, color="#fd8d3c" if tid == r.target else "0.7")
                yticks.append(y)
                ylabels.append(f"{r.name}: '{token_labels([tid])[0]}'")
                y += 1
            y += 0.6
        bx.set_yticks(yticks, ylabels, fontsize=8)
        bx.set_xlim(0, 1)
        bx.set_xlabel("probability (orange: the true token)")
        bx.set_title(f"top-{TOPK} predictions", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- widget


def untrained_model(depth: int = 2, seed: int = 0) -> DeepSeekV3:
    """A freshly seeded tiny model with ``depth`` MTP modules (its predictions are noise)."""
    torch.manual_seed(seed)
    return DeepSeekV3(ModelConfig.tiny(num_nextn_predict_layers=depth)).eval()


def mtp_explorer(
    model: DeepSeekV3 | None = None, texts: dict[str, str] | None = None, text: str | None = None,
    position: int = 8, depth: int = 1,
) -> W.VBox:
    """Pick a text, a position and a depth: see what the main model and each MTP depth up to it are fed and
    predict there, with the model's top-3. ``model``: a trained DeepSeekV3 (default: an untrained one)."""
    model = untrained_model() if model is None else model
    texts = sample_texts() if texts is None else texts
    text = next(iter(texts)) if text is None else text
    tok = ByteTokenizer()
    encoded = {name: tok.encode(t) for name, t in texts.items()}
    cache: dict[str, list[torch.Tensor]] = {}
    style = {"description_width": "70px"}
    max_depth = max(1, len(model.mtp))
    controls = {
        "text": W.Dropdown(options=list(texts), value=text, description="text", style=style),
        "position": W.IntSlider(value=position, min=0, max=max(len(v) for v in encoded.values()) - 3,
                                description="position", style=style, layout=W.Layout(width="420px")),
        "depth": W.IntSlider(value=depth, min=1, max=max_depth, description="depth", style=style),
    }

    def render(text: str, position: int, depth: int) -> tuple[bytes, str]:
        ids, i, k = encoded[text], position, depth
        if len(model.mtp) == 0:
            raise ValueError("this model has no MTP module (num_nextn_predict_layers=0)")
        _check(len(ids), i, k, len(model.mtp))
        if text not in cache:
            cache[text] = mtp_forward_all(model, ids)
        rows = mtp_chain(model, ids, i, k, cache[text])
        return fig_to_png(plot_mtp_view(ids, i, k, rows)), (
            f"<b>{escape(text)}, position {i}, depth {k}</b>: depth {k} at position {i} "
            f"has seen the same tokens t_0..t_{i + k} as the main model at position {i + k}"
            + html_table(CHAIN_HEADER, _chain_cells(rows)))

    def adjust(text: str, position: int, depth: int) -> dict[str, tuple[int, str]]:
        last = len(encoded[text]) - depth - 2  # depth k at position i predicts t_(i+k+1)
        if 0 <= last < position:
            return {"position": (last, f"with depth {depth} this text's last usable position is {last}")}
        return {}

    return explorer(controls, render, rows=[list(controls)], requested=dict(position=position, depth=depth),
                    adjust=adjust)
