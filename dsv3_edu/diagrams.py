"""Diagrams of the four mechanisms, drawn from a ModelConfig so their labels stay exact.

Every function takes a :class:`~dsv3_edu.config.ModelConfig` and returns a matplotlib Figure whose
boxes carry the tensors' shapes computed from that config: change the config (or the code that
defines it) and the picture follows.

- :func:`draw_mla_dataflow`: MLA from h to the output, the cached tensors highlighted (lesson 03).
- :func:`draw_absorption`: the naive and the absorbed decoding paths side by side (lesson 04).
- :func:`draw_group_routing`: group-limited top-k routing of one token (lesson 05).
- :func:`draw_mtp_chain`: the main model and the MTP depths as a chain (lesson 07).

Shapes are written per token, "S" is the number of cached positions; "n_h x d_h" means one
d_h-vector per head.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch

from .config import ModelConfig
from .moe import select_groups

CACHED = "#f6b26b"  # orange: what the KV cache stores
TENSOR = "#dbe8f6"  # light blue: a tensor computed on the fly
OP = "#eeeeee"  # grey: an operation (attention, softmax, a block)
SHARED = "#d9ead3"  # green: shared with the main model (MTP)
EDGE = "0.25"


def _box(ax: Axes, x: float, y: float, text: str, w: float = 2.2, h: float = 0.8, color: str = TENSOR,
         note: str = "", bold: bool = False) -> tuple[float, float, float, float]:
    """A rounded box centred on (x, y) with ``text``; ``note`` in small grey below. Returns (x, y, w, h)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor=EDGE, linewidth=2.0 if bold else 0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=8)
    if note:
        ax.text(x, y - h / 2 - 0.05, note, ha="center", va="top", fontsize=6.5, color="0.35", family="monospace")
    return x, y, w, h


def _arrow(ax: Axes, a: tuple[float, float, float, float], b: tuple[float, float, float, float], label: str = "",
           style: str = "-|>", dashed: bool = False, rad: float = 0.0) -> None:
    """An arrow from the edge of box ``a`` to the edge of box ``b`` (boxes as returned by _box)."""
    (xa, ya, wa, ha), (xb, yb, wb, hb) = a, b
    dx, dy = xb - xa, yb - ya
    if abs(dx) * (ha + hb) >= abs(dy) * (wa + wb):  # mostly horizontal: leave through the sides
        start = (xa + (wa / 2 if dx > 0 else -wa / 2), ya)
        end = (xb - (wb / 2 if dx > 0 else -wb / 2), yb)
    else:
        start = (xa, ya + (ha / 2 if dy > 0 else -ha / 2))
        end = (xb, yb - (hb / 2 if dy > 0 else -hb / 2))
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle=style, color=EDGE, lw=0.9,
                                                          linestyle="--" if dashed else "-",
                                                          connectionstyle=f"arc3,rad={rad}",
                                                          shrinkA=1, shrinkB=1))
    if label:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.06, label, ha="center", va="bottom",
                fontsize=6.5, color="0.2", family="monospace")


def _canvas(ax: Axes, width: float, height: float) -> None:
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("auto")
    ax.axis("off")


def _n(v: int) -> str:
    return f"{v:,}"


