"""Lesson 09: look at a trained tiny DeepSeek-V3 from the outside (generation) and the inside (loads, curves).

- :func:`generation_explorer` is the widget: a domain (which fills in a prompt of that domain), the
  prompt text, ``max_new_tokens``, ``temperature`` and ``top_k``; it regenerates with a seeded
  generator and redraws the text (``.html``) and the probability the model gave each new token
  (``.image``). The drawing is :func:`generation_view` + :func:`plot_generation`, so a lesson cell
  shows the same thing without a widget.
- ``score_sums`` (the sums ``a+b=c`` of a generation, checked) and ``greedy_answers_right`` (every
  held-out answer of ``ANSWER_PATTERNS``, in one teacher-forced forward per document) are in
  :mod:`dsv3_edu.evaluation`.
- :func:`plot_domain_loads` draws a :class:`~dsv3_edu.balance.LoadTracker`'s per-domain loads in the
  style of [V3] Figure 9 (relative load: 1 is the fair share); :func:`plot_history` the training
  curves of a ``history.json`` written by :mod:`dsv3_edu.train`.

Attention maps of the trained model use lesson 03's ``dsv3_edu.widgets.l03_mla`` (``attention_maps``,
``attention_explorer``). Tokens are bytes (dsv3_edu's ByteTokenizer), one character each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ..data import DOMAINS, ByteTokenizer
from ..evaluation import score_sums
from ..generate import generate
from ..layers import eval_mode
from ..model import DeepSeekV3
from ..viz import escape, fig_to_png, moving_average, visible_token
from . import explorer

# One prompt per domain of the corpus, written like its documents (dsv3_edu.data).
DOMAIN_PROMPTS = {
    "prose": "One day, Mia goes to the garden. Mia has a red kite.",
    "arithmetic": "sums:\n23+45=",
    "code": "def add_3(x):\n    return",
    "csv": "item,price,qty,total\nbook,9,9,81\ncup,",
}
MAX_NEW_TOKENS = 200


# ------------------------------------------------------------------------------------- generation


@dataclass
class Generation:
    """One generation: the prompt, the new text, and per new token its label and probability."""

    prompt: str
    completion: str
    new_ids: list[int]
    labels: list[str]
    probs: list[float]  # probability of each chosen token under softmax(logits) (temperature 1)

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def _check_generation(model: DeepSeekV3, prompt: str, max_new_tokens: int, temperature: float,
                      top_k: int | None) -> None:
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("the prompt is empty: type at least one character")
    n_prompt = len(prompt.encode("utf-8"))
    limit = model.config.max_position_embeddings
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: use a whole number of at least 1")
    if n_prompt + max_new_tokens > limit:
        raise ValueError(f"the prompt has {n_prompt} tokens (bytes); with max_new_tokens={max_new_tokens} that is "
                         f"more than max_position_embeddings={limit}: shorten the prompt or generate fewer tokens")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 5:
        raise ValueError(f"temperature={temperature!r}: use 0 (greedy) to 5")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r}: use a whole number of at least 1, or None for no cut")


@torch.no_grad()
def generation_view(model: DeepSeekV3, prompt: str, max_new_tokens: int = 60, temperature: float = 0.0,
                    top_k: int | None = None, seed: int = 0) -> Generation:
    """Generate from ``prompt`` (greedy at temperature 0, else sampled with ``torch.Generator().manual_seed(seed)``)
    and score each new token: its probability under the model's softmax at that position."""
    _check_generation(model, prompt, max_new_tokens, temperature, top_k)
    tok = ByteTokenizer()
    ids = torch.tensor([tok.encode(prompt)])  # (1, T)
    generator = torch.Generator().manual_seed(seed)
    out = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    new = out[0, ids.shape[1]:]  # (n,)
    with eval_mode(model):
        logits = model(out[:, :-1], mtp=False).logits[0, ids.shape[1] - 1:]  # (n, V): position t predicts t+1
    probs = logits.float().softmax(-1).gather(-1, new[:, None])[:, 0]  # (n,)
    return Generation(prompt, tok.decode(new), new.tolist(), tok.decode_tokens(new),
                      [float(p) for p in probs])


