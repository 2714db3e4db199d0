"""Cache bytes and parameter counts: exact numbers from the papers, a hand formula, and transformers."""

import pytest
import torch

from dsv3_edu.accounting import (
    PARAMETER_COMPONENTS,
    count_parameters,
    dtype_bytes,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    kv_cache_values_per_layer,
)
from dsv3_edu.config import ModelConfig

V3 = ModelConfig.deepseek_v3()


# ----------------------------------------------------------------------------------------- cache
def test_deepseek_v3_cache_numbers():
    assert kv_cache_values_per_layer(V3, "mla") == 576
    assert kv_cache_bytes_per_token(V3, "mla") == 70_272  # 576 x 61 layers x 2 bytes
    assert kv_cache_values_per_layer(V3, "mha") == 40_960  # 128 heads x (192 + 128)
    assert round(40_960 / 576, 1) == 71.1
    assert round(2 * 128 * 128 / 576, 1) == 56.9  # the paper's 2 n_h d_h
    assert kv_cache_values_per_layer(V3, "mqa") == 320
    assert kv_cache_bytes_per_token(V3, "gqa", torch.float32, n_groups=8) == 8 * 320 * 61 * 4


def test_kv_cache_bytes_formula():
    assert kv_cache_bytes(32, 8, 128, 128, tokens=4096) == 2 * 32 * 8 * 128 * 2 * 4096 == 2**29
    assert kv_cache_bytes(61, 128, 192, 128, torch.float32, tokens=3, batch=2) == 61 * 128 * 320 * 4 * 3 * 2
    assert kv_cache_bytes(1, 1, 1, 1, torch.float8_e4m3fn) == 2
    assert kv_cache_bytes(4, 2, 8, 8, tokens=0) == 0
    # the generic formula agrees with the config-based one
    assert kv_cache_bytes(61, 128, 192, 128, torch.bfloat16) == kv_cache_bytes_per_token(V3, "mha")
    assert kv_cache_bytes(61, 8, 192, 128) == kv_cache_bytes_per_token(V3, "gqa", n_groups=8)
    assert kv_cache_bytes(61, 1, 192, 128) == kv_cache_bytes_per_token(V3, "mqa")


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_layers=0), "n_layers"), (dict(n_kv_heads=-1), "n_kv_heads"), (dict(k_dim=2.5), "k_dim"),
    (dict(v_dim=True), "v_dim"), (dict(tokens=-1), "tokens"), (dict(batch=1.0), "batch"),
])
def test_kv_cache_bytes_errors(kwargs, match):
    args = dict(n_layers=2, n_kv_heads=2, k_dim=4, v_dim=4) | kwargs
    with pytest.raises(ValueError, match=match):
        kv_cache_bytes(**args)


def test_cache_errors():
    with pytest.raises(TypeError, match="torch.dtype"):
        dtype_bytes("bf16")
    with pytest.raises(ValueError, match="needs n_groups"):
        kv_cache_values_per_layer(V3, "gqa")
    with pytest.raises(ValueError, match="does not divide"):
        kv_cache_values_per_layer(V3, "gqa", 3)
    with pytest.raises(ValueError, match="whole number"):
        kv_cache_values_per_layer(V3, "gqa", 0)
    with pytest.raises(ValueError, match="use one of"):
        kv_cache_values_per_layer(V3, "mxa")
    with pytest.raises(ValueError, match="only applies"):
        kv_cache_bytes_per_token(V3, "mla", n_groups=2)


# ------------------------------------------------------------------------------------ parameters
def hand_count(c: ModelConfig) -> tuple[int, int, int]:
    """Independent count, written out weight by weight as in the released checkpoint."""
    d = c.hidden_size
    h = c.num_attention_heads
    qk = c.qk_nope_head_dim + c.qk_rope_head_dim
    q = d * h * qk if c.q_lora_rank is None else d * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * h * qk
    attn = (q + d * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank
            + c.kv_lora_rank * h * (c.qk_nope_head_dim + c.v_head_dim) + h * c.v_head_dim * d)
    expert = 3 * d * c.moe_intermediate_size

    def layer(i, active):
        if i < c.first_k_dense_replace:
            ffn = 3 * d * c.intermediate_size
        else:
            k = c.num_experts_per_tok if active else c.n_routed_experts
            ffn = c.n_routed_experts * d + (c.n_shared_experts + k) * expert
        return 2 * d + attn + ffn

    outer = 2 * c.vocab_size * d + d  # embedding, head, final norm
    total = outer + sum(layer(i, False) for i in range(c.num_hidden_layers))
    active = outer + sum(layer(i, True) for i in range(c.num_hidden_layers))
    mtp = sum(3 * d + 2 * d * d + layer(c.num_hidden_layers + k, False) for k in range(c.num_nextn_predict_layers))
    return total, active, mtp


def test_deepseek_v3_parameter_count_is_exact():
    n = count_parameters(V3)
    assert n["total"] == 671_026_404_352
    assert n["active"] == 37_552_282_624 and round(n["active"] / 1e9, 2) == 37.55
    assert n["mtp"] == 11_610_067_968
    assert round((n["mtp"] + n["embedding"] + n["head"]) / 1e9, 1) == 13.5  # with its own embedding and head
    assert n["total_with_mtp"] == n["total"] + n["mtp"]
    assert (n["total"], n["active"], n["mtp"]) == hand_count(V3)
    assert sum(n[k] for k in PARAMETER_COMPONENTS) == n["total"]
    assert n["attention_per_layer"] == 187_107_328
    assert n["expert"] == 3 * 7168 * 2048
    assert n["moe_routed_active"] == 58 * 8 * n["expert"]
    assert n["moe_gate_bias"] == 58 * 256  # buffers: in no total


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": None}, {"first_k_dense_replace": 0},
                                       {"n_shared_experts": 2, "num_nextn_predict_layers": 2}])
def test_tiny_counts_match_hand_formula(overrides):
    config = ModelConfig.tiny(**overrides)
    n = count_parameters(config)
    assert (n["total"], n["active"], n["mtp"]) == hand_count(config)
    assert n["active"] < n["total"]


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": None, "first_k_dense_replace": 2}])
def test_tiny_total_matches_transformers(overrides):
    transformers = pytest.importorskip("transformers")
    config = ModelConfig.tiny(**overrides)
    hf_config = transformers.DeepseekV3Config(**config.to_hf(rope_layout="transformers"))
    with torch.device("meta"):  # shapes only, no memory
        model = transformers.DeepseekV3ForCausalLM(hf_config)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(config)["total"]
    buffers = sum(b.numel() for name, b in model.named_buffers() if "e_score_correction_bias" in name)
    assert buffers == count_parameters(config)["moe_gate_bias"]