def draw_mla_dataflow(config: ModelConfig) -> Figure:
    """MLA ([V2] eqs 9-19, [V3] eqs 1-11) for one token, cached tensors in orange.

    Boxes show each tensor's shape from ``config``; the grey notes under them are the released
    checkpoint's projection names. The footer compares the cached values per token and layer with
    the per-head K and V that the same attention would cache without the latent.
    """
    d, nh = config.hidden_size, config.num_attention_heads
    dc, dr, dn, dv = config.kv_lora_rank, config.qk_rope_head_dim, config.qk_nope_head_dim, config.v_head_dim
    dq = config.q_lora_rank
    fig, ax = plt.subplots(figsize=(13, 5.6))
    _canvas(ax, 13.2, 6.6)
    h = _box(ax, 0.9, 3.3, f"h\n({_n(d)})", w=1.3)
    if dq is None:
        cq = None
        q_src, q_note = h, "q_proj"
    else:
        cq = _box(ax, 3.4, 5.6, f"c^Q = RMSNorm(W^DQ h)\n({_n(dq)})", w=2.6, note="q_a_proj, q_a_layernorm")
        q_src, q_note = cq, "q_b_proj"
        _arrow(ax, h, cq)
    qc = _box(ax, 6.4, 6.0, f"q^C = W^UQ {'c^Q' if cq else 'h'}\n({nh} x {dn})", w=2.4, note=q_note)
    qr = _box(ax, 6.4, 4.8, f"q^R = RoPE(W^QR {'c^Q' if cq else 'h'})\n({nh} x {dr})", w=2.4, note=q_note)
    _arrow(ax, q_src, qc)
    _arrow(ax, q_src, qr)
    ckv = _box(ax, 3.4, 3.0, f"c^KV = RMSNorm(W^DKV h)\n({_n(dc)})  CACHED", w=2.8, color=CACHED, bold=True,
               note="kv_a_proj_with_mqa[:d_c], kv_a_layernorm")
    kr = _box(ax, 3.4, 1.2, f"k^R = RoPE(W^KR h)\n({dr}, one for all {nh} heads)  CACHED", w=3.0, color=CACHED,
              bold=True, note="kv_a_proj_with_mqa[d_c:]")
    _arrow(ax, h, ckv)
    _arrow(ax, h, kr)
    kc = _box(ax, 6.4, 3.3, f"k^C = W^UK c^KV\n({nh} x {dn})", w=2.4, note="kv_b_proj (k rows)")
    v = _box(ax, 6.4, 2.1, f"v = W^UV c^KV\n({nh} x {dv})", w=2.4, note="kv_b_proj (v rows)")
    _arrow(ax, ckv, kc)
    _arrow(ax, ckv, v)
    att = _box(ax, 9.4, 3.6, f"attention, per head i\nq_i = [q^C_i; q^R_i] ({dn + dr})\n"
                             f"k_i = [k^C_i; k^R] ({dn + dr})\nscale 1/sqrt({dn + dr})", w=2.6, h=1.5, color=OP)
    for src in (qc, qr, kc, v, kr):
        _arrow(ax, src, att)
    out = _box(ax, 12.1, 3.6, f"u = W^O [o_1 .. o_{nh}]\n({_n(nh * dv)} -> {_n(d)})", w=2.0, note="o_proj")
    _arrow(ax, att, out)
    cached = dc + dr
    expanded = nh * (dn + dr + dv)
    ax.text(0.1, 0.15, f"cached per token and layer: d_c + d_h^R = {dc} + {dr} = {_n(cached)} values;  "
                       f"per-head K and V would be n_h (d_h + d_h^R + d_h) = {nh} x {dn + dr + dv} = {_n(expanded)} "
                       f"values ({expanded / cached:.1f}x)", fontsize=8)
    ax.legend(handles=[Patch(facecolor=CACHED, edgecolor=EDGE, label="cached (the KV cache)"),
                      Patch(facecolor=TENSOR, edgecolor=EDGE, label="computed per forward"),
                      Patch(facecolor=OP, edgecolor=EDGE, label="operation")],
              loc="upper right", fontsize=7, frameon=False)
    ax.set_title(f"MLA data flow: d = {_n(d)}, n_h = {nh}, d_c = {dc}, d_h = {dn}, d_h^R = {dr}", fontsize=10)
    fig.tight_layout()
    return fig


