"""The whole of DeepSeek-V3 as a skeleton: every block is a placeholder that names the lesson
that builds it (lesson 00).

``DeepSeekV3Skeleton(config)`` has the real model's structure and module names
(``embed_tokens``, ``layers.{i}.self_attn``, ``layers.{i}.mlp``, ``norm``, ``lm_head``, the MTP
modules) but no weights: each ``Placeholder`` only records its parameter count, computed from
the config by ``dsv3_edu.accounting``. So the 671B model "exists" in a few kilobytes, and
``.tree()`` prints it compactly (the 58 identical MoE layers on one line).
Calling a placeholder raises NotImplementedError with the lesson to go to.
"""

from __future__ import annotations

from torch import nn

from .accounting import count_parameters, mla_parameters, moe_parameters, swiglu_parameters
from .config import ModelConfig
from .viz import format_count


class Placeholder(nn.Module):
    """A block not built yet: what it is, where it is built, and how many parameters it will hold."""

    def __init__(self, what: str, lesson: str, n_params: int, n_active: int | None = None):
        super().__init__()
        self.what = what
        self.lesson = lesson
        self.n_params = n_params
        self.n_active = n_params if n_active is None else n_active  # used by one token

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{self.what} is a placeholder here: it is built in lesson {self.lesson}")

    def extra_repr(self) -> str:
        return f"{self.what}; {format_count(self.n_params)} params; {self.lesson}"


def _norm(d: int) -> Placeholder:
    return Placeholder(f"RMSNorm({d})", "03", d)


def _mla(config: ModelConfig) -> Placeholder:
    q = "" if config.q_lora_rank is None else f", d_c'={config.q_lora_rank}"
    what = f"MLA, {config.num_attention_heads} heads, d_c={config.kv_lora_rank}{q}, rope {config.qk_rope_head_dim}"
    return Placeholder(what, "03 (RoPE 02, decoding 04)", mla_parameters(config))


def _ffn(config: ModelConfig, layer_idx: int) -> Placeholder:
    d = config.hidden_size
    if not config.is_moe_layer(layer_idx):
        return Placeholder(f"SwiGLU FFN, {config.intermediate_size} wide", "05",
                           swiglu_parameters(d, config.intermediate_size))
    moe = moe_parameters(config)
    what = (
        f"MoE, {config.n_routed_experts} routed (top-{config.num_experts_per_tok}) + "
        f"{config.n_shared_experts} shared, {config.moe_intermediate_size} wide"
    )
    fixed = moe["gate"] + moe["shared"]
    return Placeholder(what, "05 (bias 06)", fixed + moe["routed"], fixed + moe["routed_active"])


class DecoderLayerSkeleton(nn.Module):
    """input_layernorm -> self_attn (MLA) -> post_attention_layernorm -> mlp (dense FFN or MoE), with residuals."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.is_moe = config.is_moe_layer(layer_idx)
        self.input_layernorm = _norm(config.hidden_size)
        self.self_attn = _mla(config)
        self.post_attention_layernorm = _norm(config.hidden_size)
        self.mlp = _ffn(config, layer_idx)

    @property
    def kind(self) -> str:
        return "MoE decoder layer" if self.is_moe else "dense decoder layer"


class MTPSkeleton(nn.Module):
    """One MTP depth ([V3] 2.2): [enorm(Emb(t_{i+k})); hnorm(h)] -> eh_proj -> decoder layer -> shared_head.norm.
    The embedding and the output head are the main model's (shared, not counted here)."""

    def __init__(self, config: ModelConfig, depth: int):
        super().__init__()
        d = config.hidden_size
        self.enorm = _norm(d)
        self.hnorm = _norm(d)
        self.eh_proj = Placeholder(f"Linear({2 * d}->{d})", "07", 2 * d * d)
        self.layer = DecoderLayerSkeleton(config, config.num_hidden_layers + depth - 1)
        self.shared_head_norm = _norm(d)  # checkpoint name: shared_head.norm


