"""Lesson 05 widget: route real tokens of the course corpus through DeepSeek-V3's router.

``routing_explorer()`` returns a VBox with ``.controls`` (routed experts, top-k, groups, kept
groups, and a bias on one expert), ``.image`` (group selection, the tokens x experts map of gate
weights, tokens per expert) and ``.html`` (loads and what the bias did). The routing itself is
``dsv3_edu.moe.Gate``; this module only feeds it tokens and draws. ``plot_routing_case`` and
``routing_table`` draw the same picture and table for a lesson cell.

The tokens are short lines of the four corpus domains (``SNIPPETS``), one byte per token, embedded
with a seeded random table: a stand-in for a trained model's hidden states. The same byte therefore
always routes the same way here; in a trained model attention mixes in the context first.

Letters: N tokens, d hidden size, E routed experts, G groups, M kept groups, K experts per token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from ..balance import max_violation
from ..config import ModelConfig
from ..data import ByteTokenizer, load_corpus
from ..moe import Gate, select_groups
from ..viz import fig_to_png, html_table, text_table, visible_token, whole_number
from . import explorer

# One short line per domain, each copied from the validation split (corpus_tokens checks it).
SNIPPETS = {"prose": "Tom meets Zoe.", "arithmetic": "50+58=108", "code": "return a", "csv": "drum,20,4,80"}
HIDDEN_SIZE = 64  # d of the toy router
MAX_EXPERTS = 64
SEED = 0
LIMITS = {"n_experts": (2, MAX_EXPERTS), "top_k": (1, 16), "n_group": (1, 16), "topk_group": (1, 16)}
BIAS_LIMIT = 1.0


class CorpusTokens(NamedTuple):
    ids: torch.Tensor  # (N,) byte ids
    labels: list[str]  # one printable string per token (a space shows as SPACE)
    domains: list[str]  # the domain of each token


def corpus_tokens(snippets: dict[str, str] | None = None, split: str = "validation") -> CorpusTokens:
    """Encode one line per domain with the byte tokenizer; each line must occur in that domain's corpus."""
    snippets = SNIPPETS if snippets is None else snippets
    corpus = load_corpus(split)
    tok = ByteTokenizer()
    ids, labels, domains = [], [], []
    for domain, text in snippets.items():
        if domain not in corpus:
            raise ValueError(f"unknown domain {domain!r}: use one of {', '.join(corpus)}")
        if text not in corpus[domain]:
            raise ValueError(f"{text!r} does not occur in the {split} {domain} corpus")
        line = tok.encode(text)
        ids += line
        labels += [visible_token(t) for t in tok.decode_tokens(line)]
        domains += [domain] * len(line)
    return CorpusTokens(torch.tensor(ids), labels, domains)


def embed_tokens(ids: torch.Tensor, hidden_size: int = HIDDEN_SIZE, seed: int = SEED) -> torch.Tensor:
    """(N,) ids -> (N, d): rows of a seeded N(0, 1) table of shape (260, d), one row per byte id."""
    table = torch.randn(ByteTokenizer.vocab_size, hidden_size, generator=torch.Generator().manual_seed(seed))
    return table[ids]


def router_weight(n_experts: int, hidden_size: int = HIDDEN_SIZE, seed: int = SEED) -> torch.Tensor:
    """(E, d) router rows e_i ~ N(0, 1/d), so the logits u . e_i are about N(0, 1) for N(0, 1) tokens.

    The rows come from one fixed (MAX_EXPERTS, d) draw: expert i is the same vector for every E."""
    if not 1 <= n_experts <= MAX_EXPERTS:
        raise ValueError(f"n_experts={n_experts}: use 1 to {MAX_EXPERTS}")
    full = torch.randn(MAX_EXPERTS, hidden_size, generator=torch.Generator().manual_seed(seed + 1))
    return full[:n_experts] / math.sqrt(hidden_size)


