"""FP8 block scales as the release stores them, and the bytes of the weights in each format."""

import math

import pytest
import torch

from dsv3_edu import DeepSeekV3, ModelConfig
from dsv3_edu.accounting import count_parameters
from dsv3_edu.checkpoint import to_checkpoint_state
from dsv3_edu.fp8 import (
    FP8_MAX,
    fp8_block_dequantize,
    fp8_block_quantize,
    layer_shapes,
    release_dtype,
    release_tensors,
    weight_bytes,
)
from dsv3_edu.viz import GiB

V3 = ModelConfig.deepseek_v3()


def test_fp8_block_round_trip():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 200, generator=g) * 0.02
    w[:128, :128] *= 10  # one block of larger values gets its own scale
    w[256:, 128:] = 0  # an all-zero (partial) block
    q, s = fp8_block_quantize(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert s.dtype == torch.float32 and s.shape == (3, 2)
    assert s[2, 1] == 1 and torch.equal(fp8_block_dequantize(q, s)[256:, 128:], torch.zeros(44, 72))
    assert math.isclose(s[0, 0].item(), w[:128, :128].abs().max().item() / FP8_MAX, rel_tol=1e-6)
    deq = fp8_block_dequantize(q, s)
    for i in range(3):
        for j in range(2):
            block = w[128 * i: 128 * (i + 1), 128 * j: 128 * (j + 1)]
            err = (deq[128 * i: 128 * (i + 1), 128 * j: 128 * (j + 1)] - block).abs().max()
            assert err <= block.abs().max() * 2**-4 + 1e-12  # e4m3: 3 mantissa bits
    assert fp8_block_dequantize(q, s, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="needs \\(3, 2\\)"):
        fp8_block_dequantize(q, s[:2])
    with pytest.raises(ValueError, match="2-D"):
        fp8_block_quantize(torch.zeros(3))


def test_fp8_dequantize_matches_transformers():
    fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
    w = torch.randn(576, 300, generator=torch.Generator().manual_seed(1))  # kv_a_proj_with_mqa-like: 4.5 blocks
    q, s = fp8_block_quantize(w)
    assert s.shape == (5, 3)
    want = fp8._dequantize_fp8_weight(q, s, [128, 128], torch.float32)
    assert torch.equal(fp8_block_dequantize(q, s), want)


def test_release_dtypes_and_scales():
    assert release_dtype("model.layers.3.self_attn.kv_a_proj_with_mqa.weight") == "float8_e4m3fn"
    assert release_dtype("model.layers.3.mlp.experts.7.down_proj.weight") == "float8_e4m3fn"
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.3.mlp.gate.weight",
                 "model.layers.61.eh_proj.weight", "model.layers.3.self_attn.kv_a_layernorm.weight"):
        assert release_dtype(name) == "bfloat16", name
    assert release_dtype("model.layers.3.mlp.gate.e_score_correction_bias") == "float32"
    rows = release_tensors({"self_attn.kv_a_proj_with_mqa.weight": (576, 7168), "mlp.gate.weight": (256, 7168)})
    assert rows == [
        ("self_attn.kv_a_proj_with_mqa.weight", (576, 7168), "float8_e4m3fn"),
        ("self_attn.kv_a_proj_with_mqa.weight_scale_inv", (5, 56), "float32"),
        ("mlp.gate.weight", (256, 7168), "bfloat16"),
    ]


def test_layer_shapes_are_the_checkpoint_names():
    tiny = ModelConfig.tiny()
    kinds = layer_shapes(tiny)
    state = to_checkpoint_state(DeepSeekV3(tiny))
    for kind, layer in (("dense", 0), ("moe", 1), ("mtp", tiny.num_hidden_layers)):
        names = {n[len(f"model.layers.{layer}."):]: tuple(t.shape) for n, t in state.items()
                 if n.startswith(f"model.layers.{layer}.")}
        assert kinds[kind] == names, kind


def test_weight_bytes_full_scale():
    counts = count_parameters(V3)
    n_bias = counts["moe_gate_bias"]
    assert weight_bytes(V3, "bf16") == 2 * counts["total"] + 4 * n_bias
    assert weight_bytes(V3, "fp32") == 4 * counts["total"] + 4 * n_bias
    fp8 = weight_bytes(V3, "fp8")
    assert fp8 == 673_150_611_808  # FP8 projections + fp32 block scales + BF16 embedding/head/router/norms
    assert 625 * GiB < fp8 < 628 * GiB
    assert weight_bytes(V3, "fp8", include_mtp=True) - fp8 == 11_717_511_392
    with pytest.raises(ValueError, match="choose one of"):
        weight_bytes(V3, "fp4")


def test_weight_bytes_match_a_real_fp8_state_dict():
    tiny = ModelConfig.tiny(num_nextn_predict_layers=0)
    state = to_checkpoint_state(DeepSeekV3(tiny))
    real = 0
    for name, t in state.items():
        kind = release_dtype(name)
        if kind == "float8_e4m3fn":
            q, s = fp8_block_quantize(t)
            real += q.numel() * q.element_size() + s.numel() * s.element_size()
        else:
            real += t.numel() * (2 if kind == "bfloat16" else 4)
    assert weight_bytes(tiny, "fp8") == real
    assert weight_bytes(tiny, "fp32") == sum(t.numel() * 4 for t in state.values())
