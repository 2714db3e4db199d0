"""Counting what the model stores: KV-cache bytes per token (and, later, parameters).

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