def make_gate(config: ModelConfig, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Gate:
    """A ``dsv3_edu.moe.Gate`` holding the given router weight (E, d) and balancing bias (E,)."""
    gate = Gate(config)
    bias = torch.zeros(config.n_routed_experts) if bias is None else bias
    gate.load_state_dict({"weight": weight, "e_score_correction_bias": bias.float()})
    return gate


def group_selection(
    scores: torch.Tensor, bias: torch.Tensor, n_group: int, topk_group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group scores (N, G), the sum of the top-2 of s + b in each group, and the kept groups (N, G) bool:
    ``dsv3_edu.moe.select_groups``, the rule ``Gate`` runs, on unbiased scores and a bias (to draw it)."""
    selection = select_groups(scores + bias, n_group, topk_group)
    return selection.group_scores, selection.kept


def gate_matrix(topk_idx: torch.Tensor, topk_weight: torch.Tensor, n_experts: int) -> torch.Tensor:
    """(N, K) ids and weights -> (N, E): g_{i,t} for chosen experts, 0 elsewhere."""
    return torch.zeros(topk_idx.shape[0], n_experts).scatter_(1, topk_idx, topk_weight.float())


def groups_touched(topk_idx: torch.Tensor, experts_per_group: int) -> torch.Tensor:
    """(N, K) expert ids -> (N,) how many distinct groups (nodes) each token's experts live in."""
    groups = topk_idx // experts_per_group
    return torch.tensor([len(set(row)) for row in groups.tolist()])


# ------------------------------------------------------------------------------------------ cases


class RoutingCase(NamedTuple):
    config: ModelConfig
    tokens: CorpusTokens
    bias: torch.Tensor  # (E,) the balancing bias used
    topk_idx: torch.Tensor  # (N, K)
    topk_weight: torch.Tensor  # (N, K)
    scores: torch.Tensor  # (N, E) unbiased s
    group_scores: torch.Tensor  # (N, G)
    kept: torch.Tensor  # (N, G) bool
    loads: torch.Tensor  # (E,) tokens per expert
    loads_without_bias: torch.Tensor  # (E,) the same with every bias at 0
    bias_expert: int
    bias_value: float


def routing_config(n_experts: int = 32, top_k: int = 8, n_group: int = 8, topk_group: int = 4) -> ModelConfig:
    """The toy router's config; impossible combinations raise ModelConfig's own ValueError."""
    values = {name: whole_number(name, v, *LIMITS[name]) for name, v in
              (("n_experts", n_experts), ("top_k", top_k), ("n_group", n_group), ("topk_group", topk_group))}
    return ModelConfig.tiny(hidden_size=HIDDEN_SIZE, n_routed_experts=values["n_experts"],
                            num_experts_per_tok=values["top_k"], n_group=values["n_group"],
                            topk_group=values["topk_group"])


def routing_case(
    n_experts: int = 32, top_k: int = 8, n_group: int = 8, topk_group: int = 4,
    bias_expert: int = 0, bias: float = 0.0,
) -> RoutingCase:
    """Route the corpus tokens with a bias of ``bias`` on expert ``bias_expert`` (0 on the others)."""
    config = routing_config(n_experts, top_k, n_group, topk_group)
    if isinstance(bias_expert, bool) or not isinstance(bias_expert, (int, np.integer)) \
            or not 0 <= bias_expert < config.n_routed_experts:
        raise ValueError(f"bias_expert={bias_expert!r}: there are {config.n_routed_experts} experts, "
                         f"numbered 0 to {config.n_routed_experts - 1}")
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -BIAS_LIMIT <= bias <= BIAS_LIMIT:
        raise ValueError(f"bias={bias!r}: use a number from {-BIAS_LIMIT} to {BIAS_LIMIT}")
    tokens = corpus_tokens()
    u = embed_tokens(tokens.ids)  # (N, d)
    weight = router_weight(config.n_routed_experts)  # (E, d)
    b = torch.zeros(config.n_routed_experts)
    b[bias_expert] = bias
    with torch.no_grad():
        topk_idx, topk_weight, scores = make_gate(config, weight, b)(u)
        idx0, _, _ = make_gate(config, weight)(u)
    group_scores, kept = group_selection(scores, b, config.n_group, config.topk_group)
    E = config.n_routed_experts
    return RoutingCase(config, tokens, b, topk_idx, topk_weight, scores, group_scores, kept,
                       torch.bincount(topk_idx.flatten(), minlength=E), torch.bincount(idx0.flatten(), minlength=E),
                       int(bias_expert), float(bias))


# ---------------------------------------------------------------------------------------- drawing


def _domain_spans(domains: Sequence[str]) -> list[tuple[str, int, int]]:
    spans, start = [], 0
    for i in range(1, len(domains) + 1):
        if i == len(domains) or domains[i] != domains[start]:
            spans.append((domains[start], start, i))
            start = i
    return spans


def plot_routing(
    labels: Sequence[str],
    gates: torch.Tensor,
    group_scores: torch.Tensor,
    kept: torch.Tensor,
    domains: Sequence[str] | None = None,
    title: str = "",
    highlight: int | None = None,
) -> Figure:
    """Left: each token's group scores, kept groups marked. Right: gate weights g (tokens x experts),
    dropped groups shaded. Below: tokens per expert, with the mean and MaxVio.

    ``gates`` (N, E) is :func:`gate_matrix`; ``group_scores`` and ``kept`` (N, G) from :func:`group_selection`."""
    gates, group_scores, kept = gates.detach().float(), group_scores.detach().float(), kept.detach()
    N, E = gates.shape
    G = group_scores.shape[1]
    per = E // G
    loads = (gates > 0).sum(0).float()  # (E,)
    fig = plt.figure(figsize=(11.5, 2.2 + 0.16 * N))
    grid = fig.add_gridspec(2, 2, width_ratios=[max(G, 3), E], height_ratios=[N, 9], wspace=0.06, hspace=0.08)
    ax_g, ax_h, ax_l = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])
    rows = np.arange(N)

    im = ax_g.imshow(group_scores.numpy(), aspect="auto", cmap="Greens", interpolation="nearest")
    ky, kx = np.nonzero(kept.numpy())
    ax_g.scatter(kx, ky, s=9, c="black", marker="o", label="kept")
    ax_g.set_xticks(range(G))
    ax_g.set_xlabel("group")
    ax_g.set_yticks(rows, list(labels), fontsize=7, family="monospace")
    ax_g.set_title("group score\n(top-2 sum of s+b; dot = kept)", fontsize=8)
    host = fig.add_subplot(grid[1, 0])
    host.axis("off")
    fig.colorbar(im, cax=host.inset_axes([0.0, 0.3, 0.7, 0.12]), orientation="horizontal", label="group score")

    shown = np.ma.masked_where(gates.numpy() == 0, gates.numpy())
    dropped = (~kept).repeat_interleave(per, dim=1).numpy()  # (N, E)
    ax_h.imshow(np.where(dropped, 0.85, 1.0), aspect="auto", cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    hm = ax_h.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    for g in range(1, G):
        ax_h.axvline(g * per - 0.5, color="0.4", linewidth=0.6)
    ax_h.set_yticks([])
    ax_h.set_xticks([])
    ax_h.set_title(title or "gate weights g (grey: dropped groups)", fontsize=9)
    fig.colorbar(hm, ax=ax_h, fraction=0.025, pad=0.01, label="g")
    if domains is not None:
        for name, start, stop in _domain_spans(domains):
            if start:
                for ax in (ax_g, ax_h):
                    ax.axhline(start - 0.5, color="tab:red", linewidth=0.8)
            ax_g.annotate(name, (-0.32, (start + stop - 1) / 2), xycoords=("axes fraction", "data"), fontsize=8,
                          color="tab:red", rotation=90, va="center", ha="center", annotation_clip=False)

    colors = ["tab:blue" if (e // per) % 2 == 0 else "tab:orange" for e in range(E)]
    if highlight is not None:
        colors[highlight] = "tab:red"
    ax_l.bar(range(E), loads.numpy(), color=colors, width=0.8)
    mean = loads.mean().item()
    ax_l.axhline(mean, color="0.3", linestyle="--", linewidth=0.8)
    vio = max_violation(loads).item() if mean > 0 else float("nan")
    ax_l.set_xlim(-0.5, E - 0.5)
    ax_l.set_xticks(range(0, E, per if G > 1 else max(1, E // 8)))
    ax_l.set_xlabel("routed expert (colours alternate by group)")
    ax_l.set_ylabel("tokens")
    ax_l.set_title(f"tokens per expert (dashed: mean {mean:.2f}; MaxVio {vio:.2f})", fontsize=8, loc="left")
    return fig


def plot_token_routing(
    scores: torch.Tensor, bias: torch.Tensor, n_group: int, topk_group: int, top_k: int, label: str = "",
    mask_value: float = float("-inf"),
) -> Figure:
    """One token: s + b per expert in groups, each group's top-2 sum, the kept groups and the top-k.

    ``scores`` and ``bias`` are (E,). ``mask_value`` 0.0 draws what a router with trap 2 picks."""
    s, b = scores.detach().float(), bias.detach().float()
    biased = s + b  # (E,)
    E = biased.numel()
    per = E // n_group
    group_scores, kept = group_selection(s[None], b, n_group, topk_group)
    group_scores, kept = group_scores[0], kept[0]
    masked = biased.masked_fill(~kept.repeat_interleave(per), mask_value)
    chosen = set(masked.topk(top_k).indices.tolist())
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for e in range(E):
        g = e // per
        color = ("tab:red" if e in chosen else "tab:blue") if kept[g] else ("tab:red" if e in chosen else "0.75")
        ax.bar(e, biased[e].item(), color=color, width=0.8,
               hatch="//" if e in chosen and not kept[g] else None, edgecolor="black" if e in chosen else None)
    for g in range(n_group):
        ax.axvspan(g * per - 0.5, (g + 1) * per - 0.5, color="tab:green" if kept[g] else "0.5",
                   alpha=0.08 if kept[g] else 0.12, linewidth=0)
        ax.annotate(f"G{g}: {group_scores[g].item():.2f}" + (" kept" if kept[g] else ""),
                    ((g + 0.5) * per - 0.5, 1.02), xycoords=("data", "axes fraction"), ha="center", fontsize=7)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlim(-0.5, E - 0.5)
    ax.set_xlabel("routed expert")
    ax.set_ylabel("s + b")
    rule = "-inf" if math.isinf(mask_value) else f"{mask_value:g}"
    strays = any(not kept[e // per] for e in chosen)
    ax.set_title(f"token {label!r}: red = chosen top-{top_k}; grey = dropped group (masked with {rule})"
                 + ("; hatched = chosen from a dropped group" if strays else ""), fontsize=9, pad=16)
    fig.tight_layout()
    return fig


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def plot_routing_case(**kwargs) -> Figure:
    """:func:`plot_routing` for :func:`routing_case` (same keyword arguments)."""
    case = routing_case(**kwargs)
    c = case.config
    gates = gate_matrix(case.topk_idx, case.topk_weight, c.n_routed_experts)
    title = (f"{c.n_routed_experts} experts in {_plural(c.n_group, 'group')}, keep {c.topk_group}, "
             f"top-{c.num_experts_per_tok}; "
             f"bias {case.bias_value:+.2f} on expert {case.bias_expert}")
    return plot_routing(case.tokens.labels, gates, case.group_scores, case.kept, case.tokens.domains, title,
                        highlight=case.bias_expert if case.bias_value else None)


HEADER = ("quantity", "value")


def routing_rows(case: RoutingCase) -> list[list[str]]:
    c, j = case.config, case.bias_expert
    N = case.topk_idx.shape[0]
    touched = groups_touched(case.topk_idx, c.experts_per_group)
    rows = [
        ["tokens routed", f"{N} (x {c.num_experts_per_tok} experts = {N * c.num_experts_per_tok} assignments)"],
        ["mean tokens per expert", f"{case.loads.float().mean().item():.2f}"],
        ["busiest / idle experts", f"{int(case.loads.max())} tokens / {int((case.loads == 0).sum())} experts with 0"],
        ["MaxVio", f"{max_violation(case.loads).item():.2f}"],
        ["groups touched per token", f"mean {touched.float().mean().item():.2f}, max {int(touched.max())} "
                                     f"(limit topk_group = {c.topk_group})"],
        [f"expert {j}: tokens", f"{int(case.loads[j])} with bias {case.bias_value:+.2f}, "
                                f"{int(case.loads_without_bias[j])} with bias 0"],
    ]
    on_j = (case.topk_idx == j)
    if on_j.any():
        g = case.topk_weight[on_j]
        s = case.scores[:, j][on_j.any(1)]
        rows.append([f"expert {j}: gate weights", f"{g.min().item():.3f} to {g.max().item():.3f}, from its "
                     f"unbiased s ({s.min().item():.3f} to {s.max().item():.3f}); the bias never enters g"])
    return rows


def routing_table(**kwargs) -> str:
    """The widget's table as plain text (for print in a lesson)."""
    return text_table(HEADER, routing_rows(routing_case(**kwargs)))


# ----------------------------------------------------------------------------------------- widget


def routing_explorer(
    n_experts: int = 32, top_k: int = 8, n_group: int = 8, topk_group: int = 4, bias_expert: int = 5,
    bias: float = 0.0,
) -> W.VBox:
    """Sliders for experts, top-k, groups, kept groups and a bias on one expert; redraws on change.

    Impossible combinations (experts not divisible by groups, top-k beyond the kept groups, ...)
    show ModelConfig's message instead of a picture."""
    style = {"description_width": "120px"}
    layout = W.Layout(width="380px")
    lim = LIMITS
    controls = {
        "n_experts": W.IntSlider(value=n_experts, min=lim["n_experts"][0], max=lim["n_experts"][1],
                                 description="routed experts", style=style, layout=layout),
        "top_k": W.IntSlider(value=top_k, min=lim["top_k"][0], max=lim["top_k"][1], description="top-k (K_r)",
                             style=style, layout=layout),
        "n_group": W.IntSlider(value=n_group, min=lim["n_group"][0], max=lim["n_group"][1],
                               description="groups (nodes)", style=style, layout=layout),
        "topk_group": W.IntSlider(value=topk_group, min=lim["topk_group"][0], max=lim["topk_group"][1],
                                  description="kept groups (M)", style=style, layout=layout),
        "bias_expert": W.IntSlider(value=bias_expert, min=0, max=MAX_EXPERTS - 1, description="biased expert",
                                   style=style, layout=layout),
        "bias": W.FloatSlider(value=bias, min=-BIAS_LIMIT, max=BIAS_LIMIT, step=0.05, readout_format="+.2f",
                              description="its bias b", style=style, layout=layout),
    }

    def render(**values) -> tuple[bytes, str]:
        case = routing_case(**values)
        png = fig_to_png(plot_routing_case(**values))
        c = case.config
        return png, (
            f"<b>{c.n_routed_experts} routed experts in {_plural(c.n_group, 'group')} of {c.experts_per_group}, "
            f"each token keeps {c.topk_group} groups and picks {c.num_experts_per_tok} experts; "
            f"bias {case.bias_value:+.2f} on expert {case.bias_expert}</b>" + html_table(HEADER, routing_rows(case))
        )

    requested = dict(n_experts=n_experts, top_k=top_k, n_group=n_group, topk_group=topk_group,
                     bias_expert=bias_expert, bias=bias)
    return explorer(controls, render, columns=2, requested=requested, adjust=routing_adjustments)


def routing_adjustments(n_experts: int, top_k: int, n_group: int, topk_group: int, bias_expert: int,
                        **_) -> dict[str, tuple[int, str]]:
    """The dependent sliders moved back into range: kept groups <= groups, top-k <= the experts of the kept
    groups, the biased expert one of the experts. (Experts not divisible by groups stay an error message:
    no single slider move fixes that one.)"""
    fix: dict[str, tuple[int, str]] = {}
    if topk_group > n_group:
        fix["topk_group"] = (n_group, "a token cannot keep more groups than there are")
        topk_group = n_group
    if n_experts % n_group == 0 and top_k > topk_group * (n_experts // n_group):
        fix["top_k"] = (topk_group * (n_experts // n_group),
                        "top-k picks only among the experts of the kept groups")
    if bias_expert >= n_experts:
        fix["bias_expert"] = (n_experts - 1, f"there are only experts 0..{n_experts - 1}")
    return fix
