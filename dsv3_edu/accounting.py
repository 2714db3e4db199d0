"""Counting what the model stores: KV-cache bytes and parameters, from the config alone.

Cache formulas per token and layer ([V2] Table 1), for DeepSeek-V3's head sizes
(keys d_h + d_h^R wide, values d_h wide, n_h heads):

| attention | values cached per token and layer          |
|-----------|--------------------------------------------|
| mha       | n_h (d_h + d_h^R) + n_h d_h   (every head) |
| gqa       | n_g (d_h + d_h^R) + n_g d_h   (n_g groups) |
| mqa       | (d_h + d_h^R) + d_h           (one head)   |
| mla       | d_c + d_h^R  (the latent and the rope key) |

The paper's Table 1 writes MHA as 2 n_h d_h l, with one d_h for keys and values;
here the keys keep their real width so that "mha" is exactly the expanded K/V
cache an MLA model would need without its latent (40,960 values per layer).

:func:`deployment` answers "what fits" (lesson 10): the weights on n GPUs, and how many tokens of KV cache
the rest holds. Memory sizes of GPUs are taken as GiB (an "80 GB" H100 has 80 GiB of HBM). ``usable`` is
the fraction a server may fill (vLLM's ``gpu_memory_utilization`` defaults to 0.9); activations, CUDA
graphs and communication buffers also live in it, so the cache numbers are upper bounds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .config import ModelConfig
from .fp8 import weight_bytes

ATTENTION_KINDS = ("mha", "gqa", "mqa", "mla")


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of a torch dtype (bf16: 2, fp32: 4, fp8: 1)."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.bfloat16, not {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


def kv_cache_values_per_layer(config: ModelConfig, attention: str, n_groups: int | None = None) -> int:
    """Values one token adds to one layer's cache (see the module table)."""
    k_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
    v_dim = config.v_head_dim
    if attention == "mha":
        return config.num_attention_heads * (k_dim + v_dim)
    if attention == "gqa":
        if n_groups is None:
            raise ValueError('attention="gqa" needs n_groups, the number of key/value heads (e.g. n_groups=8)')
        if not isinstance(n_groups, int) or not 1 <= n_groups <= config.num_attention_heads:
            raise ValueError(f"n_groups={n_groups!r}: use a whole number from 1 to num_attention_heads")
        if config.num_attention_heads % n_groups:
            raise ValueError(
                f"n_groups={n_groups} does not divide num_attention_heads={config.num_attention_heads}: "
                "each key/value head must serve the same number of query heads"
            )
        return n_groups * (k_dim + v_dim)
    if attention == "mqa":
        return k_dim + v_dim
    if attention == "mla":
        return config.kv_lora_rank + config.qk_rope_head_dim
    raise ValueError(f"attention={attention!r}: use one of {ATTENTION_KINDS}")


def kv_cache_bytes_per_token(
    config: ModelConfig, attention: str, dtype: torch.dtype = torch.bfloat16, n_groups: int | None = None
) -> int:
    """Bytes one token adds to the KV cache over all ``num_hidden_layers`` layers.

    >>> kv_cache_bytes_per_token(ModelConfig.deepseek_v3(), "mla")  # 576 values x 61 layers x 2 bytes
    70272
    """
    if attention != "gqa" and n_groups is not None:
        raise ValueError(f"n_groups only applies to attention='gqa', not {attention!r}")
    return kv_cache_values_per_layer(config, attention, n_groups) * config.num_hidden_layers * dtype_bytes(dtype)