def draw_absorption(config: ModelConfig) -> Figure:
    """One decode step of MLA over S cached positions: the naive path (left) and the absorbed path (right).

    Both read the same cache (c^KV and k^R) and give the same output up to float rounding. The naive
    path rebuilds per-head K and V from the latent at every step; the absorbed path folds W^UK into the
    query and W^UV into the output and attends in the d_c-dimensional latent space ([V2] section 2.1.2).
    """
    d, nh = config.hidden_size, config.num_attention_heads
    dc, dr, dn, dv = config.kv_lora_rank, config.qk_rope_head_dim, config.qk_nope_head_dim, config.v_head_dim
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
    for ax in axes:
        _canvas(ax, 6.4, 7.6)
    left, right = axes
    # naive
    c1 = _box(left, 1.6, 6.9, f"cache: c^KV (S x {dc})", w=2.6, color=CACHED, bold=True)
    r1 = _box(left, 4.8, 6.9, f"cache: k^R (S x {dr})", w=2.4, color=CACHED, bold=True)
    k1 = _box(left, 1.6, 5.4, f"K^C = W^UK c^KV\n({nh} x S x {dn})  rebuilt", w=2.8, note="kv_b_proj")
    v1 = _box(left, 1.6, 4.0, f"V = W^UV c^KV\n({nh} x S x {dv})  rebuilt", w=2.8, note="kv_b_proj")
    q1 = _box(left, 4.8, 5.4, f"q^C ({nh} x {dn})\nq^R ({nh} x {dr})", w=2.4)
    s1 = _box(left, 3.2, 2.6, f"scores q^C_i . K^C_i + q^R_i . k^R\n({nh} x S), softmax", w=3.6, color=OP)
    o1 = _box(left, 3.2, 1.3, f"o_i = sum_t p_t V_i,t  ({nh} x {dv})\nu = W^O o  ({_n(d)})", w=3.6, color=OP)
    _arrow(left, c1, k1)
    left.annotate("", xy=(1.6 - 1.4, 4.0), xytext=(1.6 - 1.3, 6.9 - 0.4),
                  arrowprops=dict(arrowstyle="-|>", color=EDGE, lw=0.9, connectionstyle="arc3,rad=0.35"))
    for src in (k1, q1, r1):
        _arrow(left, src, s1)
    _arrow(left, s1, o1)
    _arrow(left, v1, o1)
    left.set_title("naive: expand K and V from the latent", fontsize=10)
    left.text(0.1, 0.2, f"built per step: 2 x {nh} x S x {dn} values of K^C and V", fontsize=8)
    # absorbed
    c2 = _box(right, 1.6, 6.9, f"cache: c^KV (S x {dc})", w=2.6, color=CACHED, bold=True)
    r2 = _box(right, 4.8, 6.9, f"cache: k^R (S x {dr})", w=2.4, color=CACHED, bold=True)
    q2 = _box(right, 4.8, 5.4, f"q^C ({nh} x {dn})\nq^R ({nh} x {dr})", w=2.4)
    qt = _box(right, 4.8, 4.0, f"q~_i = W^UK_i^T q^C_i\n({nh} x {dc})", w=2.4, note="kv_b_proj (k rows)")
    s2 = _box(right, 3.2, 2.6, f"scores q~_i . c^KV + q^R_i . k^R\n({nh} x S), softmax", w=3.6, color=OP)
    o2 = _box(right, 3.2, 1.3, f"o~_i = sum_t p_t c^KV_t ({nh} x {dc})\no_i = W^UV_i o~_i ({nh} x {dv}), "
                               f"u = W^O o", w=3.8, color=OP)
    _arrow(right, q2, qt)
    for src in (c2, qt, r2):
        _arrow(right, src, s2)
    _arrow(right, s2, o2)
    right.set_title("absorbed: fold W^UK into q, W^UV after the sum", fontsize=10)
    right.text(0.1, 0.2, "built per step: nothing of size S beyond the scores; "
                         f"the heads read the {dc}-value latent directly", fontsize=8)
    fig.suptitle(f"One decode step over S cached positions (n_h = {nh}, d_c = {dc}, d_h = {dn}, d_h^R = {dr}): "
                 "same cache, same output", fontsize=10)
    fig.tight_layout()
    return fig


