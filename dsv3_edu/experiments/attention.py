"""Why MLA and not MQA? Validation loss against KV-cache bytes per token (lessons 01 and 03).

    python -m dsv3_edu.experiments attention [--quick]

Five arms, each a tiny DeepSeekV3 (``dsv3_edu.model``) whose attention module is swapped in every layer,
trained by ``dsv3_edu.train.train`` on the course corpus with the same batches, steps, schedule and lr:

- ``mha``: multi-head attention, H key/value heads; ``gqa``: H/2 key/value heads; ``mqa``: one
  ([V2] Table 1; lesson 01's ``CausalSelfAttention`` with RoPE added). Keys and queries are d_h + d_h^R
  wide, values d_h, as the package's ``accounting.kv_cache_values_per_layer`` counts them. RoPE rotates
  the whole query and key head (as LLaMA-style models do; :class:`GroupedAttention`).
- ``mla``: the course's MLA (``dsv3_edu.mla.MLA``) with ``q_lora_rank=None``: the query is one plain
  projection W^Q in every arm (the query latent saves activations, not cache), so the arms differ only
  in how keys and values are made and cached. d_c = 4 d_h, d_h^R = d_h / 2, the ratios of DeepSeek-V3
  (512 = 4 x 128, 64 = 128 / 2), so MLA caches 1.8x what MQA caches, as in V3 (576 vs 320 values).
- ``mla_no_rope``: MLA without the decoupled RoPE part (:class:`LatentAttentionNoRoPE`): no rope query,
  no rope key, only the latent c^KV is cached (d_c values per layer). Nothing in the model rotates or
  embeds positions: order reaches it only through the causal mask ("NoPE"). Same d_c, same heads.

The feed-forward is a dense SwiGLU in every layer (no MoE, no balancing, no MTP), so attention is the only
difference. Equal model size: each arm's FFN hidden size is widened so its total parameter count matches
the MLA arm's as closely as whole FFN units (3 d parameters each) allow; ``extra.parameters`` records the
counts. Metric: main validation loss (``train.evaluate``'s ``val_main_loss``) at the end of training.
Extra per seed: the KV-cache bytes per token in bf16 over all layers (``accounting`` for the four standard
kinds; d_c x layers x 2 for ``mla_no_rope``) and the parameter count.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..accounting import dtype_bytes, kv_cache_bytes_per_token
from ..attention import KVCache, check_heads, repeat_kv
from ..config import ModelConfig
from ..layers import RMSNorm
from ..mla import LatentCache, causal_mask, expanded_attention, naive_attention
from ..model import DeepSeekV3
from ..rope import RotaryEmbedding, apply_rope
from ..train import TrainConfig
from .runner import train_run

NAME = "attention"
QUESTION = ("At equal model size and training, how do MHA, GQA, MQA, MLA and MLA without its rope key "
            "trade validation loss against KV-cache bytes per token? (Why not MQA?)")
METRIC = "validation loss (main next-token cross-entropy, nats/byte)"
HIGHER_IS_BETTER = False
ARMS: dict[str, dict] = {
    "mha": {"attention": "mha", "n_kv_heads": 4},
    "gqa": {"attention": "gqa", "n_kv_heads": 2},
    "mqa": {"attention": "mqa", "n_kv_heads": 1},
    "mla": {"attention": "mla"},
    "mla_no_rope": {"attention": "mla_no_rope"},
}

# ModelConfig.tiny overrides shared by every arm (intermediate_size is set per arm to match parameters).
MODEL = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, q_lora_rank=None, kv_lora_rank=64,
    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, intermediate_size=256, first_k_dense_replace=2,
    num_nextn_predict_layers=0, max_position_embeddings=256,
)
TRAIN = dict(steps=1000, batch_size=8, block_size=128, lr=3e-3, warmup=30, eval_every=0,
             eval_blocks_per_domain=64, balance="none", mtp_lambda=0.0)
QUICK_TRAIN = dict(steps=4, batch_size=2, block_size=32, warmup=1, eval_blocks_per_domain=1)
REFERENCE_ARM = "mla"  # the arm whose FFN width is MODEL's; the others are matched to its parameter count


# ------------------------------------------------------------------------------------ the variants


class GroupedAttention(nn.Module):
    """MHA / GQA / MQA (lesson 01's ``CausalSelfAttention``) with RoPE, in the slot of ``DecoderLayer.self_attn``.

    H = num_attention_heads query heads of width d_h + d_h^R, G = ``n_kv_heads`` key heads of the same width
    and G value heads of width d_h (query head h reads key/value head h // (H / G)). RoPE (the course's
    ``RotaryEmbedding`` and ``apply_rope``, interleaved pairs) rotates the whole query and key head.
    Caches K (B, G, S, d_h + d_h^R) and V (B, G, S, d_h) in a ``dsv3_edu.attention.KVCache``.
    """

    def __init__(self, config: ModelConfig, layer_idx: int, n_kv_heads: int) -> None:
        super().__init__()
        check_heads(config.num_attention_heads, n_kv_heads)
        self.config, self.layer_idx = config, layer_idx
        d, H = config.hidden_size, config.num_attention_heads
        self.n_heads, self.n_kv_heads = H, n_kv_heads
        self.head_dim, self.v_head_dim = config.qk_head_dim, config.v_head_dim
        self.q_proj = nn.Linear(d, H * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, n_kv_heads * self.v_head_dim, bias=False)
        self.o_proj = nn.Linear(H * self.v_head_dim, d, bias=False)
        self.rotary_emb = RotaryEmbedding(config.replace(qk_rope_head_dim=self.head_dim))  # whole head
        self.softmax_scale = self.head_dim**-0.5

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, attn_impl: str | None = None) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d); with a cache, x holds the tokens after the cached ones."""
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(f"{type(self).__name__} caches per-head K and V: pass a dsv3_edu.attention.KVCache, "
                             f"not a {type(cache).__name__}")
        B, T, _ = x.shape
        start = 0 if cache is None else cache.seq_len(self.layer_idx)
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dk)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, G, T, Dk)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.v_head_dim).transpose(1, 2)  # (B, G, T, Dv)
        cos, sin = self.rotary_emb(torch.arange(start, start + T, device=x.device))
        q = apply_rope(q, cos, sin, self.config.rope_interleave)
        k = apply_rope(k, cos, sin, self.config.rope_interleave)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, G, S, Dk), (B, G, S, Dv)
        mask = causal_mask(T, start + T, x.device) if T > 1 else None
        n_rep = self.n_heads // self.n_kv_heads
        o, _ = expanded_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), self.softmax_scale, mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))  # (B, H, T, Dv) -> (B, T, d)