class DeepSeekV3Skeleton(nn.Module):
    """DeepSeek-V3's module tree with placeholders: no weights, exact parameter counts."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig.deepseek_v3()
        d, v = config.hidden_size, config.vocab_size
        # A token reads one row of the embedding, but [V3]'s "37B activated" counts all of it: so do we.
        self.embed_tokens = Placeholder(f"Embedding({v}, {d})", "09", v * d)
        self.layers = nn.ModuleList(DecoderLayerSkeleton(config, i) for i in range(config.num_hidden_layers))
        self.norm = Placeholder(f"RMSNorm({d})", "09", d)
        self.lm_head = Placeholder(f"Linear({d}->{v})", "09", d * v)
        self.mtp = nn.ModuleList(MTPSkeleton(config, k + 1) for k in range(config.num_nextn_predict_layers))

    def placeholders(self, include_mtp: bool = False):
        """(name, Placeholder) pairs of the main model (and the MTP modules if asked)."""
        for name, module in self.named_modules():
            if isinstance(module, Placeholder) and (include_mtp or not name.startswith("mtp.")):
                yield name, module

    def n_params(self, include_mtp: bool = False) -> int:
        return sum(p.n_params for _, p in self.placeholders(include_mtp))

    def n_active(self) -> int:
        """Parameters one token uses in the main model. The embedding counts in full, as in [V3]'s 37B."""
        return sum(p.n_active for _, p in self.placeholders())

    def forward(self, *args, **kwargs):
        raise NotImplementedError("the skeleton has no weights: the whole model is built in lesson 09")

    def tree(self) -> str:
        """A compact tree: runs of identical decoder layers collapse into one entry ("layers 3..60")."""
        rows: list[tuple[str, str, str, str]] = []  # (tree prefix + name, what, params, lesson)

        def leaf(prefix: str, name: str, p: Placeholder, times: int = 1) -> None:
            count = format_count(p.n_params)
            if p.n_active != p.n_params:
                count += f" (active {format_count(p.n_active)})"
            rows.append((prefix + name, p.what, count if times == 1 else f"{times} x {count}", p.lesson))

        def layer_children(prefix: str, layer: DecoderLayerSkeleton, times: int) -> None:
            children = list(layer.named_children())
            for j, (name, child) in enumerate(children):
                leaf(prefix + ("└─ " if j == len(children) - 1 else "├─ "), name, child, times)

        runs: list[tuple[int, int]] = []  # [first, last] layer indices with the same kind
        for i, layer in enumerate(self.layers):
            if runs and self.layers[runs[-1][1]].kind == layer.kind:
                runs[-1] = (runs[-1][0], i)
            else:
                runs.append((i, i))
        top = [("embed_tokens", self.embed_tokens)] + [("runs", r) for r in runs]
        top += [("norm", self.norm), ("lm_head", self.lm_head)] + [(f"mtp.{k}", m) for k, m in enumerate(self.mtp)]
        for t, (name, item) in enumerate(top):
            last = t == len(top) - 1
            branch, indent = ("└─ ", "   ") if last else ("├─ ", "│  ")
            if isinstance(item, Placeholder):
                leaf(branch, name, item)
            elif isinstance(item, MTPSkeleton):
                total = sum(p.n_params for p in item.modules() if isinstance(p, Placeholder))
                depth = int(name.split(".")[1]) + 1
                rows.append((branch + name, f"MTP depth {depth} (shares embedding, head)", format_count(total), "07"))
                for j, (child_name, child) in enumerate(item.named_children()):
                    sub = indent + ("└─ " if j == len(list(item.children())) - 1 else "├─ ")
                    if isinstance(child, DecoderLayerSkeleton):
                        n = sum(p.n_params for p in child.modules() if isinstance(p, Placeholder))
                        rows.append((sub + child_name, child.kind, format_count(n), "07"))
                    else:
                        leaf(sub, child_name.replace("shared_head_norm", "shared_head.norm"), child)
            else:
                first, final = item
                layer = self.layers[first]
                n = final - first + 1
                per_layer = sum(p.n_params for p in layer.modules() if isinstance(p, Placeholder))
                label = f"layers.{first}" if n == 1 else f"layers {first}..{final}"
                rows.append((branch + label, f"{n} x {layer.kind}", f"{n} x {format_count(per_layer)}", ""))
                layer_children(indent, layer, n)
        counts = count_parameters(self.config)
        header = ("module", "what", "parameters", "lesson")
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
        config = self.config
        title = f"DeepSeek-V3: d={config.hidden_size}, {config.num_hidden_layers} layers, vocab {config.vocab_size:,}"
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), title]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(f"main model: {counts['total']:,} parameters, {counts['active']:,} active per token")
        lines.append(f"MTP modules: {counts['mtp']:,} more (embedding and head shared)")
        return "\n".join(lines)