def group_limited_choice(config: ModelConfig, scores: torch.Tensor, bias: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token's routing decision ([V3] eq 16 with group limits), as ``moe.Gate`` makes it, through
    :func:`dsv3_edu.moe.select_groups` (the package's one implementation of group-limited selection).

    ``scores`` (E,) unbiased sigmoid affinities, ``bias`` (E,). Returns (group_scores (G,), kept groups
    (M,) long, ascending, chosen experts (K,) long). Group score = sum of the top-2 of s + b in the group.
    """
    E = config.n_routed_experts
    if scores.shape != (E,) or bias.shape != (E,):
        raise ValueError(f"scores and bias must both have shape ({E},), one value per routed expert; "
                         f"got {tuple(scores.shape)} and {tuple(bias.shape)}")
    sel = select_groups((scores + bias).float()[None], config.n_group, config.topk_group)
    chosen = sel.scores[0].topk(config.num_experts_per_tok).indices
    return sel.group_scores[0], sel.kept[0].nonzero().flatten(), chosen


def draw_group_routing(config: ModelConfig, scores: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                       seed: int = 0) -> Figure:
    """Group-limited routing of one token: a grid of n_group rows x (N_r / n_group) experts.

    Colour is the selection score s + b. Dropped groups are hatched (their experts are set to -inf),
    the chosen K_r experts are outlined, and each row is labelled with its group score (top-2 sum).
    Without ``scores``/``bias`` a seeded random token is drawn (bias 0).
    """
    E, G, M, K = config.n_routed_experts, config.n_group, config.topk_group, config.num_experts_per_tok
    per = E // G
    if scores is None:
        scores = torch.rand(E, generator=torch.Generator().manual_seed(seed))
    if bias is None:
        bias = torch.zeros(E)
    group_scores, kept, chosen = group_limited_choice(config, scores, bias)
    grid = (scores + bias).float().view(G, per)
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.38 * per), 1.3 + 0.45 * G))
    im = ax.imshow(grid.numpy(), cmap="Blues", aspect="auto")
    fig.colorbar(im, ax=ax, label="selection score s + b (unitless)", fraction=0.04, pad=0.12)
    kept_set = set(kept.tolist())
    for g in range(G):
        if g not in kept_set:
            ax.add_patch(plt.Rectangle((-0.5, g - 0.5), per, 1, facecolor="white", alpha=0.6, hatch="///",
                                       edgecolor="0.5", linewidth=0))
        ax.text(per - 0.3, g, f"  top-2 sum {group_scores[g]:.2f} {'kept' if g in kept_set else 'dropped'}",
                va="center", ha="left", fontsize=7, color="0.1" if g in kept_set else "0.5")
    for e in chosen.tolist():
        ax.add_patch(plt.Rectangle((e % per - 0.5, e // per - 0.5), 1, 1, fill=False, edgecolor="tab:red",
                                   linewidth=2))
    ax.set_xticks(range(per), [str(j) for j in range(per)], fontsize=6 if per > 16 else 8)
    ax.set_yticks(range(G), [f"group {g}" for g in range(G)], fontsize=8)
    ax.set_xlabel(f"expert within the group (expert id = {per} x group + this)")
    ax.set_title(f"{E} routed experts in {G} groups of {per}: keep the {M} groups with the highest top-2 sum, "
                 f"then the top {K} experts (red) among them", fontsize=9)
    fig.tight_layout()
    return fig


def draw_mtp_chain(config: ModelConfig, depths: int | None = None) -> Figure:
    """The main model and MTP depths 1..D at position i ([V3] eqs 21-23, Figure 3), shapes from ``config``.

    Green boxes are shared with the main model (embedding and output head). ``depths`` defaults to
    ``config.num_nextn_predict_layers`` (at least 1 is drawn, so D = 0 still shows what is left out).
    """
    d, V, L = config.hidden_size, config.vocab_size, config.num_hidden_layers
    D = depths if depths is not None else config.num_nextn_predict_layers
    if D < 0:
        raise ValueError(f"depths must be >= 0, got {D}")
    shown = max(1, D)
    fig, ax = plt.subplots(figsize=(4.2 + 4.0 * shown, 6.8))
    width = 4.0 * (shown + 1)
    _canvas(ax, width, 8.4)
    x = 1.9
    emb = _box(ax, x, 0.8, f"Emb(t_0..t_i)\n({_n(V)} x {_n(d)}, shared)", w=3.0, color=SHARED)
    blocks = _box(ax, x, 2.4, f"{L} decoder layers\n(MLA + FFN/MoE)", w=3.0, color=OP)
    norm = _box(ax, x, 3.8, "final RMSNorm\nmodel.norm", w=3.0, color=OP)
    h_prev = _box(ax, x, 5.2, f"h^0_i  ({_n(d)})", w=3.0)
    head = _box(ax, x, 6.5, f"OutHead: lm_head\n({_n(d)} -> {_n(V)}, shared)", w=3.0, color=SHARED)
    pred = _box(ax, x, 7.6, "predicts t_(i+1)", w=3.0, h=0.55, color="white")
    for a, b in ((emb, blocks), (blocks, norm), (norm, h_prev), (h_prev, head), (head, pred)):
        _arrow(ax, a, b)
    ax.text(x, 8.15, "main model", ha="center", fontsize=9, weight="bold")
    for k in range(1, shown + 1):
        x = 1.9 + 4.0 * k
        e = _box(ax, x + 0.85, 0.8, f"Emb(t_(i+{k}))\n(shared)", w=1.6, color=SHARED)
        en = _box(ax, x + 0.85, 2.0, f"enorm\n({_n(d)})", w=1.6)
        hn = _box(ax, x - 0.95, 2.0, f"hnorm(h^{k - 1}_i)\n({_n(d)})", w=1.8)
        cat = _box(ax, x, 3.2, f"[enorm(Emb); hnorm(h)]\n({_n(2 * d)})", w=3.2)
        proj = _box(ax, x, 4.3, f"M_{k} = eh_proj\n({_n(d)} x {_n(2 * d)})", w=3.2)
        trm = _box(ax, x, 5.4, f"TRM_{k}: one block -> h^{k}_i ({_n(d)})", w=3.4, color=OP)
        hd = _box(ax, x, 6.5, "shared_head.norm, then\nlm_head (shared)", w=3.2, color=SHARED)
        p = _box(ax, x, 7.6, f"predicts t_(i+{k + 1})", w=3.0, h=0.55, color="white")
        _arrow(ax, h_prev, hn, label=f"h^{k - 1}_i")
        for a, b in ((e, en), (en, cat), (hn, cat), (cat, proj), (proj, trm), (trm, hd), (hd, p)):
            _arrow(ax, a, b)
        ax.text(x, 8.15, f"MTP depth {k}" + ("" if k <= D else " (not in this config)"), ha="center",
                fontsize=9, weight="bold", color="black" if k <= D else "0.5")
        h_prev = trm
    fig.suptitle(f"Multi-Token Prediction, D = {D} (d = {_n(d)}, |V| = {_n(V)})\neach depth is fed the previous "
                 "depth's state and the next true token, and predicts one token further", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig
