"""Lesson 08 helpers and widget: speculative decoding with the MTP module, token by token.

``speculative_generate(model, ids, n, trace=True)`` records, per verification step, the MTP draft and
whether the main model agreed ([V3] 5.4.3). This module turns that record into

- :func:`speculative_segments`: the new tokens in order, each tagged "main" (the main model's own
  argmax), "accepted" (an MTP draft the main model confirmed) or "rejected" (a draft it overruled:
  not part of the output, shown only to see where drafting failed);
- :func:`speculative_html`: the same as coloured HTML (black main, green accepted, red struck-out rejected);
- :func:`plot_tokens_vs_forwards`: new tokens after each main-model forward, greedy (one per forward)
  against speculative (two when the draft is accepted);

The measurements (``acceptance_runs``, ``pool``, ``teacher_forced_agreement``) are in :mod:`dsv3_edu.evaluation`.

``speculative_explorer(model)`` returns a VBox with ``.controls`` ("prompt", "text", "new_tokens"),
``.html`` (the coloured generation and its statistics) and ``.image`` (the tokens-per-forward staircase);
tests drive it by setting ``.value``. Tokens are the bytes of dsv3_edu's ByteTokenizer.
"""

from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from ..data import DOMAINS, ByteTokenizer, documents, load_corpus
from ..generate import SpeculativeStats, generate, speculative_generate
from ..model import DeepSeekV3
from ..viz import escape, fig_to_png, html_table
from . import explorer

KIND_COLORS = {"prompt": "#6e7781", "main": "#000000", "accepted": "#1a7f37", "rejected": "#cf222e"}
CUSTOM = "custom"
MAX_NEW_TOKENS = 256


def validation_prompts(prompt_bytes: int = 32) -> dict[str, str]:
    """domain -> the first ``prompt_bytes`` bytes of its first held-out document (the benchmark's prompts)."""
    corpus = load_corpus("validation")
    return {domain: documents(corpus[domain])[0].encode("utf-8")[:prompt_bytes].decode("utf-8", "ignore")
            for domain in DOMAINS}


def prompt_ids(text: str) -> torch.Tensor:
    """<bos> + the bytes of ``text``, as a (1, T) tensor."""
    return torch.tensor([ByteTokenizer().encode(text, add_bos=True)])


# ----------------------------------------------------------------------------------- segments


def speculative_segments(stats: SpeculativeStats, new_tokens: list[int]) -> list[tuple[str, int]]:
    """(kind, token) for every new token in order, with each rejected draft just before the token that replaced it.

    ``stats`` must come from ``speculative_generate(..., trace=True)``; ``new_tokens`` are the generated ids.
    """
    if stats.new_tokens and not stats.trace and stats.new_tokens > 1:
        raise ValueError("no trace: call speculative_generate(..., trace=True)")
    segs: list[tuple[str, int]] = []
    if new_tokens:
        segs.append(("main", new_tokens[0]))  # the prefill forward's token
    for step in stats.trace:
        if step["accepted"]:
            segs += [("accepted", step["draft"]), ("main", step["added"][1])]
        else:
            segs += [("rejected", step["draft"]), ("main", step["added"][0])]
    out, kept = [], 0
    for kind, tok in segs:
        if kept == len(new_tokens):
            break  # the last step may add one token more than asked for: speculative_generate drops it
        out.append((kind, tok))
        kept += kind != "rejected"
    if [t for k, t in out if k != "rejected"] != list(new_tokens):
        raise ValueError("the trace does not match the generated tokens")
    return out


def _label(tok: int) -> str:
    """A byte token as display text: itself if printable ASCII, else its tokenizer label."""
    if 32 <= tok < 127 or tok == 10:
        return chr(tok)
    return ByteTokenizer().decode_tokens([tok])[0]


def speculative_html(prompt: list[int], segments: list[tuple[str, int]]) -> str:
    """Monospace HTML: the prompt in grey, main tokens black, accepted drafts green, rejected drafts red, struck out."""
    style = {
        "prompt": f"color:{KIND_COLORS['prompt']}",
        "main": f"color:{KIND_COLORS['main']}",
        "accepted": f"color:{KIND_COLORS['accepted']};font-weight:bold",
        "rejected": f"color:{KIND_COLORS['rejected']};text-decoration:line-through;font-size:80%",
    }
    parts = []
    for kind, tok in [("prompt", t) for t in prompt if t < 256] + list(segments):
        text = _label(tok)
        shown = "↵<br>" if text == "\n" else escape(text).replace(" ", "&nbsp;")
        parts.append(f"<span style='{style[kind]}'>{shown}</span>")
    return ("<div style='font-family:monospace;font-size:13px;line-height:1.5;white-space:normal'>"
            + "".join(parts) + "</div>")


def legend_html() -> str:
    return ("<span style='font-size:12px'>"
            f"<span style='color:{KIND_COLORS['prompt']}'>prompt</span> · main model's own token · "
            f"<b style='color:{KIND_COLORS['accepted']}'>accepted draft</b> · "
            f"<s style='color:{KIND_COLORS['rejected']}'>rejected draft</s> (not in the output)</span>")


def segments_summary(segments: list[tuple[str, int]]) -> dict[str, int]:
    return {kind: sum(k == kind for k, _ in segments) for kind in ("main", "accepted", "rejected")}


# ----------------------------------------------------------------------------------- plots


def forward_staircase(stats: SpeculativeStats) -> list[int]:
    """Total new tokens after each main forward: [1, 1 + added_1, ...] (the prefill gives 1), capped at new_tokens."""
    total, out = 1, [1]
    for step in stats.trace:
        total += len(step["added"])
        out.append(min(total, stats.new_tokens))
    return out[: stats.main_forwards]


def plot_tokens_vs_forwards(stats: SpeculativeStats, title: str = "", ax=None) -> Figure:
    """New tokens after each main-model forward: greedy makes one per forward; speculative two per accepted draft."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
    steps = forward_staircase(stats)
    xs = list(range(1, len(steps) + 1))
    ax.plot(xs, [min(x, stats.new_tokens) for x in xs], color="0.5", linestyle="--",
            label="greedy: 1 token per forward")
    ax.step(xs, steps, where="post", color="tab:blue", label="speculative")
    acc = [(x, y) for x, y, s in zip(xs[1:], steps[1:], stats.trace) if s["accepted"]]
    rej = [(x, y) for x, y, s in zip(xs[1:], steps[1:], stats.trace) if not s["accepted"]]
    if acc:
        ax.plot(*zip(*acc), "o", color=KIND_COLORS["accepted"], markersize=3.5, label="draft accepted (+2)")
    if rej:
        ax.plot(*zip(*rej), "x", color=KIND_COLORS["rejected"], markersize=4, label="draft rejected (+1)")
    ax.set_xlabel("main-model forwards (prefill = 1)")
    ax.set_ylabel("new tokens")
    ax.set_title(title or f"{stats.new_tokens} tokens in {stats.main_forwards} forwards "
                 f"(acceptance {stats.acceptance_rate:.0%})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else ax.figure


# ------------------------------------------------------------------------------------- widget


def _check_request(model: DeepSeekV3, text: str, new_tokens: int) -> None:
    if len(model.mtp) == 0:
        raise ValueError("this model has no MTP module (num_nextn_predict_layers=0): nothing can draft")
    if not text:
        raise ValueError("the prompt is empty: type a few characters")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or not 1 <= new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"new_tokens={new_tokens!r}: pick 1 to {MAX_NEW_TOKENS}")
    n = len(ByteTokenizer().encode(text)) + 1
    limit = model.config.max_position_embeddings
    if n + new_tokens > limit:
        raise ValueError(f"the prompt ({n} tokens) + {new_tokens} new tokens exceeds max_position_embeddings={limit}")


def speculative_view(model: DeepSeekV3, text: str, new_tokens: int, name: str = "") -> tuple[str, Figure,
                                                                                             SpeculativeStats]:
    """Generate greedily with MTP drafts from ``text``; return (coloured HTML with statistics, staircase figure, stats).
    ``name`` (e.g. the domain) starts the figure's title."""
    _check_request(model, text, new_tokens)
    ids = prompt_ids(text)
    out, stats = speculative_generate(model, ids, new_tokens, trace=True)
    new = out[0, ids.shape[1]:].tolist()
    segs = speculative_segments(stats, new)
    same = torch.equal(out, generate(model, ids, new_tokens))
    body = html_table(
        ["new tokens", "main forwards", "drafts", "accepted", "acceptance", "tokens per forward", "1 + acceptance",
         "same as greedy"],
        [[stats.new_tokens, stats.main_forwards, stats.drafts_proposed, stats.drafts_accepted,
          f"{stats.acceptance_rate:.3f}", f"{stats.tokens_per_forward:.3f}", f"{1 + stats.acceptance_rate:.3f}",
          "yes" if same else "NO"]],
    )
    html = speculative_html(ids[0].tolist(), segs) + legend_html() + body
    title = (f"{name + ': ' if name else ''}{stats.new_tokens} tokens in {stats.main_forwards} forwards "
             f"(acceptance {stats.acceptance_rate:.0%})")
    return html, plot_tokens_vs_forwards(stats, title), stats


def speculative_explorer(model: DeepSeekV3, texts: dict[str, str] | None = None, prompt: str | None = None,
                         new_tokens: int = 48) -> W.VBox:
    """Pick a held-out prompt (or type one under "custom") and a length: see which tokens the MTP module drafted
    and the main model accepted, and how many tokens each main forward produced."""
    texts = validation_prompts() if texts is None else dict(texts)
    options = list(texts) + [CUSTOM]
    prompt = options[0] if prompt is None else prompt
    style = {"description_width": "80px"}
    controls = {
        "prompt": W.Dropdown(options=options, value=prompt, description="prompt", style=style),
        "text": W.Text(value=texts.get(prompt, next(iter(texts.values()), "")), description="text",
                       style=style, layout=W.Layout(width="420px"), continuous_update=False),
        "new_tokens": W.IntSlider(value=new_tokens, min=1, max=MAX_NEW_TOKENS, description="new tokens",
                                  style=style, layout=W.Layout(width="420px"), continuous_update=False),
    }

    def render(prompt: str, text: str, new_tokens: int) -> tuple[bytes, str]:
        html, fig, _ = speculative_view(model, text, new_tokens, prompt)
        return fig_to_png(fig), f"<b>{escape(prompt)}</b>, {new_tokens} new tokens<br>" + html

    def pick_prompt(change) -> None:  # a held-out prompt shows its text in the box
        if change["new"] != CUSTOM:
            controls["text"].value = texts[change["new"]]

    def edit_text(change) -> bool:  # typing over a held-out prompt makes it a custom one
        name = controls["prompt"].value
        if name != CUSTOM and change["new"] != texts[name]:
            controls["prompt"].value = CUSTOM
        return True

    return explorer(controls, render, rows=[["prompt", "new_tokens"], ["text"]], layout="html_first",
                    before={"prompt": pick_prompt, "text": edit_text}, requested=dict(new_tokens=new_tokens))