def plot_generation(gen: Generation, max_bars: int = 80) -> Figure:
    """One bar per new token (its label below): the probability the model gave it. Low bars are where
    sampling (or the model) was unsure."""
    n = min(len(gen.probs), max_bars)
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.16 * n), 2.6))
    colors = ["tab:blue" if p >= 0.5 else "tab:orange" for p in gen.probs[:n]]
    ax.bar(range(n), gen.probs[:n], color=colors, width=0.8)
    ax.set_xticks(range(n), [visible_token(t) for t in gen.labels[:n]], fontsize=7, family="monospace")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("p(chosen token)")
    ax.set_xlabel("generated token")
    more = f" (first {n} of {len(gen.probs)})" if len(gen.probs) > n else ""
    ax.set_title(f"probability of each generated token{more}; orange: below 0.5", fontsize=9)
    fig.tight_layout()
    return fig


def generation_html(gen: Generation) -> str:
    """The prompt in grey and the new text in bold, newlines kept; for sums, how many are right."""
    body = (f"<span style='color:#777'>{escape(gen.prompt)}</span>"
            f"<b>{escape(gen.completion)}</b>")
    mean_p = sum(gen.probs) / len(gen.probs) if gen.probs else 0.0
    info = f"{len(gen.new_ids)} new tokens, mean p(chosen) {mean_p:.3f}"
    right, total = score_sums(gen.text)
    if total:
        info += f"; complete sums a+b=c in the text: {right} of {total} right"
    return f"<pre style='line-height:1.25'>{body}</pre><p>{info}</p>"


def generation_explorer(model: DeepSeekV3, domain: str = "code", max_new_tokens: int = 60,
                        temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> W.VBox:
    """Pick a domain (it fills in a prompt of that domain) or type a prompt; set max_new_tokens, temperature
    (0 is greedy) and top_k (0: no cut). Every change regenerates with the same seed and redraws."""
    if domain not in DOMAIN_PROMPTS:
        raise ValueError(f"domain={domain!r}: use one of {', '.join(DOMAIN_PROMPTS)}")
    style = {"description_width": "110px"}
    controls = {
        "domain": W.Dropdown(options=list(DOMAIN_PROMPTS), value=domain, description="domain", style=style),
        "prompt": W.Textarea(value=DOMAIN_PROMPTS[domain], description="prompt", style=style,
                             layout=W.Layout(width="520px", height="80px"), continuous_update=False),
        "max_new_tokens": W.IntSlider(value=max_new_tokens, min=1, max=MAX_NEW_TOKENS, description="max_new_tokens",
                                      style=style),
        "temperature": W.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.1, description="temperature",
                                     style=style),
        "top_k": W.IntSlider(value=top_k, min=0, max=model.config.vocab_size, description="top_k (0: off)",
                             style=style),
    }

    def render(domain: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int) -> tuple[bytes, str]:
        temperature = round(temperature, 3)
        gen = generation_view(model, prompt, max_new_tokens, temperature, top_k or None, seed)
        mode = (f"greedy (temperature 0: top_k {top_k or 'off'} acts only when sampling)" if temperature == 0
                else f"sampled, temperature {temperature:.1f}, top_k {top_k or 'off'}, seed {seed}")
        return fig_to_png(plot_generation(gen)), f"<b>{mode}</b>" + generation_html(gen)

    def set_domain(change) -> None:
        controls["prompt"].value = DOMAIN_PROMPTS[change["new"]]  # one redraw follows, with the new prompt

    return explorer(controls, render, rows=[["domain", "prompt"], ["max_new_tokens", "temperature", "top_k"]],
                    layout="html_first", before={"domain": set_domain},
                    requested=dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k))