# ---------------------------------------------------------------------------
# A generic cache formula, for any model with per-head K and V (lesson 01)
# ---------------------------------------------------------------------------


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    k_dim: int,
    v_dim: int,
    dtype: torch.dtype = torch.bfloat16,
    tokens: int = 1,
    batch: int = 1,
) -> int:
    """Bytes of a K/V cache: batch x tokens x layers x kv heads x (k_dim + v_dim) x bytes per value.

    MHA uses ``n_kv_heads = n_heads``, GQA the number of groups, MQA 1 ([V2] Table 1).

    >>> kv_cache_bytes(n_layers=32, n_kv_heads=8, k_dim=128, v_dim=128, tokens=4096)  # a GQA 8B model
    536870912
    """
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("k_dim", k_dim), ("v_dim", v_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"kv_cache_bytes: {name}={value!r} must be a positive integer")
    for name, value in (("tokens", tokens), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"kv_cache_bytes: {name}={value!r} must be a non-negative integer")
    return batch * tokens * n_layers * n_kv_heads * (k_dim + v_dim) * dtype_bytes(dtype)


# ---------------------------------------------------------------------------
# Parameter counts from the config alone (lessons 00 and 10)
# ---------------------------------------------------------------------------

# The parts that add up to the main model's total, in the order of a forward pass.
PARAMETER_COMPONENTS = ("embedding", "attention", "norms", "dense_ffn", "moe_gate", "moe_shared", "moe_routed", "head")


def mla_parameters(config: ModelConfig) -> int:
    """Weights of one MLA block: q_a_proj, q_a_layernorm, q_b_proj (or q_proj), kv_a_proj_with_mqa,
    kv_a_layernorm, kv_b_proj, o_proj ([V2] eqs 9-19; no biases)."""
    d, n_h = config.hidden_size, config.num_attention_heads
    d_c, d_r = config.kv_lora_rank, config.qk_rope_head_dim
    if config.q_lora_rank is None:
        query = d * n_h * config.qk_head_dim  # q_proj
    else:
        query = d * config.q_lora_rank + config.q_lora_rank + config.q_lora_rank * n_h * config.qk_head_dim
    kv = d * (d_c + d_r) + d_c + d_c * n_h * (config.qk_nope_head_dim + config.v_head_dim)
    return query + kv + n_h * config.v_head_dim * d  # + o_proj


def swiglu_parameters(hidden_size: int, intermediate_size: int) -> int:
    """gate_proj, up_proj and down_proj of one SwiGLU FFN (a dense FFN or one expert)."""
    return 3 * hidden_size * intermediate_size


def moe_parameters(config: ModelConfig) -> dict[str, int]:
    """One DeepSeekMoE layer: ``routed`` (all N_r experts), ``routed_active`` (the K_r a token uses),
    ``shared`` (N_s experts), ``gate`` (the router matrix, N_r x d). The balancing bias
    ``e_score_correction_bias`` is a buffer, not a parameter: ``gate_bias`` counts it apart."""
    expert = swiglu_parameters(config.hidden_size, config.moe_intermediate_size)
    return {
        "routed": config.n_routed_experts * expert,
        "routed_active": config.num_experts_per_tok * expert,
        "shared": config.n_shared_experts * expert,
        "gate": config.n_routed_experts * config.hidden_size,
        "gate_bias": config.n_routed_experts,
    }


def decoder_layer_parameters(config: ModelConfig, layer_idx: int, active: bool = False) -> int:
    """One decoder layer: two RMSNorms, MLA, and a dense FFN or an MoE (only the active experts if ``active``)."""
    n = 2 * config.hidden_size + mla_parameters(config)
    if not config.is_moe_layer(layer_idx):
        return n + swiglu_parameters(config.hidden_size, config.intermediate_size)
    moe = moe_parameters(config)
    return n + moe["gate"] + moe["shared"] + (moe["routed_active"] if active else moe["routed"])