class LatentAttentionNoRoPE(nn.Module):
    """MLA without the decoupled RoPE part: q^C = W^Q h, c^KV = RMSNorm(W^DKV h), k^C = W^UK c^KV, v = W^UV c^KV.

    The same equations as ``dsv3_edu.mla.MLA`` with d_h^R = 0 (it calls ``mla.naive_attention`` with
    zero-width rope parts): no position enters the scores, only the causal mask orders the tokens.
    Caches only c^KV (d_c values per token and layer) in a ``LatentCache`` whose rope keys are empty.
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        d, H, C = config.hidden_size, config.num_attention_heads, config.kv_lora_rank
        D, V = config.qk_nope_head_dim, config.v_head_dim
        self.q_proj = nn.Linear(d, H * D, bias=False)  # W^Q (no rope rows)
        self.kv_a_proj = nn.Linear(d, C, bias=False)  # W^DKV (no W^KR rows)
        self.kv_a_layernorm = RMSNorm(C, config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(C, H * (D + V), bias=False)  # rows per head [W^UK; W^UV]
        self.o_proj = nn.Linear(H * V, d, bias=False)
        self.softmax_scale = D**-0.5

    def forward(self, x: torch.Tensor, cache: LatentCache | None = None, attn_impl: str | None = None) -> torch.Tensor:
        if cache is not None and not isinstance(cache, LatentCache):
            raise ValueError(f"{type(self).__name__} caches the latent: pass a LatentCache, not {type(cache).__name__}")
        c = self.config
        B, T, _ = x.shape
        H, D, C = c.num_attention_heads, c.qk_nope_head_dim, c.kv_lora_rank
        start = 0 if cache is None else cache.seq_len(self.layer_idx)
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        c_kv = self.kv_a_layernorm(self.kv_a_proj(x))  # (B, T, C)
        k_r = c_kv.new_zeros(B, T, 0)  # no rope key
        if cache is not None:
            c_kv, k_r = cache.update(self.layer_idx, c_kv, k_r)
        w = self.kv_b_proj.weight.view(H, -1, C)  # (H, D + V, C)
        mask = causal_mask(T, start + T, x.device) if T > 1 else None
        o, _ = naive_attention(q, q.new_zeros(B, H, T, 0), c_kv, k_r, w[:, :D], w[:, D:], self.softmax_scale, mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


# ------------------------------------------------------------------------------ models and counts


def attention_module(arm: str, config: ModelConfig, layer_idx: int) -> nn.Module:
    """A fresh attention module of ``arm`` for one layer (``mla`` is the package's own MLA)."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: choose one of {', '.join(ARMS)}")
    kind = ARMS[arm]["attention"]
    if kind in ("mha", "gqa", "mqa"):
        return GroupedAttention(config, layer_idx, ARMS[arm]["n_kv_heads"])
    if kind == "mla_no_rope":
        return LatentAttentionNoRoPE(config, layer_idx)
    from ..mla import MLA

    return MLA(config, layer_idx)


def _attention_parameters(arm: str, config: ModelConfig) -> int:
    return sum(p.numel() for p in attention_module(arm, config, 0).parameters())


def arm_config(arm: str, model: dict[str, Any]) -> ModelConfig:
    """The arm's ModelConfig: the shared one with the FFN widened (or narrowed) so that the whole model has
    the reference arm's parameter count, to the nearest whole FFN unit (3 d parameters per layer)."""
    base = ModelConfig.tiny(**model)
    diff = _attention_parameters(REFERENCE_ARM, base) - _attention_parameters(arm, base)  # per layer
    extra_units = round(diff / (3 * base.hidden_size))
    return base.replace(intermediate_size=base.intermediate_size + extra_units)


def build_model(arm: str, model: dict[str, Any], seed: int) -> DeepSeekV3:
    """The arm's model, initialized from ``seed`` exactly as ``dsv3_edu.train`` initializes a DeepSeekV3."""
    config = arm_config(arm, model)
    torch.manual_seed(seed)
    net = DeepSeekV3(config)
    if arm != "mla":
        for i, layer in enumerate(net.model.layers):
            layer.self_attn = attention_module(arm, config, i)
        torch.manual_seed(seed)
        net.apply(net._init_weights)  # the same init rule (normal, std 0.02) for the swapped modules
    return net


def new_cache(arm: str, net: DeepSeekV3) -> KVCache | LatentCache:
    """An empty cache of the kind the arm's attention keeps."""
    L = net.config.num_hidden_layers
    return KVCache(L) if ARMS[arm]["attention"] in ("mha", "gqa", "mqa") else LatentCache(L)


def kv_bytes_per_token(arm: str, config: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> int:
    """KV-cache bytes per token over all layers: the package's accounting for mha/gqa/mqa/mla; d_c per layer
    for MLA without its rope key (it caches the latent only)."""
    kind = ARMS[arm]["attention"]
    if kind == "mla_no_rope":
        return config.kv_lora_rank * config.num_hidden_layers * dtype_bytes(dtype)
    groups = ARMS[arm]["n_kv_heads"] if kind == "gqa" else None
    return kv_cache_bytes_per_token(config, kind, dtype, n_groups=groups)


# -------------------------------------------------------------------------------- the interface


def settings(quick: bool) -> dict:
    train_settings = {**TRAIN, **QUICK_TRAIN} if quick else dict(TRAIN)
    return {"model": dict(MODEL), "train": train_settings, "ffn": "dense SwiGLU in every layer (no MoE)",
            "parameter_matching": f"FFN width per arm matched to the {REFERENCE_ARM} arm's total parameters",
            "kv_bytes_dtype": "bfloat16"}


def run(arm: str, seed: int, settings: dict, progress=None) -> tuple[float, dict]:
    """Train the arm's model with ``seed`` (init and batches); return (validation loss, extra)."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: choose one of {', '.join(ARMS)}")
    torch.set_num_threads(1)
    net = build_model(arm, settings["model"], seed)
    cfg = TrainConfig(**{**settings["train"], "seed": seed, "device": "cpu"})
    _, history = train_run(net.config, cfg, progress, model=net)
    final = history[-1]
    extra = {
        "kv_bytes_per_token": kv_bytes_per_token(arm, net.config),
        "parameters": sum(p.numel() for p in net.parameters()),
        "attention_parameters_per_layer": _attention_parameters(arm, net.config),
        "intermediate_size": net.config.intermediate_size,
        "final_train_loss": history[-1]["main_loss"],
        "domains": {d: round(m["loss"], 6) for d, m in final["domains"].items()},
    }
    return float(final["val_main_loss"]), extra