# ----------------------------------------------------------------------------------- expert loads


def relative_loads(counts: torch.Tensor) -> torch.Tensor:
    """Tokens per expert (..., E) -> load / fair share (mean over experts): 1 is balanced."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    return counts / counts.mean(dim=-1, keepdim=True)


def plot_domain_loads(tracker, domains: tuple[str, ...] = DOMAINS, vmax: float = 3.0) -> Figure:
    """One heatmap per MoE layer (the MTP module's included): rows domains, columns experts, colour the
    relative load (white: fair share, red: above, blue: below), as in [V3] Figure 9."""
    names = list(tracker.names)
    domains = [d for d in domains if d in tracker.domain_loads]
    if not domains:
        raise ValueError("the tracker has no per-domain loads: call tracker.update(domains) with domain names")
    L, E = tracker.loads.shape
    fig, axes = plt.subplots(1, L, figsize=(1.2 + 0.42 * E * L, 2.6), squeeze=False)
    image = None
    for layer in range(L):
        ax = axes[0, layer]
        rel = relative_loads(torch.stack([tracker.domain_loads[d][layer] for d in domains]))  # (domains, E)
        image = ax.imshow(rel.numpy(), cmap="RdBu_r", norm=TwoSlopeNorm(vmin=0, vcenter=1, vmax=vmax))
        for i in range(rel.shape[0]):
            for j in range(E):
                ax.text(j, i, f"{rel[i, j]:.1f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(E), [str(j) for j in range(E)], fontsize=7)
        ax.set_yticks(range(len(domains)), domains if layer == 0 else [""] * len(domains), fontsize=8)
        ax.set_xlabel("expert", fontsize=8)
        ax.set_title(names[layer].replace("model.layers.", "layer ").replace(".mlp", ""), fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9, label="load / fair share")
    return fig


# ---------------------------------------------------------------------------------------- history


def load_history(path: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a ``history.json`` (a list, or a dict holding one under "history")."""
    data = json.loads(Path(path).read_text())
    records = data.get("history") if isinstance(data, dict) else data
    if not isinstance(records, list) or not records or "step" not in records[0]:
        raise ValueError(f"{path} does not hold training records (dicts with 'step', 'main_loss', ...)")
    return records


def plot_history(history: list[dict[str, Any]], window: int = 25) -> Figure:
    """Four panels: main loss, MTP loss, MaxVio and learning rate per step (thin: each step; thick: moving
    average over ``window``); dots: the validation evaluations."""
    steps = [r["step"] for r in history]
    evals = [r for r in history if "val_main_loss" in r]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    panels = (
        (axes[0], "main_loss", "val_main_loss", "main loss (nats)", "tab:blue"),
        (axes[1], "mtp_loss", "val_mtp_loss", "MTP depth-1 loss (nats)", "tab:green"),
        (axes[2], "maxvio_batch", "maxvio_global", "MaxVio (unitless, log scale)", "tab:red"),
    )
    for ax, key, val_key, title, color in panels:
        pairs = [(s, r[key]) for s, r in zip(steps, history) if r.get(key) is not None]
        if pairs:
            xs, ys = zip(*pairs)
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, moving_average(list(ys), window), color=color, label=f"train (avg of {window})")
        pts = [(r["step"], r[val_key]) for r in evals if r.get(val_key) is not None]
        if pts:
            ax.plot(*zip(*pts), "o", color="black", markersize=4, label="validation")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(title)
        ax.legend(fontsize=7)
    axes[2].set_yscale("log")
    axes[3].plot(steps, [r["lr"] for r in history], color="0.3")
    axes[3].set_title("learning rate (warmup, cosine)", fontsize=10)
    axes[3].set_xlabel("training step")
    axes[3].set_ylabel("AdamW learning rate")
    fig.tight_layout()
    return fig
