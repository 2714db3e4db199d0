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
"""

from __future__ import annotations

import torch

from .config import ModelConfig

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