def mtp_parameters(config: ModelConfig, active: bool = False) -> int:
    """The unique weights of the D MTP modules ([V3] 2.2): per depth enorm, hnorm, eh_proj (d x 2d),
    one decoder layer and shared_head.norm. The embedding and output head are shared with the main model."""
    d = config.hidden_size
    return sum(
        2 * d + 2 * d * d + decoder_layer_parameters(config, config.num_hidden_layers + k, active) + d
        for k in range(config.num_nextn_predict_layers)
    )


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameter counts from the config alone (no weights are built).

    Keys: the ``PARAMETER_COMPONENTS`` of the main model (summing to ``total``), ``moe_routed_active``
    (the routed experts one token uses), ``total`` and ``active`` (per token, counting embedding and
    head, as [V3] does), ``mtp`` and ``mtp_active`` (MTP modules' unique weights), ``total_with_mtp``,
    per-layer sizes (``attention_per_layer``, ``dense_ffn_per_layer``, ``moe_per_layer``,
    ``moe_active_per_layer``, ``expert``) and ``moe_gate_bias`` (buffers, in no total).

    For the released config: total 671,026,404,352; active 37,552,282,624; mtp 11,610,067,968.
    """
    d, n_layers = config.hidden_size, config.num_hidden_layers
    n_dense = min(config.first_k_dense_replace, n_layers)
    n_moe = n_layers - n_dense
    moe = moe_parameters(config)
    out = {
        "embedding": config.vocab_size * d,
        "attention": n_layers * mla_parameters(config),
        "norms": n_layers * 2 * d + d,  # two per layer + the final norm
        "dense_ffn": n_dense * swiglu_parameters(d, config.intermediate_size),
        "moe_gate": n_moe * moe["gate"],
        "moe_shared": n_moe * moe["shared"],
        "moe_routed": n_moe * moe["routed"],
        "head": config.vocab_size * d,
    }
    out["moe_routed_active"] = n_moe * moe["routed_active"]
    out["total"] = sum(out[name] for name in PARAMETER_COMPONENTS)
    out["active"] = out["total"] - out["moe_routed"] + out["moe_routed_active"]
    out["mtp"] = mtp_parameters(config)
    out["mtp_active"] = mtp_parameters(config, active=True)
    out["total_with_mtp"] = out["total"] + out["mtp"]
    out["attention_per_layer"] = mla_parameters(config)
    out["dense_ffn_per_layer"] = swiglu_parameters(d, config.intermediate_size)
    out["moe_per_layer"] = moe["gate"] + moe["shared"] + moe["routed"]
    out["moe_active_per_layer"] = moe["gate"] + moe["shared"] + moe["routed_active"]
    out["expert"] = swiglu_parameters(d, config.moe_intermediate_size)
    out["moe_gate_bias"] = n_moe * moe["gate_bias"]
    return out


# ------------------------------------------------------------------------------------ deployment

GIB = 2**30
CACHE_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn, "fp32": torch.float32}
USABLE = 0.9  # vLLM's default gpu_memory_utilization
DEPLOYMENT_LIMITS = {"batch": (1, 65536), "n_gpus": (1, 1024)}


@dataclass
class Deployment:
    """What fits on ``n_gpus`` GPUs of ``gpu_gib`` GIB: weights, then the KV cache in what is left."""

    context: int
    batch: int
    cache_dtype: str
    gpu_gib: float
    n_gpus: int
    weights: str
    usable: float
    weight_bytes: int  # the main model, plus the MTP module when ``mtp`` (speculative decoding keeps it)
    capacity_bytes: int  # n_gpus x (gpu_gib x usable - headroom): what weights and KV cache may fill
    gpus_for_weights: int  # the fewest GPUs whose usable memory holds the weights alone
    cache_budget: int  # capacity - weights (negative: the weights do not fit)
    mla_per_token: int  # bytes per token over all layers, (d_c + d_h^R) values per layer
    expanded_per_token: int  # bytes per token of per-head K (d_h + d_h^R) and V (d_h), all heads and layers
    max_position_embeddings: int
    mtp: bool = False  # the MTP module is served too: its weights, and its attention layer's cache
    headroom_bytes: int = 0  # per GPU, kept free for activations and buffers (not for weights or cache)

    @property
    def mla_cache(self) -> int:
        return self.mla_per_token * self.context * self.batch

    @property
    def expanded_cache(self) -> int:
        return self.expanded_per_token * self.context * self.batch

    def max_tokens(self, kind: str) -> int:
        """Cached tokens (batch x context, summed over sequences) that fit in the cache budget."""
        per = self.mla_per_token if kind == "mla" else self.expanded_per_token
        return max(self.cache_budget, 0) // per

    def max_batch(self, kind: str) -> int:
        return self.max_tokens(kind) // self.context

    def max_context(self, kind: str) -> int:
        return self.max_tokens(kind) // self.batch

    def fits(self, kind: str) -> bool:
        return self.cache_budget >= (self.mla_cache if kind == "mla" else self.expanded_cache)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(mla_cache=self.mla_cache, expanded_cache=self.expanded_cache)
        return out


def deployment(
    context: int = 131072, batch: int = 16, cache_dtype: str = "bf16", gpu_gib: float = 141, n_gpus: int = 8,
    weights: str = "fp8", usable: float = USABLE, config: ModelConfig | None = None, mtp: bool = False,
    headroom_gib: float = 0.0,
) -> Deployment:
    """Weights of the main model on ``n_gpus`` GPUs, and the KV cache of ``batch`` sequences of ``context``
    tokens in the rest, for MLA and for the expanded per-head K/V. Raises ValueError on bad values.

    ``mtp``: also serve the MTP module(s) for speculative decoding: their weights, and one more attention
    layer per module in the KV cache (the module caches its own latent). ``headroom_gib``: GiB per GPU
    kept free for activations, communication buffers and the like, taken out of the usable memory.
    """
    config = config or ModelConfig.deepseek_v3()
    limit = config.max_position_embeddings
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= limit:
        raise ValueError(f"context={context!r}: use a whole number of tokens from 1 to max_position_embeddings="
                         f"{limit:,} (YaRN stretches the 4K-trained RoPE by 40x)")
    for name, value in (("batch", batch), ("n_gpus", n_gpus)):
        lo, hi = DEPLOYMENT_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{name}={value!r} is out of range: use a whole number from {lo:,} to {hi:,}")
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype={cache_dtype!r}: choose one of {', '.join(CACHE_DTYPES)}")
    if isinstance(gpu_gib, bool) or not isinstance(gpu_gib, (int, float)) or not gpu_gib > 0:
        raise ValueError(f"gpu_gib={gpu_gib!r}: use the memory of one GPU in GiB, e.g. 80")
    if not 0 < usable <= 1:
        raise ValueError(f"usable={usable!r}: the fraction of GPU memory a server may fill, in (0, 1]")
    if isinstance(headroom_gib, bool) or not isinstance(headroom_gib, (int, float)) or headroom_gib < 0:
        raise ValueError(f"headroom_gib={headroom_gib!r}: use the GiB per GPU to keep free, 0 or more")
    w = weight_bytes(config, weights, include_mtp=mtp)
    headroom = int(headroom_gib * GIB)
    per_gpu = gpu_gib * GIB * usable - headroom
    if per_gpu <= 0:
        raise ValueError(f"headroom_gib={headroom_gib} leaves nothing of a {gpu_gib} GiB GPU at {usable:.0%}")
    capacity = int(n_gpus * per_gpu)
    dtype = CACHE_DTYPES[cache_dtype]
    L = config.num_hidden_layers
    cached_layers = L + (config.num_nextn_predict_layers if mtp else 0)

    def per_token(kind: str) -> int:
        return kv_cache_bytes_per_token(config, kind, dtype) // L * cached_layers

    return Deployment(
        context=context, batch=batch, cache_dtype=cache_dtype, gpu_gib=gpu_gib, n_gpus=n_gpus, weights=weights,
        usable=usable, weight_bytes=w, capacity_bytes=capacity, gpus_for_weights=math.ceil(w / per_gpu),
        cache_budget=capacity - w, mla_per_token=per_token("mla"), expanded_per_token=per_token("mha"),
        max_position_embeddings=limit, mtp=mtp, headroom_bytes=headroom,
    )
