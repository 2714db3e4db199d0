"""Lesson 10 helpers: FP8 block scales, bytes of the weights, what fits on GPUs, and the explorer widget."""

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from dsv3_edu import DeepSeekV3, ModelConfig  # noqa: E402
from dsv3_edu.accounting import count_parameters  # noqa: E402
from dsv3_edu.checkpoint import to_checkpoint_state  # noqa: E402
from dsv3_edu.viz import GiB  # noqa: E402
from dsv3_edu.widgets.l10_scale import (  # noqa: E402
    FP8_MAX,
    deployment,
    deployment_explorer,
    deployment_rows,
    deployment_table,
    fp8_block_dequantize,
    fp8_block_quantize,
    layer_shapes,
    parameter_rows,
    plot_deployment,
    plot_parameters,
    release_dtype,
    release_tensors,
    weight_bytes,
)

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


def test_deployment_numbers():
    dep = deployment(context=131072, batch=16, cache_dtype="bf16", gpu_gib=141, n_gpus=8, weights="fp8")
    assert dep.mla_per_token == 70_272 and dep.expanded_per_token == 40_960 * 61 * 2
    assert dep.capacity_bytes == int(8 * 141 * GiB * 0.9)
    assert dep.gpus_for_weights == 5 and dep.cache_budget == dep.capacity_bytes - dep.weight_bytes
    assert dep.fits("mla") and not dep.fits("expanded")
    assert dep.max_tokens("mla") == dep.cache_budget // 70_272
    assert dep.max_batch("mla") == dep.max_tokens("mla") // 131072 == 45
    assert dep.max_context("expanded") == dep.max_tokens("expanded") // 16
    h100 = deployment(gpu_gib=80, n_gpus=8)
    assert h100.cache_budget < 0 and h100.gpus_for_weights == 9 and h100.max_tokens("mla") == 0
    assert deployment(cache_dtype="fp8").mla_per_token == 35_136
    assert deployment(weights="bf16", n_gpus=8).cache_budget < 0  # 1.22 TiB of BF16 weights: not on one node
    assert deployment(weights="bf16", n_gpus=16).cache_budget > 0
    assert "mla_cache" in dep.to_dict()


@pytest.mark.parametrize("kwargs,match", [
    (dict(context=200_000), "max_position_embeddings=163,840"), (dict(context=0), "from 1"),
    (dict(batch=0), "batch=0 is out of range"), (dict(n_gpus=2.5), "n_gpus"), (dict(cache_dtype="int4"), "bf16"),
    (dict(gpu_gib=-1), "gpu_gib"), (dict(weights="fp4"), "choose one of"), (dict(usable=1.5), "usable"),
])
def test_invalid_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deployment(**kwargs)


def test_tables_and_plots():
    text = deployment_table(context=131072, batch=16)
    assert "alone need 5 GPUs" in text and "68.6 KiB" in text and "4.77 MiB" in text and "(> max positions)" in text
    rows = deployment_rows(gpu_gib=80)
    assert rows[2] == ["fits in memory (none left)", "no", "no"]
    assert "do not fit" in deployment_table(gpu_gib=80)
    rows = parameter_rows(V3)
    assert rows[-2] == ["main model", "671,026,404,352", "37,552,282,624", "100.00%"]
    assert rows[-1][1] == "11,610,067,968"
    for fig in (plot_parameters(V3), plot_deployment(), plot_deployment(gpu_gib=80)):
        assert len(fig.axes) == 2
        matplotlib.pyplot.close(fig)


def test_every_control_redraws():
    box = deployment_explorer()
    assert set(box.controls) == {"context", "batch", "cache_dtype", "gpu_gib", "n_gpus", "weights"}
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    new_values = {"context": 32768, "batch": 64, "cache_dtype": "fp8", "gpu_gib": 192, "n_gpus": 16,
                  "weights": "bf16"}
    for name, value in new_values.items():
        before_image, before_html = box.image.value, box.html.value
        box.controls[name].value = value
        assert box.html.value != before_html, name
        assert box.image.value != before_image, name
        assert "Not drawn" not in box.html.value
    assert "16 x 192 GiB" in box.html.value and "weights (bf16)" in box.html.value and "32K" in box.html.value


def test_invalid_batch_shows_a_message_not_a_traceback():
    box = deployment_explorer()
    image = box.image.value
    box.controls["batch"].value = 0
    assert "Not drawn" in box.html.value and "batch=0 is out of range" in box.html.value
    assert box.image.value == image
    box.controls["batch"].value = 4
    assert "Not drawn" not in box.html.value and "batch 4" in box.html.value
